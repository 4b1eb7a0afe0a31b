"""The 1-D U-Net for (L, C) signals: ``jaxdiff.models.unet.UNet`` with one spatial axis.

The DDPM / DDPM++ / ADM design of the 2-D U-Net (Ho et al. 2020, App. B; Song et al. 2021;
Dhariwal & Nichol 2021, Sec. 3; see ``jaxdiff.models.unet``) along L: x (B, L, C) -> conv_k ->
encoder (residual blocks with AdaGN, self-attention over the L positions at the lengths in
``attn_resolutions``, L -> L / 2 between levels) -> middle (res, attention, res) -> decoder with
skip connections -> GroupNorm -> SiLU -> zero-initialised conv_k -> (B, L, C) float32.  Every
convolution has ``kernel_size`` taps along L with 'SAME' padding (zeros beyond the ends).

This module holds what is 1-D specific: the 'unet1d' registration, its config (with the
``kernel_size`` field the 2-D U-Net lacks) and its check of (L, C) example shapes.
"""
from __future__ import annotations

import ml_collections

from jaxdiff.errors import ConfigError
from jaxdiff.models.networks import NETWORKS, check_rank, common_defaults
from jaxdiff.models.unet import build, check_config, is_positive_int


def default_unet1d_config() -> ml_collections.ConfigDict:
    """Every 1-D U-Net field, with tiny defaults suitable for the 64 x 2 ``signals1d`` set."""
    cfg = common_defaults("unet1d")
    cfg.base_channels = 32
    cfg.channel_mult = (1, 2, 2)
    cfg.num_res_blocks = 1
    cfg.attn_resolutions = (16,)  # lengths whose residual blocks get self-attention
    cfg.num_heads = 2
    cfg.num_groups = 8
    cfg.kernel_size = 3           # conv taps along L (odd)
    cfg.resample = "conv"         # 'conv' | 'pool'
    cfg.exit_heads = False        # DeeDiff exit + uncertainty heads after every decoder stage
    return cfg


def check(cfg, example_shape, num_classes: int) -> None:
    """Raises a ValueError naming the first invalid field of a 1-D U-Net config ``cfg``
    (or ``data_shape`` unless it is (L, C)): an odd positive ``kernel_size``, L divisible by
    the downsampling and the U-Net fields of ``jaxdiff.models.unet.check_config``."""
    del num_classes  # any K works (class table of K + 1 rows)
    shape = check_rank(example_shape, 2, "(L, C)")
    if not is_positive_int(cfg.kernel_size):
        raise ConfigError(f"config.model.kernel_size must be a positive int, "
                         f"got {cfg.kernel_size!r}")
    if cfg.kernel_size % 2 == 0:
        raise ConfigError(f"config.model.kernel_size must be odd (centred taps), "
                         f"got {cfg.kernel_size}")
    check_config(cfg, shape, "L")


NETWORKS.register(
    "unet1d", build, defaults=default_unet1d_config, check=check, test_shape=(16, 2),
    test_overrides=dict(base_channels=8, num_groups=4, num_heads=2, channel_mult=(1, 2),
                        attn_resolutions=(8,)),
    test_bad_fields=dict(kernel_size=4, num_groups=3, resample="linear",
                         channel_mult=(1, 2, 2, 2, 2, 2)))

"""Flax NNX denoiser networks: a U-Net (DDPM++/ADM family) and a DiT.

Every network is called as ``net(x, c_noise, cond, dropout_key=None)`` with x of shape
(B, H, W, C), c_noise of shape (B,), cond None / (B,) int class indices (index ``num_classes`` is
the null token) / (B, cond_dim) float vectors, and returns a float32 array shaped like x.
``dropout_key=None`` is inference; a PRNG key turns dropout on.  Networks hold no random state,
so ``nnx.split(net)`` gives (graphdef, params) for a plain ``jax.jit``.

Build one from a config with ``build_model``; start configs from ``default_unet_config()`` or
``default_dit_config()``.
"""
from __future__ import annotations

import numbers

import ml_collections
from flax import nnx

from jaxdiff.models import dit, unet
from jaxdiff.models.layers import DTYPES

NETWORKS = ("dit", "unet")
_COMMON = ("name", "dropout", "cond_dim", "noise_scale", "dtype")
_FIELDS = {
    "unet": _COMMON + ("base_channels", "channel_mult", "num_res_blocks", "attn_resolutions",
                       "num_heads", "num_groups", "resample"),
    "dit": _COMMON + ("patch_size", "hidden_size", "depth", "num_heads", "mlp_ratio"),
}


def _common_defaults(name: str) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        name=name,
        dropout=0.0,         # dropout rate, used only when a dropout key is passed
        cond_dim=0,          # > 0: continuous condition vectors of this width; 0: class labels
        noise_scale=1000.0,  # c_noise multiplier before the sinusoidal embedding
        dtype="float32",     # compute dtype: 'float32' | 'bfloat16' (params stay float32)
    ))


def default_unet_config() -> ml_collections.ConfigDict:
    """Every U-Net field, with tiny defaults suitable for 8x8 digits and CPU tests."""
    cfg = _common_defaults("unet")
    cfg.base_channels = 32
    cfg.channel_mult = (1, 2)
    cfg.num_res_blocks = 1
    cfg.attn_resolutions = (4,)  # heights whose residual blocks get self-attention (others: none)
    cfg.num_heads = 2
    cfg.num_groups = 8
    cfg.resample = "conv"        # 'conv' | 'pool'
    return cfg


def default_dit_config() -> ml_collections.ConfigDict:
    """Every DiT field, with tiny defaults suitable for 8x8 digits and CPU tests."""
    cfg = _common_defaults("dit")
    cfg.patch_size = 2
    cfg.hidden_size = 64
    cfg.depth = 2
    cfg.num_heads = 4
    cfg.mlp_ratio = 4.0
    return cfg


def check_model_config(cfg, data_shape, num_classes: int) -> None:
    """Raises a ValueError naming the first invalid field of ``cfg`` (or argument)."""
    name = cfg.get("name")
    if name not in NETWORKS:
        raise ValueError(f"config.model.name: unknown network {name!r}; choose one of "
                         f"{list(NETWORKS)}")
    known = set(_FIELDS["unet"]) | set(_FIELDS["dit"])
    for field in cfg.keys():
        if field not in known:
            raise ValueError(f"config.model.{field}: unknown field (known: {sorted(known)})")
    for field in _FIELDS[name]:
        if field not in cfg:
            raise ValueError(f"config.model.{field} is missing for network {name!r}")
    if (len(tuple(data_shape)) != 3
            or any(not isinstance(d, numbers.Integral) or d < 1 for d in tuple(data_shape))):
        raise ValueError(f"data_shape must be (H, W, C) positive ints, got {data_shape!r}")
    if not isinstance(num_classes, numbers.Integral) or num_classes < 0:
        raise ValueError(f"num_classes must be an int >= 0, got {num_classes!r}")
    if not 0.0 <= cfg.dropout < 1.0:
        raise ValueError(f"config.model.dropout must be in [0, 1), got {cfg.dropout!r}")
    if not isinstance(cfg.cond_dim, int) or cfg.cond_dim < 0:
        raise ValueError(f"config.model.cond_dim must be an int >= 0, got {cfg.cond_dim!r}")
    if cfg.cond_dim > 0 and num_classes > 0:
        raise ValueError(f"config.model.cond_dim = {cfg.cond_dim} selects continuous "
                         f"conditioning, but num_classes = {num_classes}; use one or the other")
    if not cfg.noise_scale > 0:
        raise ValueError(f"config.model.noise_scale must be > 0, got {cfg.noise_scale!r}")
    if cfg.dtype not in DTYPES:
        raise ValueError(f"config.model.dtype: unknown {cfg.dtype!r}; choose one of "
                         f"{list(DTYPES)}")
    (unet if name == "unet" else dit).check_config(cfg, tuple(data_shape))


def build_model(model_cfg, data_shape, num_classes: int, rngs: nnx.Rngs) -> nnx.Module:
    """Validates ``model_cfg`` and builds the network it names.

    Args:
      model_cfg: ConfigDict with ``name`` in {'unet', 'dit'} and that network's fields (see
        ``default_unet_config`` / ``default_dit_config``).
      data_shape: (H, W, C) of one example.
      num_classes: K real classes; the class table has K + 1 rows, row K the null token.  Must
        be 0 when ``model_cfg.cond_dim > 0``.
      rngs: parameter initialisation randomness, e.g. ``nnx.Rngs(seed)``.
    Returns:
      An NNX module ``net(x, c_noise, cond, dropout_key=None) -> (B, H, W, C) float32``.
    """
    check_model_config(model_cfg, data_shape, num_classes)
    common = dict(data_shape=tuple(int(d) for d in data_shape), num_classes=int(num_classes),
                  dropout=float(model_cfg.dropout), cond_dim=model_cfg.cond_dim,
                  noise_scale=float(model_cfg.noise_scale), dtype=DTYPES[model_cfg.dtype],
                  rngs=rngs)
    if model_cfg.name == "unet":
        return unet.UNet(
            base_channels=model_cfg.base_channels, channel_mult=tuple(model_cfg.channel_mult),
            num_res_blocks=model_cfg.num_res_blocks,
            attn_resolutions=tuple(model_cfg.attn_resolutions), num_heads=model_cfg.num_heads,
            num_groups=model_cfg.num_groups, resample=model_cfg.resample, **common)
    return dit.DiT(
        patch_size=model_cfg.patch_size, hidden_size=model_cfg.hidden_size,
        depth=model_cfg.depth, num_heads=model_cfg.num_heads,
        mlp_ratio=float(model_cfg.mlp_ratio), **common)


__all__ = ["build_model", "check_model_config", "default_unet_config", "default_dit_config",
           "NETWORKS"]

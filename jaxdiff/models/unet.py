"""A conditional U-Net of the DDPM / DDPM++ / ADM family.

Architecture (Ho et al. 2020, App. B; Song et al. 2021 "DDPM++"; Dhariwal & Nichol 2021 "ADM",
Sec. 3): a 3x3 input conv, an encoder of ``len(channel_mult)`` levels with ``num_res_blocks``
residual blocks each (self-attention after a block when the level's height is listed in
``attn_resolutions``) and a 2x downsample between levels, a middle block (res, attention, res),
a decoder mirroring the encoder with ``num_res_blocks + 1`` blocks per level that each concatenate
one encoder activation (the skip connections), and GroupNorm -> SiLU -> zero-initialised 3x3 conv.

The noise level and the condition enter every residual block through adaptive GroupNorm
(ADM Sec. 3, "AdaGN"): h = GN(h) * (1 + scale) + shift, with (scale, shift) a linear function of
the embedding.  The last conv of every residual branch, the output projection of every attention
block and the output conv are zero-initialised, so a fresh network outputs exactly 0 and every
residual branch starts as the identity (Goyal et al. 2017; ADM's ``zero_module``).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from jaxdiff.errors import ConfigError
from jaxdiff.models import layers
from jaxdiff.models.networks import NETWORKS, check_rank, common_defaults, common_kwargs

Array = jax.Array

RESAMPLE = ("conv", "pool")
_zeros = nnx.initializers.zeros


class ResBlock(nnx.Module):
    """Residual block with AdaGN (ADM Sec. 3).

      h = conv3x3(SiLU(GN(x)))
      h = conv3x3_zero(dropout(SiLU(GN(h) * (1 + scale) + shift)))
      out = skip(x) + h,   (scale, shift) = Linear(SiLU(emb)),   skip = 1x1 conv if widths differ

    x: (B, H, W, in_ch), emb: (B, emb_dim) -> (B, H, W, out_ch).
    """

    def __init__(self, in_ch: int, out_ch: int, *, emb_dim: int, num_groups: int, rate: float,
                 dtype: Any, rngs: nnx.Rngs):
        self.rate = rate
        self.norm1 = layers.GroupNorm(in_ch, num_groups, dtype=dtype, rngs=rngs)
        self.conv1 = nnx.Conv(in_ch, out_ch, (3, 3), dtype=dtype, rngs=rngs)
        self.emb_proj = nnx.Linear(emb_dim, 2 * out_ch, dtype=dtype, rngs=rngs)
        self.norm2 = layers.GroupNorm(out_ch, num_groups, use_scale=False, use_bias=False,
                                      dtype=dtype, rngs=rngs)
        self.conv2 = nnx.Conv(out_ch, out_ch, (3, 3), kernel_init=_zeros, dtype=dtype, rngs=rngs)
        self.skip = (nnx.Conv(in_ch, out_ch, (1, 1), dtype=dtype, rngs=rngs)
                     if in_ch != out_ch else None)

    def __call__(self, x: Array, emb: Array, key: Array | None) -> Array:
        h = self.conv1(jax.nn.silu(self.norm1(x)))
        scale, shift = jnp.split(self.emb_proj(jax.nn.silu(emb)), 2, axis=-1)
        h = jax.nn.silu(self.norm2(h, mod_scale=scale, mod_shift=shift))
        h = self.conv2(layers.dropout(h, self.rate, key))
        return (x if self.skip is None else self.skip(x)) + h


class AttentionBlock(nnx.Module):
    """Spatial self-attention with a residual connection (Ho et al. 2020, App. B; ADM).

      out = x + Linear_zero(MHA(Linear_qkv(GN(x))))   over the H * W positions.

    x: (B, H, W, C) -> (B, H, W, C); C divisible by ``num_heads``.
    """

    def __init__(self, ch: int, *, num_heads: int, num_groups: int, dtype: Any, rngs: nnx.Rngs):
        self.num_heads = num_heads
        self.norm = layers.GroupNorm(ch, num_groups, dtype=dtype, rngs=rngs)
        self.qkv = nnx.Linear(ch, 3 * ch, dtype=dtype, rngs=rngs)
        self.proj = nnx.Linear(ch, ch, kernel_init=_zeros, dtype=dtype, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        b, hh, ww, c = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, hh * ww, 3 * c)
        return x + self.proj(layers.attention(qkv, self.num_heads)).reshape(b, hh, ww, c)


class Stage(nnx.Module):
    """One U-Net step: a ResBlock, optionally followed by an AttentionBlock."""

    def __init__(self, in_ch: int, out_ch: int, *, attend: bool, emb_dim: int, num_heads: int,
                 num_groups: int, rate: float, dtype: Any, rngs: nnx.Rngs):
        self.res = ResBlock(in_ch, out_ch, emb_dim=emb_dim, num_groups=num_groups, rate=rate,
                            dtype=dtype, rngs=rngs)
        self.attn = (AttentionBlock(out_ch, num_heads=num_heads, num_groups=num_groups,
                                    dtype=dtype, rngs=rngs) if attend else None)

    def __call__(self, x: Array, emb: Array, key: Array | None) -> Array:
        x = self.res(x, emb, key)
        return x if self.attn is None else self.attn(x)


class Downsample(nnx.Module):
    """2x spatial downsampling: a stride-2 3x3 conv ('conv') or 2x2 average pooling ('pool')."""

    def __init__(self, ch: int, *, resample: str, dtype: Any, rngs: nnx.Rngs):
        self.conv = (nnx.Conv(ch, ch, (3, 3), strides=(2, 2), dtype=dtype, rngs=rngs)
                     if resample == "conv" else None)

    def __call__(self, x: Array) -> Array:
        if self.conv is not None:
            return self.conv(x)
        return nnx.avg_pool(x, (2, 2), strides=(2, 2))


class Upsample(nnx.Module):
    """2x nearest-neighbour upsampling, followed by a 3x3 conv when resample == 'conv'."""

    def __init__(self, ch: int, *, resample: str, dtype: Any, rngs: nnx.Rngs):
        self.conv = (nnx.Conv(ch, ch, (3, 3), dtype=dtype, rngs=rngs)
                     if resample == "conv" else None)

    def __call__(self, x: Array) -> Array:
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return x if self.conv is None else self.conv(x)


class UNet(nnx.Module):
    """Conditional U-Net denoiser network F(x, c_noise, cond).

    Args:
      data_shape: (H, W, C); H and W divisible by 2^(len(channel_mult) - 1).
      num_classes: K (class-conditional; row K of the class table is the null token).
      base_channels: width of the first level; level i has base_channels * channel_mult[i].
      channel_mult: per-level width multipliers (one level per entry).
      num_res_blocks: residual blocks per encoder level (the decoder has one more).
      attn_resolutions: heights at which self-attention follows each residual block (heights
        the network never reaches are ignored, so one config serves several image sizes).
      num_heads: attention heads.
      dropout: dropout rate inside residual blocks (active only with a dropout key).
      num_groups: GroupNorm groups.
      resample: 'conv' (strided conv down, nearest + conv up) or 'pool' (avg pool / nearest).
      cond_dim: > 0 selects continuous conditioning vectors of this width.
      noise_scale: c_noise multiplier before the sinusoidal embedding.
      dtype: compute dtype (parameters are float32).
    """

    def __init__(self, *, data_shape: tuple[int, int, int], num_classes: int,
                 base_channels: int, channel_mult: tuple[int, ...], num_res_blocks: int,
                 attn_resolutions: tuple[int, ...], num_heads: int, dropout: float,
                 num_groups: int, resample: str, cond_dim: int, noise_scale: float,
                 dtype: Any, rngs: nnx.Rngs):
        height, _, channels = data_shape
        self.data_shape = tuple(data_shape)
        self.dtype = dtype
        emb_dim = 4 * base_channels  # ADM / DDPM: time-embedding width 4 x base width
        self.embed = layers.ConditionEmbedding(
            emb_dim, freq_dim=base_channels, num_classes=num_classes, cond_dim=cond_dim,
            noise_scale=noise_scale, dtype=dtype, rngs=rngs)
        common = dict(emb_dim=emb_dim, num_heads=num_heads, num_groups=num_groups,
                      rate=dropout, dtype=dtype, rngs=rngs)

        self.conv_in = nnx.Conv(channels, base_channels, (3, 3), dtype=dtype, rngs=rngs)
        ch, res, skips = base_channels, height, [base_channels]
        down = []
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                down.append(Stage(ch, base_channels * mult, attend=res in attn_resolutions,
                                  **common))
                ch = base_channels * mult
                skips.append(ch)
            if level != len(channel_mult) - 1:
                down.append(Downsample(ch, resample=resample, dtype=dtype, rngs=rngs))
                res //= 2
                skips.append(ch)
        self.down = nnx.List(down)

        self.mid_stage = Stage(ch, ch, attend=True, **common)
        self.mid_res = ResBlock(ch, ch, emb_dim=emb_dim, num_groups=num_groups, rate=dropout,
                                dtype=dtype, rngs=rngs)

        up = []
        for level in reversed(range(len(channel_mult))):
            for _ in range(num_res_blocks + 1):
                out = base_channels * channel_mult[level]
                up.append(Stage(ch + skips.pop(), out, attend=res in attn_resolutions, **common))
                ch = out
            if level != 0:
                up.append(Upsample(ch, resample=resample, dtype=dtype, rngs=rngs))
                res *= 2
        self.up = nnx.List(up)

        self.norm_out = layers.GroupNorm(ch, num_groups, dtype=dtype, rngs=rngs)
        self.conv_out = nnx.Conv(ch, channels, (3, 3), kernel_init=_zeros, dtype=dtype, rngs=rngs)

    def __call__(self, x: Array, c_noise: Array, cond: Any = None,
                 dropout_key: Array | None = None) -> Array:
        """x: (B, H, W, C) float; c_noise: (B,) float; cond: None, (B,) int in [0, K] or
        (B, cond_dim) float; dropout_key: None (deterministic) or a PRNG key (dropout active).
        Returns (B, H, W, C) float32."""
        c_noise = layers.check_inputs(x, c_noise, self.data_shape)
        emb = self.embed(c_noise, cond)
        h = self.conv_in(x.astype(self.dtype))
        skips, block = [h], 0
        for layer in self.down:
            if isinstance(layer, Stage):
                h = layer(h, emb, layers.sub_key(dropout_key, block))
                block += 1
            else:
                h = layer(h)
            skips.append(h)
        h = self.mid_stage(h, emb, layers.sub_key(dropout_key, block))
        h = self.mid_res(h, emb, layers.sub_key(dropout_key, block + 1))
        block += 2
        for layer in self.up:
            if isinstance(layer, Stage):
                h = layer(jnp.concatenate([h, skips.pop()], axis=-1), emb,
                          layers.sub_key(dropout_key, block))
                block += 1
            else:
                h = layer(h)
        h = self.conv_out(jax.nn.silu(self.norm_out(h)))
        return h.astype(jnp.float32)


def default_unet_config() -> ml_collections.ConfigDict:
    """Every U-Net field, with tiny defaults suitable for 8x8 digits and CPU tests."""
    cfg = common_defaults("unet")
    cfg.base_channels = 32
    cfg.channel_mult = (1, 2)
    cfg.num_res_blocks = 1
    cfg.attn_resolutions = (4,)  # heights whose residual blocks get self-attention (others: none)
    cfg.num_heads = 2
    cfg.num_groups = 8
    cfg.resample = "conv"        # 'conv' | 'pool'
    return cfg


def check_config(cfg, data_shape: tuple[int, int, int]) -> None:
    """Raises a ValueError naming the first field of a U-Net config ``cfg`` that is invalid."""
    height, width, _ = data_shape
    mult = tuple(cfg.channel_mult)
    if not mult:
        raise ConfigError("config.model.channel_mult must be non-empty")
    if any(not isinstance(m, int) or m < 1 for m in mult):
        raise ConfigError(f"config.model.channel_mult must hold positive ints, got {mult}")
    for name in ("base_channels", "num_res_blocks", "num_heads", "num_groups"):
        value = cfg[name]
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"config.model.{name} must be a positive int, got {value!r}")
    factor = 2 ** (len(mult) - 1)
    if height % factor or width % factor:
        raise ConfigError(f"config.model.channel_mult: {len(mult)} levels need H and W divisible "
                         f"by {factor}, got data shape {tuple(data_shape)}")
    if cfg.base_channels % cfg.num_groups:
        raise ConfigError(f"config.model.num_groups ({cfg.num_groups}) must divide "
                         f"base_channels ({cfg.base_channels})")
    if any(cfg.base_channels * m % cfg.num_heads for m in mult):
        raise ConfigError(f"config.model.num_heads ({cfg.num_heads}) must divide every level "
                         f"width base_channels * channel_mult")
    if any(not isinstance(r, int) or r < 1 for r in tuple(cfg.attn_resolutions)):
        raise ConfigError(f"config.model.attn_resolutions must hold positive ints, "
                         f"got {tuple(cfg.attn_resolutions)}")
    if cfg.resample not in RESAMPLE:
        raise ConfigError(f"config.model.resample: unknown {cfg.resample!r}; choose one of "
                         f"{list(RESAMPLE)}")


def check(cfg, example_shape, num_classes: int) -> None:
    """The U-Net's own check: (H, W, C) examples and the fields of ``check_config``."""
    del num_classes  # any K works (class table of K + 1 rows)
    check_config(cfg, check_rank(example_shape, 3, "(H, W, C)"))


def build(cfg, example_shape, num_classes: int, rngs: nnx.Rngs) -> UNet:
    """A ``UNet`` for (H, W, C) examples from a checked config (see ``default_unet_config``)."""
    return UNet(
        data_shape=tuple(int(d) for d in example_shape), num_classes=int(num_classes),
        base_channels=cfg.base_channels, channel_mult=tuple(cfg.channel_mult),
        num_res_blocks=cfg.num_res_blocks, attn_resolutions=tuple(cfg.attn_resolutions),
        num_heads=cfg.num_heads, num_groups=cfg.num_groups, resample=cfg.resample,
        rngs=rngs, **common_kwargs(cfg))


NETWORKS.register(
    "unet", build, defaults=default_unet_config, check=check, test_shape=(8, 8, 1),
    test_overrides=dict(base_channels=8, num_groups=4, num_heads=2, channel_mult=(1, 2),
                        attn_resolutions=(4,)),
    test_bad_fields=dict(num_groups=3, resample="bilinear", channel_mult=(1, 2, 2, 2, 2)))

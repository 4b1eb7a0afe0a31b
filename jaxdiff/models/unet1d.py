"""A conditional 1-D U-Net for (L, C) signals: the 2-D U-Net's design along one axis.

x (B, L, C) -> conv_k(C -> base) -> encoder of ``len(channel_mult)`` levels, each with
``num_res_blocks`` residual blocks (self-attention after a block when the level's length is in
``attn_resolutions``) and a 2x downsample between levels -> middle (res, attention, res) ->
decoder mirroring the encoder with ``num_res_blocks + 1`` blocks per level, each concatenating
one encoder activation -> GroupNorm -> SiLU -> zero-initialised conv_k -> (B, L, C) float32.

Every convolution has ``kernel_size`` taps along L with 'SAME' padding (zeros beyond the ends).
The noise level and the condition enter each residual block by adaptive GroupNorm (ADM, Dhariwal
& Nichol 2021, Sec. 3): GN(h) * (1 + scale) + shift with (scale, shift) linear in the
embedding of ``layers.ConditionEmbedding`` (class table with a null row, or a continuous-vector
MLP).  The last conv of every residual branch, every attention output projection and the output
conv are zero-initialised, so a fresh network outputs exactly 0.
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


class ResBlock1D(nnx.Module):
    """Residual block with AdaGN along one axis.

      h = conv_k(SiLU(GN(x)));  h = conv_k_zero(dropout(SiLU(GN(h) * (1 + scale) + shift)))
      out = skip(x) + h,   (scale, shift) = Linear(SiLU(emb)),   skip = 1-tap conv if widths differ

    x: (B, L, in_ch), emb: (B, emb_dim) -> (B, L, out_ch).
    """

    def __init__(self, in_ch: int, out_ch: int, *, emb_dim: int, kernel_size: int,
                 num_groups: int, rate: float, dtype: Any, rngs: nnx.Rngs):
        self.rate = rate
        k = (kernel_size,)
        self.norm1 = layers.GroupNorm(in_ch, num_groups, dtype=dtype, rngs=rngs)
        self.conv1 = nnx.Conv(in_ch, out_ch, k, dtype=dtype, rngs=rngs)
        self.emb_proj = nnx.Linear(emb_dim, 2 * out_ch, dtype=dtype, rngs=rngs)
        self.norm2 = layers.GroupNorm(out_ch, num_groups, use_scale=False, use_bias=False,
                                      dtype=dtype, rngs=rngs)
        self.conv2 = nnx.Conv(out_ch, out_ch, k, kernel_init=_zeros, dtype=dtype, rngs=rngs)
        self.skip = (nnx.Conv(in_ch, out_ch, (1,), dtype=dtype, rngs=rngs)
                     if in_ch != out_ch else None)

    def __call__(self, x: Array, emb: Array, key: Array | None) -> Array:
        h = self.conv1(jax.nn.silu(self.norm1(x)))
        scale, shift = jnp.split(self.emb_proj(jax.nn.silu(emb)), 2, axis=-1)
        h = jax.nn.silu(self.norm2(h, mod_scale=scale, mod_shift=shift))
        h = self.conv2(layers.dropout(h, self.rate, key))
        return (x if self.skip is None else self.skip(x)) + h


class Attention1D(nnx.Module):
    """Self-attention over the L positions with a residual connection.

      out = x + Linear_zero(MHA(Linear_qkv(GN(x)))).   x: (B, L, C) -> (B, L, C).
    """

    def __init__(self, ch: int, *, num_heads: int, num_groups: int, dtype: Any, rngs: nnx.Rngs):
        self.num_heads = num_heads
        self.norm = layers.GroupNorm(ch, num_groups, dtype=dtype, rngs=rngs)
        self.qkv = nnx.Linear(ch, 3 * ch, dtype=dtype, rngs=rngs)
        self.proj = nnx.Linear(ch, ch, kernel_init=_zeros, dtype=dtype, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        return x + self.proj(layers.attention(self.qkv(self.norm(x)), self.num_heads))


class Stage1D(nnx.Module):
    """A ResBlock1D, optionally followed by an Attention1D."""

    def __init__(self, in_ch: int, out_ch: int, *, attend: bool, emb_dim: int, kernel_size: int,
                 num_heads: int, num_groups: int, rate: float, dtype: Any, rngs: nnx.Rngs):
        self.res = ResBlock1D(in_ch, out_ch, emb_dim=emb_dim, kernel_size=kernel_size,
                              num_groups=num_groups, rate=rate, dtype=dtype, rngs=rngs)
        self.attn = (Attention1D(out_ch, num_heads=num_heads, num_groups=num_groups,
                                 dtype=dtype, rngs=rngs) if attend else None)

    def __call__(self, x: Array, emb: Array, key: Array | None) -> Array:
        x = self.res(x, emb, key)
        return x if self.attn is None else self.attn(x)


class Downsample1D(nnx.Module):
    """L -> L / 2: a stride-2 conv_k ('conv') or average pooling of pairs ('pool')."""

    def __init__(self, ch: int, *, kernel_size: int, resample: str, dtype: Any, rngs: nnx.Rngs):
        self.conv = (nnx.Conv(ch, ch, (kernel_size,), strides=(2,), dtype=dtype, rngs=rngs)
                     if resample == "conv" else None)

    def __call__(self, x: Array) -> Array:
        if self.conv is not None:
            return self.conv(x)
        return nnx.avg_pool(x, (2,), strides=(2,))


class Upsample1D(nnx.Module):
    """L -> 2 L: nearest-neighbour repeat, then a conv_k when resample == 'conv'."""

    def __init__(self, ch: int, *, kernel_size: int, resample: str, dtype: Any, rngs: nnx.Rngs):
        self.conv = (nnx.Conv(ch, ch, (kernel_size,), dtype=dtype, rngs=rngs)
                     if resample == "conv" else None)

    def __call__(self, x: Array) -> Array:
        x = jnp.repeat(x, 2, axis=1)
        return x if self.conv is None else self.conv(x)


class UNet1D(nnx.Module):
    """Conditional 1-D U-Net denoiser network F(x, c_noise, cond) for (L, C) signals.

    Args:
      data_shape: (L, C); L divisible by 2^(len(channel_mult) - 1).
      num_classes: K (class-conditional; row K of the class table is the null token).
      base_channels: width of the first level; level i has base_channels * channel_mult[i].
      channel_mult: per-level width multipliers (one level per entry).
      num_res_blocks: residual blocks per encoder level (the decoder has one more).
      attn_resolutions: lengths at which self-attention follows each residual block (lengths
        the network never reaches are ignored).
      num_heads: attention heads (the middle block always attends).
      num_groups: GroupNorm groups.
      kernel_size: taps of every convolution along L (odd).
      resample: 'conv' (stride-2 conv down, repeat + conv up) or 'pool' (average / repeat).
      dropout: dropout rate inside residual blocks (active only with a dropout key).
      cond_dim: > 0 selects continuous conditioning vectors of this width.
      noise_scale: c_noise multiplier before the sinusoidal embedding.
      dtype: compute dtype (parameters are float32).
    """

    def __init__(self, *, data_shape: tuple[int, int], num_classes: int, base_channels: int,
                 channel_mult: tuple[int, ...], num_res_blocks: int,
                 attn_resolutions: tuple[int, ...], num_heads: int, num_groups: int,
                 kernel_size: int, resample: str, dropout: float, cond_dim: int,
                 noise_scale: float, dtype: Any, rngs: nnx.Rngs):
        length, channels = data_shape
        self.data_shape = tuple(data_shape)
        self.dtype = dtype
        emb_dim = 4 * base_channels
        self.embed = layers.ConditionEmbedding(
            emb_dim, freq_dim=base_channels, num_classes=num_classes, cond_dim=cond_dim,
            noise_scale=noise_scale, dtype=dtype, rngs=rngs)
        common = dict(emb_dim=emb_dim, kernel_size=kernel_size, num_heads=num_heads,
                      num_groups=num_groups, rate=dropout, dtype=dtype, rngs=rngs)
        resampling = dict(kernel_size=kernel_size, resample=resample, dtype=dtype, rngs=rngs)

        self.conv_in = nnx.Conv(channels, base_channels, (kernel_size,), dtype=dtype, rngs=rngs)
        ch, res, skips = base_channels, length, [base_channels]
        down = []
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                down.append(Stage1D(ch, base_channels * mult, attend=res in attn_resolutions,
                                    **common))
                ch = base_channels * mult
                skips.append(ch)
            if level != len(channel_mult) - 1:
                down.append(Downsample1D(ch, **resampling))
                res //= 2
                skips.append(ch)
        self.down = nnx.List(down)

        self.mid_stage = Stage1D(ch, ch, attend=True, **common)
        self.mid_res = ResBlock1D(ch, ch, emb_dim=emb_dim, kernel_size=kernel_size,
                                  num_groups=num_groups, rate=dropout, dtype=dtype, rngs=rngs)

        up = []
        for level in reversed(range(len(channel_mult))):
            for _ in range(num_res_blocks + 1):
                out = base_channels * channel_mult[level]
                up.append(Stage1D(ch + skips.pop(), out, attend=res in attn_resolutions,
                                  **common))
                ch = out
            if level != 0:
                up.append(Upsample1D(ch, **resampling))
                res *= 2
        self.up = nnx.List(up)

        self.norm_out = layers.GroupNorm(ch, num_groups, dtype=dtype, rngs=rngs)
        self.conv_out = nnx.Conv(ch, channels, (kernel_size,), kernel_init=_zeros, dtype=dtype,
                                 rngs=rngs)

    def __call__(self, x: Array, c_noise: Array, cond: Any = None,
                 dropout_key: Array | None = None) -> Array:
        """x: (B, L, C) float; c_noise: (B,) (or scalar) float; cond: None (null token / zero
        vector), (B,) int in [0, K] or (B, cond_dim) float; dropout_key: None (deterministic)
        or a PRNG key (dropout active).  Returns (B, L, C) float32."""
        c_noise = layers.check_inputs(x, c_noise, self.data_shape)
        emb = self.embed(c_noise, cond)
        h = self.conv_in(x.astype(self.dtype))
        skips, block = [h], 0
        for layer in self.down:
            if isinstance(layer, Stage1D):
                h = layer(h, emb, layers.sub_key(dropout_key, block))
                block += 1
            else:
                h = layer(h)
            skips.append(h)
        h = self.mid_stage(h, emb, layers.sub_key(dropout_key, block))
        h = self.mid_res(h, emb, layers.sub_key(dropout_key, block + 1))
        block += 2
        for layer in self.up:
            if isinstance(layer, Stage1D):
                h = layer(jnp.concatenate([h, skips.pop()], axis=-1), emb,
                          layers.sub_key(dropout_key, block))
                block += 1
            else:
                h = layer(h)
        h = self.conv_out(jax.nn.silu(self.norm_out(h)))
        return h.astype(jnp.float32)


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
    return cfg


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def check(cfg, example_shape, num_classes: int) -> None:
    """Raises a ValueError naming the first invalid field of a 1-D U-Net config ``cfg``
    (or ``data_shape`` unless it is (L, C))."""
    del num_classes  # any K works (class table of K + 1 rows)
    length, _ = check_rank(example_shape, 2, "(L, C)")
    mult = tuple(cfg.channel_mult)
    if not mult:
        raise ConfigError("config.model.channel_mult must be non-empty")
    if not all(_positive_int(m) for m in mult):
        raise ConfigError(f"config.model.channel_mult must hold positive ints, got {mult}")
    for name in ("base_channels", "num_res_blocks", "num_heads", "num_groups", "kernel_size"):
        if not _positive_int(cfg[name]):
            raise ConfigError(f"config.model.{name} must be a positive int, got {cfg[name]!r}")
    if cfg.kernel_size % 2 == 0:
        raise ConfigError(f"config.model.kernel_size must be odd (centred taps), "
                         f"got {cfg.kernel_size}")
    factor = 2 ** (len(mult) - 1)
    if length % factor:
        raise ConfigError(f"config.model.channel_mult: {len(mult)} levels need L divisible by "
                         f"{factor}, got data shape {tuple(example_shape)}")
    if cfg.base_channels % cfg.num_groups:
        raise ConfigError(f"config.model.num_groups ({cfg.num_groups}) must divide "
                         f"base_channels ({cfg.base_channels})")
    if any(cfg.base_channels * m % cfg.num_heads for m in mult):
        raise ConfigError(f"config.model.num_heads ({cfg.num_heads}) must divide every level "
                         f"width base_channels * channel_mult")
    if not all(_positive_int(r) for r in tuple(cfg.attn_resolutions)):
        raise ConfigError(f"config.model.attn_resolutions must hold positive ints, "
                         f"got {tuple(cfg.attn_resolutions)}")
    if cfg.resample not in RESAMPLE:
        raise ConfigError(f"config.model.resample: unknown {cfg.resample!r}; choose one of "
                         f"{list(RESAMPLE)}")


def build(cfg, example_shape, num_classes: int, rngs: nnx.Rngs) -> UNet1D:
    """A ``UNet1D`` for (L, C) examples from a checked config (see ``default_unet1d_config``)."""
    return UNet1D(
        data_shape=tuple(int(d) for d in example_shape), num_classes=int(num_classes),
        base_channels=cfg.base_channels, channel_mult=tuple(cfg.channel_mult),
        num_res_blocks=cfg.num_res_blocks, attn_resolutions=tuple(cfg.attn_resolutions),
        num_heads=cfg.num_heads, num_groups=cfg.num_groups, kernel_size=cfg.kernel_size,
        resample=cfg.resample, rngs=rngs, **common_kwargs(cfg))


NETWORKS.register(
    "unet1d", build, defaults=default_unet1d_config, check=check, test_shape=(16, 2),
    test_overrides=dict(base_channels=8, num_groups=4, num_heads=2, channel_mult=(1, 2),
                        attn_resolutions=(8,)),
    test_bad_fields=dict(kernel_size=4, num_groups=3, resample="linear",
                         channel_mult=(1, 2, 2, 2, 2, 2)))

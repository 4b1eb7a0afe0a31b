"""A conditional U-Net of the DDPM / DDPM++ / ADM family, for any number of spatial axes.

Architecture (Ho et al. 2020, App. B; Song et al. 2021 "DDPM++"; Dhariwal & Nichol 2021 "ADM",
Sec. 3): an input conv, an encoder of ``len(channel_mult)`` levels with ``num_res_blocks``
residual blocks each (self-attention after a block when the level's size along the first spatial
axis is listed in ``attn_resolutions``) and a 2x downsample between levels, a middle block (res,
attention, res), a decoder mirroring the encoder with ``num_res_blocks + 1`` blocks per level that
each concatenate one encoder activation (the skip connections), and GroupNorm -> SiLU ->
zero-initialised output conv.

The network is rank-generic: an example of shape (*S, C) has nd = len(S) spatial axes, e.g.
(H, W, C) images (nd = 2, the 'unet' network registered here), (L, C) signals (nd = 1, 'unet1d'
in ``jaxdiff.models.unet1d``) or (D, H, W, C) volumes (nd = 3).  Every convolution has
``kernel_size`` taps along each spatial axis with 'SAME' padding (zeros beyond the edges), the
resampling halves / doubles every spatial axis and attention runs over all prod(S) positions.

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
from jaxdiff.models.early_exit import UncertaintyHead
from jaxdiff.models.networks import (NETWORKS, check_exit_heads, check_rank, common_defaults,
                                     common_kwargs)

Array = jax.Array

RESAMPLE = ("conv", "pool")
_zeros = nnx.initializers.zeros


class ResBlock(nnx.Module):
    """Residual block with AdaGN (ADM Sec. 3).

      h = conv_k(SiLU(GN(x)))
      h = conv_k_zero(dropout(SiLU(GN(h) * (1 + scale) + shift)))
      out = skip(x) + h,   (scale, shift) = Linear(SiLU(emb)),   skip = 1-tap conv if widths differ

    ``kernel`` holds the taps of conv_k per spatial axis, e.g. (3, 3) (its length is nd).
    x: (B, *S, in_ch), emb: (B, emb_dim) -> (B, *S, out_ch).
    """

    def __init__(self, in_ch: int, out_ch: int, *, kernel: tuple[int, ...], emb_dim: int,
                 num_groups: int, rate: float, dtype: Any, rngs: nnx.Rngs):
        self.rate = rate
        self.norm1 = layers.GroupNorm(in_ch, num_groups, dtype=dtype, rngs=rngs)
        self.conv1 = nnx.Conv(in_ch, out_ch, kernel, dtype=dtype, rngs=rngs)
        self.emb_proj = nnx.Linear(emb_dim, 2 * out_ch, dtype=dtype, rngs=rngs)
        self.norm2 = layers.GroupNorm(out_ch, num_groups, use_scale=False, use_bias=False,
                                      dtype=dtype, rngs=rngs)
        self.conv2 = nnx.Conv(out_ch, out_ch, kernel, kernel_init=_zeros, dtype=dtype, rngs=rngs)
        self.skip = (nnx.Conv(in_ch, out_ch, (1,) * len(kernel), dtype=dtype, rngs=rngs)
                     if in_ch != out_ch else None)

    def __call__(self, x: Array, emb: Array, key: Array | None) -> Array:
        h = self.conv1(jax.nn.silu(self.norm1(x)))
        scale, shift = jnp.split(self.emb_proj(jax.nn.silu(emb)), 2, axis=-1)
        h = jax.nn.silu(self.norm2(h, mod_scale=scale, mod_shift=shift))
        h = self.conv2(layers.dropout(h, self.rate, key))
        return (x if self.skip is None else self.skip(x)) + h


class AttentionBlock(nnx.Module):
    """Spatial self-attention with a residual connection (Ho et al. 2020, App. B; ADM).

      out = x + Linear_zero(MHA(Linear_qkv(GN(x))))   over the prod(S) positions.

    x: (B, *S, C) -> (B, *S, C); C divisible by ``num_heads``.
    """

    def __init__(self, ch: int, *, num_heads: int, num_groups: int, dtype: Any, rngs: nnx.Rngs):
        self.num_heads = num_heads
        self.norm = layers.GroupNorm(ch, num_groups, dtype=dtype, rngs=rngs)
        self.qkv = nnx.Linear(ch, 3 * ch, dtype=dtype, rngs=rngs)
        self.proj = nnx.Linear(ch, ch, kernel_init=_zeros, dtype=dtype, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        qkv = self.qkv(self.norm(x)).reshape(x.shape[0], -1, 3 * x.shape[-1])
        return x + self.proj(layers.attention(qkv, self.num_heads)).reshape(x.shape)


class Stage(nnx.Module):
    """One U-Net step: a ResBlock, optionally followed by an AttentionBlock."""

    def __init__(self, in_ch: int, out_ch: int, *, attend: bool, kernel: tuple[int, ...],
                 emb_dim: int, num_heads: int, num_groups: int, rate: float, dtype: Any,
                 rngs: nnx.Rngs):
        self.res = ResBlock(in_ch, out_ch, kernel=kernel, emb_dim=emb_dim, num_groups=num_groups,
                            rate=rate, dtype=dtype, rngs=rngs)
        self.attn = (AttentionBlock(out_ch, num_heads=num_heads, num_groups=num_groups,
                                    dtype=dtype, rngs=rngs) if attend else None)

    def __call__(self, x: Array, emb: Array, key: Array | None) -> Array:
        x = self.res(x, emb, key)
        return x if self.attn is None else self.attn(x)


class Downsample(nnx.Module):
    """2x downsampling of every spatial axis: a stride-2 conv_k ('conv') or average pooling of
    2^nd-blocks ('pool').  x: (B, *S, C) -> (B, *S / 2, C)."""

    def __init__(self, ch: int, *, kernel: tuple[int, ...], resample: str, dtype: Any,
                 rngs: nnx.Rngs):
        self.nd = len(kernel)
        self.conv = (nnx.Conv(ch, ch, kernel, strides=(2,) * self.nd, dtype=dtype, rngs=rngs)
                     if resample == "conv" else None)

    def __call__(self, x: Array) -> Array:
        if self.conv is not None:
            return self.conv(x)
        return nnx.avg_pool(x, (2,) * self.nd, strides=(2,) * self.nd)


class Upsample(nnx.Module):
    """2x nearest-neighbour upsampling of every spatial axis, followed by a conv_k when
    resample == 'conv'.  x: (B, *S, C) -> (B, *2S, C)."""

    def __init__(self, ch: int, *, kernel: tuple[int, ...], resample: str, dtype: Any,
                 rngs: nnx.Rngs):
        self.conv = (nnx.Conv(ch, ch, kernel, dtype=dtype, rngs=rngs)
                     if resample == "conv" else None)

    def __call__(self, x: Array) -> Array:
        for axis in range(1, x.ndim - 1):
            x = jnp.repeat(x, 2, axis=axis)
        return x if self.conv is None else self.conv(x)


class ExitHead(nnx.Module):
    """A DeeDiff exit head on a decoder stage: SiLU(GN(h)) -> zero-initialised conv_k to the
    output channels -> nearest-neighbour upsampling by ``factor`` to the full resolution.
    (B, *S / factor, ch) -> (B, *S, C) float32."""

    def __init__(self, ch: int, out_ch: int, factor: int, *, kernel: tuple[int, ...],
                 num_groups: int, dtype: Any, rngs: nnx.Rngs):
        self.factor = factor
        self.norm = layers.GroupNorm(ch, num_groups, dtype=dtype, rngs=rngs)
        self.conv = nnx.Conv(ch, out_ch, kernel, kernel_init=_zeros, dtype=dtype, rngs=rngs)

    def __call__(self, h: Array) -> Array:
        h = self.conv(jax.nn.silu(self.norm(h)))
        for axis in range(1, h.ndim - 1):
            h = jnp.repeat(h, self.factor, axis=axis)
        return h.astype(jnp.float32)


class UNet(nnx.Module):
    """Conditional U-Net denoiser network F(x, c_noise, cond).

    Args:
      data_shape: (*S, C), e.g. (H, W, C) or (L, C); every spatial size in S divisible by
        2^(len(channel_mult) - 1).
      num_classes: K (class-conditional; row K of the class table is the null token).
      base_channels: width of the first level; level i has base_channels * channel_mult[i].
      channel_mult: per-level width multipliers (one level per entry).
      num_res_blocks: residual blocks per encoder level (the decoder has one more).
      attn_resolutions: sizes along the first spatial axis (the height H of images, the length
        L of signals) at which self-attention follows each residual block (sizes the network
        never reaches are ignored, so one config serves several image sizes).
      num_heads: attention heads.
      dropout: dropout rate inside residual blocks (active only with a dropout key).
      num_groups: GroupNorm groups.
      resample: 'conv' (strided conv down, nearest + conv up) or 'pool' (avg pool / nearest).
      kernel_size: taps of every convolution along each spatial axis (odd; 3 gives 3x3 convs).
      cond_dim: > 0 selects continuous conditioning vectors of this width.
      noise_scale: c_noise multiplier before the sinusoidal embedding.
      guidance_embedding: also embed a guidance weight (``layers.ConditionEmbedding``).
      dtype: compute dtype (parameters are float32).
      exit_heads: add DeeDiff exit and uncertainty heads after every decoder stage but the
        last (``jaxdiff.models.early_exit``; the encoder always runs, its skips feed the
        decoder).
    """

    def __init__(self, *, data_shape: tuple[int, ...], num_classes: int,
                 base_channels: int, channel_mult: tuple[int, ...], num_res_blocks: int,
                 attn_resolutions: tuple[int, ...], num_heads: int, dropout: float,
                 num_groups: int, resample: str, kernel_size: int = 3, cond_dim: int,
                 noise_scale: float, dtype: Any, rngs: nnx.Rngs, exit_heads: bool = False,
                 guidance_embedding: bool = False):
        size, *_, channels = data_shape
        kernel = (kernel_size,) * (len(data_shape) - 1)
        self.data_shape = tuple(data_shape)
        self.dtype = dtype
        emb_dim = 4 * base_channels  # ADM / DDPM: time-embedding width 4 x base width
        self.embed = layers.ConditionEmbedding(
            emb_dim, freq_dim=base_channels, num_classes=num_classes, cond_dim=cond_dim,
            noise_scale=noise_scale, dtype=dtype, rngs=rngs,
            guidance_embedding=guidance_embedding)
        common = dict(kernel=kernel, emb_dim=emb_dim, num_heads=num_heads,
                      num_groups=num_groups, rate=dropout, dtype=dtype, rngs=rngs)
        resampling = dict(kernel=kernel, resample=resample, dtype=dtype, rngs=rngs)

        self.conv_in = nnx.Conv(channels, base_channels, kernel, dtype=dtype, rngs=rngs)
        ch, res, skips = base_channels, size, [base_channels]
        down = []
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                down.append(Stage(ch, base_channels * mult, attend=res in attn_resolutions,
                                  **common))
                ch = base_channels * mult
                skips.append(ch)
            if level != len(channel_mult) - 1:
                down.append(Downsample(ch, **resampling))
                res //= 2
                skips.append(ch)
        self.down = nnx.List(down)

        self.mid_stage = Stage(ch, ch, attend=True, **common)
        self.mid_res = ResBlock(ch, ch, kernel=kernel, emb_dim=emb_dim, num_groups=num_groups,
                                rate=dropout, dtype=dtype, rngs=rngs)

        up, exits = [], []   # exits: (width, upsampling factor) after each decoder stage
        for level in reversed(range(len(channel_mult))):
            for j in range(num_res_blocks + 1):
                out = base_channels * channel_mult[level]
                up.append(Stage(ch + skips.pop(), out, attend=res in attn_resolutions, **common))
                ch = out
                if j == num_res_blocks and level != 0:
                    up.append(Upsample(ch, **resampling))
                    res *= 2
                exits.append((ch, size // res))
        self.up = nnx.List(up)
        self.up_stages = tuple(j for j, layer in enumerate(up) if isinstance(layer, Stage))
        self.num_down_stages = sum(isinstance(layer, Stage) for layer in self.down)
        if not exit_heads:
            self.exit_heads = self.uncertainty = None
        else:
            self.exit_heads = nnx.List([
                ExitHead(width, channels, factor, kernel=kernel, num_groups=num_groups,
                         dtype=dtype, rngs=rngs) for width, factor in exits[:-1]])
            self.uncertainty = nnx.List([
                UncertaintyHead(width, noise_scale=noise_scale, dtype=dtype, rngs=rngs)
                for width, _ in exits[:-1]])

        self.norm_out = layers.GroupNorm(ch, num_groups, dtype=dtype, rngs=rngs)
        self.conv_out = nnx.Conv(ch, channels, kernel, kernel_init=_zeros, dtype=dtype, rngs=rngs)

    # The staged pass (``jaxdiff.models.early_exit``): ``begin`` runs the embedding, the
    # encoder and the middle; each decoder Stage (with the Upsample that follows it) is one
    # stage; the state is (h, the encoder skips not yet consumed).

    @property
    def num_stages(self) -> int:
        return len(self.up_stages)

    def begin(self, x: Array, c_noise: Array, cond: Any, dropout_key: Array | None = None):
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
        return (h, tuple(skips)), emb

    def stage(self, i: int, state, emb: Array, key: Array | None):
        """Decoder stage i; ``key`` is the dropout key of the whole network (its sub-keys
        continue the encoder's numbering)."""
        h, skips = state
        j = self.up_stages[i]
        h = self.up[j](jnp.concatenate([h, skips[-1]], axis=-1), emb,
                       layers.sub_key(key, self.num_down_stages + 2 + i))
        if j + 1 < len(self.up) and not isinstance(self.up[j + 1], Stage):
            h = self.up[j + 1](h)
        return h, skips[:-1]

    def output(self, state, emb: Array) -> Array:
        del emb
        return self.conv_out(jax.nn.silu(self.norm_out(state[0]))).astype(jnp.float32)

    def exit_output(self, i: int, state, emb: Array) -> Array:
        del emb
        return self.exit_heads[i](state[0])

    def exit_features(self, i: int, state) -> Array:
        del i
        return state[0]

    def __call__(self, x: Array, c_noise: Array, cond: Any = None,
                 dropout_key: Array | None = None) -> Array:
        """x: (B, *S, C) float; c_noise: (B,) (or scalar) float; cond: None (null token / zero
        vector), (B,) int in [0, K] or (B, cond_dim) float; dropout_key: None (deterministic) or
        a PRNG key (dropout active).  Returns (B, *S, C) float32 (exit heads are not used)."""
        state, emb = self.begin(x, c_noise, cond, dropout_key)
        for i in range(self.num_stages):
            state = self.stage(i, state, emb, dropout_key)
        return self.output(state, emb)


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
    cfg.exit_heads = False       # DeeDiff exit + uncertainty heads after every decoder stage
    return cfg


def is_positive_int(value) -> bool:
    """Whether ``value`` is an int >= 1 (a bool is not)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def check_config(cfg, data_shape: tuple[int, ...], axes: str) -> None:
    """Raises a ValueError naming the first field of a U-Net config ``cfg`` that is invalid for
    examples of shape ``data_shape`` (*S, C); ``axes`` names the spatial axes S in the message
    (e.g. 'H and W').  ``kernel_size`` is left to the caller (the 2-D config has no such field)."""
    mult = tuple(cfg.channel_mult)
    if not mult:
        raise ConfigError("config.model.channel_mult must be non-empty")
    if not all(is_positive_int(m) for m in mult):
        raise ConfigError(f"config.model.channel_mult must hold positive ints, got {mult}")
    for name in ("base_channels", "num_res_blocks", "num_heads", "num_groups"):
        value = cfg[name]
        if not is_positive_int(value):
            raise ConfigError(f"config.model.{name} must be a positive int, got {value!r}")
    factor = 2 ** (len(mult) - 1)
    if any(size % factor for size in data_shape[:-1]):
        raise ConfigError(f"config.model.channel_mult: {len(mult)} levels need {axes} divisible "
                         f"by {factor}, got data shape {tuple(data_shape)}")
    if cfg.base_channels % cfg.num_groups:
        raise ConfigError(f"config.model.num_groups ({cfg.num_groups}) must divide "
                         f"base_channels ({cfg.base_channels})")
    if any(cfg.base_channels * m % cfg.num_heads for m in mult):
        raise ConfigError(f"config.model.num_heads ({cfg.num_heads}) must divide every level "
                         f"width base_channels * channel_mult")
    if not all(is_positive_int(r) for r in tuple(cfg.attn_resolutions)):
        raise ConfigError(f"config.model.attn_resolutions must hold positive ints, "
                         f"got {tuple(cfg.attn_resolutions)}")
    check_exit_heads(cfg)
    if cfg.resample not in RESAMPLE:
        raise ConfigError(f"config.model.resample: unknown {cfg.resample!r}; choose one of "
                         f"{list(RESAMPLE)}")


def check(cfg, example_shape, num_classes: int) -> None:
    """The U-Net's own check: (H, W, C) examples and the fields of ``check_config``."""
    del num_classes  # any K works (class table of K + 1 rows)
    check_config(cfg, check_rank(example_shape, 3, "(H, W, C)"), "H and W")


def build(cfg, example_shape, num_classes: int, rngs: nnx.Rngs) -> UNet:
    """A ``UNet`` for examples of ``example_shape`` from a checked config (see
    ``default_unet_config``): 3-tap convolutions per axis unless the config has a
    ``kernel_size`` field (the 1-D registration's)."""
    return UNet(
        data_shape=tuple(int(d) for d in example_shape), num_classes=int(num_classes),
        base_channels=cfg.base_channels, channel_mult=tuple(cfg.channel_mult),
        num_res_blocks=cfg.num_res_blocks, attn_resolutions=tuple(cfg.attn_resolutions),
        num_heads=cfg.num_heads, num_groups=cfg.num_groups, resample=cfg.resample,
        kernel_size=int(cfg.get("kernel_size", 3)), exit_heads=bool(cfg.exit_heads), rngs=rngs,
        **common_kwargs(cfg))


NETWORKS.register(
    "unet", build, defaults=default_unet_config, check=check, test_shape=(8, 8, 1),
    test_overrides=dict(base_channels=8, num_groups=4, num_heads=2, channel_mult=(1, 2),
                        attn_resolutions=(4,)),
    test_bad_fields=dict(num_groups=3, resample="bilinear", channel_mult=(1, 2, 2, 2, 2)))

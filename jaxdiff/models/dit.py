"""Diffusion Transformer (DiT; Peebles & Xie 2023, "Scalable Diffusion Models with Transformers").

x (B, H, W, C) is cut into (H/p)(W/p) patches of p x p x C, linearly embedded to ``hidden_size``
and given a fixed 2-D sin-cos position embedding (Sec. 3.2, "Patchify"); ``depth`` transformer
blocks with adaLN-Zero conditioning follow (Sec. 3.2, Fig. 3): each block regresses
(shift, scale, gate) for its attention and MLP sub-layers from the conditioning vector
c = embed(c_noise) + embed(cond), with the regression zero-initialised so every block starts as
the identity.  A final adaptive LayerNorm and a zero-initialised linear layer map tokens back to
p x p x C patches, so a fresh DiT outputs exactly 0.

With ``exit_heads=True`` every block but the last also gets an exit head (its own adaptive
LayerNorm and zero-initialised linear map, like the final layer) and an uncertainty head: the
staged network of DeeDiff early exit (``jaxdiff.models.early_exit``).
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from jaxdiff.errors import ConfigError
from jaxdiff.models import layers
from jaxdiff.models.early_exit import UncertaintyHead
from jaxdiff.models.networks import (NETWORKS, check_exit_heads, check_rank, common_defaults,
                                     common_kwargs)

Array = jax.Array

FREQ_DIM = 256  # width of the sinusoidal noise features (DiT's TimestepEmbedder)
_zeros = nnx.initializers.zeros
_xavier = nnx.initializers.xavier_uniform()  # DiT initialises its linear layers Xavier-uniform


@functools.lru_cache(maxsize=None)
def sincos_position_embedding(grid_h: int, grid_w: int, dim: int) -> np.ndarray:
    """Fixed 2-D sin-cos position embedding (MAE, He et al. 2022; used by DiT Sec. 3.2).

    The first dim/2 features encode the column index, the last dim/2 the row index, each as
    [sin(pos * w_i), cos(pos * w_i)] with w_i = 10000^(-i / (dim/4)), i < dim/4.

    Returns:
      (grid_h * grid_w, dim) float32 numpy array, rows in row-major patch order.
    """
    omega = 1.0 / 10000.0 ** (np.arange(dim // 4, dtype=np.float64) / (dim // 4))

    def one_axis(pos: np.ndarray) -> np.ndarray:
        args = pos[:, None] * omega[None, :]
        return np.concatenate([np.sin(args), np.cos(args)], axis=1)

    rows, cols = np.meshgrid(np.arange(grid_h), np.arange(grid_w), indexing="ij")
    emb = np.concatenate([one_axis(cols.reshape(-1)), one_axis(rows.reshape(-1))], axis=1)
    return emb.astype(np.float32)


def patchify(x: Array, p: int) -> Array:
    """(B, H, W, C) -> (B, (H/p)(W/p), p*p*C), patches in row-major order."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(tokens: Array, p: int, h: int, w: int) -> Array:
    """Inverse of ``patchify``: (B, (H/p)(W/p), p*p*C) -> (B, H, W, C)."""
    b, _, d = tokens.shape
    c = d // (p * p)
    x = tokens.reshape(b, h // p, w // p, p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, c)


class DiTBlock(nnx.Module):
    """Transformer block with adaLN-Zero (DiT Sec. 3.2, Fig. 3 right).

      (s1, a1, g1, s2, a2, g2) = Linear_zero(SiLU(c))
      x = x + g1 * Attn(LN(x) * (1 + a1) + s1)
      x = x + g2 * MLP(LN(x) * (1 + a2) + s2)

    LN has no affine parameters; MLP = Linear -> GELU(tanh) -> Linear with hidden width
    int(hidden_size * mlp_ratio).  x: (B, T, D), c: (B, D) -> (B, T, D).
    """

    def __init__(self, hidden_size: int, *, num_heads: int, mlp_ratio: float, rate: float,
                 dtype: Any, rngs: nnx.Rngs):
        d, m = hidden_size, int(hidden_size * mlp_ratio)
        self.num_heads = num_heads
        self.rate = rate
        norm = dict(epsilon=1e-6, use_scale=False, use_bias=False, dtype=dtype, rngs=rngs)
        lin = dict(kernel_init=_xavier, dtype=dtype, rngs=rngs)
        self.norm1 = nnx.LayerNorm(d, **norm)
        self.qkv = nnx.Linear(d, 3 * d, **lin)
        self.proj = nnx.Linear(d, d, **lin)
        self.norm2 = nnx.LayerNorm(d, **norm)
        self.fc1 = nnx.Linear(d, m, **lin)
        self.fc2 = nnx.Linear(m, d, **lin)
        self.ada = nnx.Linear(d, 6 * d, kernel_init=_zeros, dtype=dtype, rngs=rngs)

    def __call__(self, x: Array, c: Array, key: Array | None) -> Array:
        s1, a1, g1, s2, a2, g2 = jnp.split(self.ada(jax.nn.silu(c)), 6, axis=-1)
        h = layers.attention(self.qkv(layers.modulate(self.norm1(x), s1, a1)), self.num_heads)
        x = x + g1[:, None] * layers.dropout(self.proj(h), self.rate, layers.sub_key(key, 0))
        h = jax.nn.gelu(self.fc1(layers.modulate(self.norm2(x), s2, a2)), approximate=True)
        h = self.fc2(layers.dropout(h, self.rate, layers.sub_key(key, 1)))
        return x + g2[:, None] * h


class FinalLayer(nnx.Module):
    """Adaptive LayerNorm then a zero-initialised linear map to patches (DiT Sec. 3.2).

    (B, T, D), c: (B, D) -> (B, T, p*p*C).
    """

    def __init__(self, hidden_size: int, out_dim: int, *, dtype: Any, rngs: nnx.Rngs):
        self.norm = nnx.LayerNorm(hidden_size, epsilon=1e-6, use_scale=False, use_bias=False,
                                  dtype=dtype, rngs=rngs)
        self.ada = nnx.Linear(hidden_size, 2 * hidden_size, kernel_init=_zeros, dtype=dtype,
                              rngs=rngs)
        self.linear = nnx.Linear(hidden_size, out_dim, kernel_init=_zeros, dtype=dtype,
                                 rngs=rngs)

    def __call__(self, x: Array, c: Array) -> Array:
        shift, scale = jnp.split(self.ada(jax.nn.silu(c)), 2, axis=-1)
        return self.linear(layers.modulate(self.norm(x), shift, scale))


class DiT(nnx.Module):
    """Conditional Diffusion Transformer F(x, c_noise, cond).

    Args:
      data_shape: (H, W, C); H and W divisible by ``patch_size``.
      num_classes: K (class-conditional; row K of the class table is the null token).
      patch_size: p, patch side in pixels.
      hidden_size: token width D (divisible by 4 for the 2-D position embedding, and by
        ``num_heads``).
      depth: number of DiT blocks.
      num_heads: attention heads.
      mlp_ratio: MLP hidden width / D.
      dropout: dropout rate on attention and MLP outputs (active only with a dropout key).
      cond_dim: > 0 selects continuous conditioning vectors of this width.
      guidance_embedding: also embed a guidance weight (``layers.ConditionEmbedding``).
      noise_scale: c_noise multiplier before the sinusoidal embedding.
      dtype: compute dtype (parameters are float32).
      exit_heads: add DeeDiff exit and uncertainty heads after blocks 0 .. depth - 2.
    """

    def __init__(self, *, data_shape: tuple[int, int, int], num_classes: int, patch_size: int,
                 hidden_size: int, depth: int, num_heads: int, mlp_ratio: float, dropout: float,
                 cond_dim: int, noise_scale: float, dtype: Any, rngs: nnx.Rngs,
                 exit_heads: bool = False, guidance_embedding: bool = False):
        _, _, channels = data_shape
        self.data_shape = tuple(data_shape)
        self.patch_size = patch_size
        self.hidden_size = hidden_size
        self.dtype = dtype
        patch_dim = patch_size * patch_size * channels
        self.patch_embed = nnx.Linear(patch_dim, hidden_size, kernel_init=_xavier, dtype=dtype,
                                      rngs=rngs)
        self.embed = layers.ConditionEmbedding(
            hidden_size, freq_dim=FREQ_DIM, num_classes=num_classes, cond_dim=cond_dim,
            noise_scale=noise_scale, dtype=dtype, rngs=rngs,
            guidance_embedding=guidance_embedding)
        self.blocks = nnx.List([
            DiTBlock(hidden_size, num_heads=num_heads, mlp_ratio=mlp_ratio, rate=dropout,
                     dtype=dtype, rngs=rngs) for _ in range(depth)])
        self.final = FinalLayer(hidden_size, patch_dim, dtype=dtype, rngs=rngs)
        if not exit_heads:
            self.exit_heads = self.uncertainty = None
        else:
            self.exit_heads = nnx.List([FinalLayer(hidden_size, patch_dim, dtype=dtype, rngs=rngs)
                                        for _ in range(depth - 1)])
            self.uncertainty = nnx.List([
                UncertaintyHead(hidden_size, noise_scale=noise_scale, dtype=dtype, rngs=rngs)
                for _ in range(depth - 1)])

    @property
    def num_stages(self) -> int:
        return len(self.blocks)

    def begin(self, x: Array, c_noise: Array, cond: Any,
              dropout_key: Array | None = None) -> tuple[Array, Array]:
        """Patch tokens (B, T, D) and the conditioning vector c (B, D)."""
        del dropout_key  # no dropout before the first block
        c_noise = layers.check_inputs(x, c_noise, self.data_shape)
        h, w, _ = self.data_shape
        p = self.patch_size
        pos = sincos_position_embedding(h // p, w // p, self.hidden_size)
        tokens = self.patch_embed(patchify(x.astype(self.dtype), p)) + pos.astype(self.dtype)
        return tokens, self.embed(c_noise, cond)

    def stage(self, i: int, tokens: Array, c: Array, dropout_key: Array | None) -> Array:
        """Block i; ``dropout_key`` is the whole network's (block i uses its i-th sub-key)."""
        return self.blocks[i](tokens, c, layers.sub_key(dropout_key, i))

    def _to_image(self, patches: Array) -> Array:
        h, w, _ = self.data_shape
        return unpatchify(patches, self.patch_size, h, w).astype(jnp.float32)

    def output(self, tokens: Array, c: Array) -> Array:
        return self._to_image(self.final(tokens, c))

    def exit_output(self, i: int, tokens: Array, c: Array) -> Array:
        return self._to_image(self.exit_heads[i](tokens, c))

    def exit_features(self, i: int, tokens: Array) -> Array:
        del i
        return tokens

    def __call__(self, x: Array, c_noise: Array, cond: Any = None,
                 dropout_key: Array | None = None) -> Array:
        """x: (B, H, W, C) float; c_noise: (B,) float; cond: None, (B,) int in [0, K] or
        (B, cond_dim) float; dropout_key: None (deterministic) or a PRNG key (dropout active).
        Returns (B, H, W, C) float32 (the exit heads, if any, are not used)."""
        tokens, c = self.begin(x, c_noise, cond)
        for i in range(self.num_stages):
            tokens = self.stage(i, tokens, c, dropout_key)
        return self.output(tokens, c)


def default_dit_config() -> ml_collections.ConfigDict:
    """Every DiT field, with tiny defaults suitable for 8x8 digits and CPU tests."""
    cfg = common_defaults("dit")
    cfg.patch_size = 2
    cfg.hidden_size = 64
    cfg.depth = 2
    cfg.num_heads = 4
    cfg.mlp_ratio = 4.0
    cfg.exit_heads = False   # DeeDiff exit + uncertainty heads after every block but the last
    return cfg


def check_config(cfg, data_shape: tuple[int, int, int]) -> None:
    """Raises a ValueError naming the first field of a DiT config ``cfg`` that is invalid."""
    height, width, _ = data_shape
    for name in ("patch_size", "hidden_size", "depth", "num_heads"):
        value = cfg[name]
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"config.model.{name} must be a positive int, got {value!r}")
    if height % cfg.patch_size or width % cfg.patch_size:
        raise ConfigError(f"config.model.patch_size ({cfg.patch_size}) must divide H and W of "
                         f"data shape {tuple(data_shape)}")
    if cfg.hidden_size % 4:
        raise ConfigError(f"config.model.hidden_size ({cfg.hidden_size}) must be divisible by 4 "
                         "(2-D sin-cos position embedding)")
    if cfg.hidden_size % cfg.num_heads:
        raise ConfigError(f"config.model.num_heads ({cfg.num_heads}) must divide hidden_size "
                         f"({cfg.hidden_size})")
    check_exit_heads(cfg)
    if not isinstance(cfg.mlp_ratio, (int, float)) or int(cfg.hidden_size * cfg.mlp_ratio) < 1:
        raise ConfigError(f"config.model.mlp_ratio must be a positive number, "
                         f"got {cfg.mlp_ratio!r}")


def check(cfg, example_shape, num_classes: int) -> None:
    """The DiT's own check: (H, W, C) examples and the fields of ``check_config``."""
    del num_classes  # any K works (class table of K + 1 rows)
    check_config(cfg, check_rank(example_shape, 3, "(H, W, C)"))


def build(cfg, example_shape, num_classes: int, rngs: nnx.Rngs) -> DiT:
    """A ``DiT`` for (H, W, C) examples from a checked config (see ``default_dit_config``)."""
    return DiT(
        data_shape=tuple(int(d) for d in example_shape), num_classes=int(num_classes),
        patch_size=cfg.patch_size, hidden_size=cfg.hidden_size, depth=cfg.depth,
        num_heads=cfg.num_heads, mlp_ratio=float(cfg.mlp_ratio),
        exit_heads=bool(cfg.exit_heads), rngs=rngs, **common_kwargs(cfg))


NETWORKS.register(
    "dit", build, defaults=default_dit_config, check=check, test_shape=(8, 8, 1),
    test_overrides=dict(hidden_size=16, num_heads=2, mlp_ratio=2.0, depth=2, patch_size=2),
    test_bad_fields=dict(patch_size=3, hidden_size=18, depth=0))

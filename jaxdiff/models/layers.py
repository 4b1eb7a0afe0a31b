"""Building blocks shared by the networks (U-Net, DiT, 1-D U-Net): embeddings, attention,
dropout, modulation, group normalization.

Every array here is channels-last.  Nothing in this module holds random state: dropout takes an
explicit PRNG key (or ``None`` for inference), so a network's ``nnx.split`` state is parameters
only and a forward pass is a pure function of (params, inputs, key).
"""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

Array = jax.Array

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def dropout(x: Array, rate: float, key: Array | None) -> Array:
    """Inverted dropout (Srivastava et al. 2014): zero each entry with probability ``rate``.

    Args:
      x: any shape.
      rate: drop probability in [0, 1).
      key: PRNG key, or None for the identity (inference).
    Returns:
      x with dropped entries zeroed and the rest scaled by 1 / (1 - rate); same shape and dtype.
    """
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def sub_key(key: Array | None, index: int) -> Array | None:
    """The dropout key of the ``index``-th sub-layer: ``fold_in(key, index)``; None stays None."""
    return None if key is None else jax.random.fold_in(key, index)


def sinusoidal_embedding(c: Array, dim: int, max_period: float = 10000.0) -> Array:
    """Sinusoidal features of a scalar per example (Vaswani et al. 2017, Sec. 3.5; Ho et al. 2020).

    emb = [cos(c * f_0), ..., cos(c * f_{h-1}), sin(c * f_0), ..., sin(c * f_{h-1})] with
    h = dim // 2 and frequencies f_i = max_period^(-i / h), geometric from 1 to ~1/max_period.

    Args:
      c: (B,) float, already scaled (e.g. 1000 t for t in [0, 1]).
      dim: even feature size.
    Returns:
      (B, dim) float32.
    """
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = c.astype(jnp.float32)[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def modulate(x: Array, shift: Array, scale: Array) -> Array:
    """Feature-wise affine modulation x * (1 + scale) + shift (FiLM, Perez et al. 2018; adaLN in
    Peebles & Xie 2023).  x: (B, ..., C); shift, scale: (B, C), broadcast over the middle axes."""
    expand = (slice(None),) + (None,) * (x.ndim - 2) + (slice(None),)
    return x * (1.0 + scale[expand]) + shift[expand]


def group_norm(x: Array, num_groups: int, epsilon: float, scale: Array | None = None,
               bias: Array | None = None, *, mod_scale: Array | None = None,
               mod_shift: Array | None = None) -> Array:
    """Group normalization (Wu & He 2018, Eqs. 1-4) of channels-last activations.

      mu_g = E[x], var_g = E[x^2] - mu_g^2   over (spatial positions, channels of group g)
      y = (x - mu_g) / sqrt(var_g + epsilon) * scale_c + bias_c
      y <- y * (1 + mod_scale_bc) + mod_shift_bc     (optional AdaGN / FiLM modulation, ADM Sec. 3)

    Laid out for speed: per-(example, channel) means of x and x^2 over the spatial axes (a
    reduction that keeps the channel axis contiguous), averaged within each group; the per-group
    1 / sigma and -mu / sigma go back to channels through a (G, C) one-hot matmul, so that the
    one elementwise pass y = x * a + b (fused by XLA with the affine, the modulation and a
    following SiLU) sees per-(example, channel) coefficients and no group index arithmetic
    (with ``jnp.repeat`` XLA recomputed the group lookup for every element: ~4x slower pass).
    Flax's ``nnx.GroupNorm`` reshapes x to (..., G, C / G) instead, which puts a length-C/G axis
    innermost (2 for 64 channels in 32 groups).  Statistics are float32 whatever x's dtype; the
    variance is flax's default "fast variance", clipped at 0.

    Args:
      x: (B, ..., C) with C divisible by num_groups; at least one axis between B and C.
      num_groups: G.
      epsilon: added to the variance.
      scale, bias: (C,) or None (no affine).
      mod_scale, mod_shift: (B, C) or None (no modulation).
    Returns:
      y, same shape and dtype as x.
    """
    b, c = x.shape[0], x.shape[-1]
    if x.ndim < 3 or c % num_groups:
        raise ValueError(f"group_norm needs (B, ..., C) with C divisible by {num_groups} groups, "
                         f"got shape {x.shape}")
    size = c // num_groups
    axes = tuple(range(1, x.ndim - 1))
    xf = x.astype(jnp.float32)
    mean_c = jnp.mean(xf, axis=axes)                   # (B, C)
    meansq_c = jnp.mean(jnp.square(xf), axis=axes)     # (B, C)
    mean = mean_c.reshape(b, num_groups, size).mean(-1)      # (B, G)
    meansq = meansq_c.reshape(b, num_groups, size).mean(-1)  # (B, G)
    inv = lax.rsqrt(jnp.maximum(meansq - jnp.square(mean), 0.0) + epsilon)
    members = jnp.repeat(jnp.eye(num_groups, dtype=jnp.float32), size, axis=1)  # (G, C) one-hot
    exact = lax.Precision.HIGHEST  # a one-hot product: exact, no bf16 / TF32 passes on TPU / GPU
    a = jnp.dot(inv, members, precision=exact)                  # (B, C)
    shift = jnp.dot(-mean * inv, members, precision=exact)      # (B, C)
    if scale is not None:
        a = a * scale.astype(jnp.float32)
        shift = shift * scale.astype(jnp.float32)
    if bias is not None:
        shift = shift + bias.astype(jnp.float32)
    if mod_scale is not None:
        factor = 1.0 + mod_scale.astype(jnp.float32)
        a, shift = a * factor, shift * factor
    if mod_shift is not None:
        shift = shift + mod_shift.astype(jnp.float32)
    expand = (b,) + (1,) * (x.ndim - 2) + (c,)
    return (xf * a.reshape(expand) + shift.reshape(expand)).astype(x.dtype)


class GroupNorm(nnx.Module):
    """``group_norm`` with learned per-channel scale (init 1) and bias (init 0).

    Same parameter names and shapes as ``nnx.GroupNorm`` (``scale``, ``bias``: (C,), absent when
    disabled), so states saved with either load into the other.  x: (B, ..., C) -> same shape,
    in ``dtype`` (or x's dtype when None).
    """

    def __init__(self, num_features: int, num_groups: int = 32, *, epsilon: float = 1e-6,
                 use_scale: bool = True, use_bias: bool = True, dtype: Any = None,
                 rngs: nnx.Rngs | None = None):
        del rngs  # deterministic initialisation; accepted for nnx.GroupNorm's signature
        if num_features % num_groups:
            raise ValueError(f"{num_features} channels are not divisible into {num_groups} groups")
        self.num_groups = num_groups
        self.epsilon = epsilon
        self.dtype = dtype
        self.scale = nnx.Param(jnp.ones((num_features,), jnp.float32)) if use_scale else None
        self.bias = nnx.Param(jnp.zeros((num_features,), jnp.float32)) if use_bias else None

    def __call__(self, x: Array, *, mod_scale: Array | None = None,
                 mod_shift: Array | None = None) -> Array:
        """x: (B, ..., C); mod_scale, mod_shift: optional (B, C) modulation (see group_norm)."""
        if self.dtype is not None:
            x = x.astype(self.dtype)
        return group_norm(x, self.num_groups, self.epsilon,
                          None if self.scale is None else self.scale[...],
                          None if self.bias is None else self.bias[...],
                          mod_scale=mod_scale, mod_shift=mod_shift)


def attention(qkv: Array, num_heads: int) -> Array:
    """Multi-head scaled dot-product self-attention (Vaswani et al. 2017, Eq. 1).

    Args:
      qkv: (B, T, 3 C) concatenated queries, keys and values; C divisible by ``num_heads``.
    Returns:
      (B, T, C) attended values, heads concatenated.
    """
    b, t, c3 = qkv.shape
    c = c3 // 3
    q, k, v = jnp.split(qkv.reshape(b, t, 3, num_heads, c // num_heads), 3, axis=2)
    out = jax.nn.dot_product_attention(q[:, :, 0], k[:, :, 0], v[:, :, 0])
    return out.reshape(b, t, c)


class ConditionEmbedding(nnx.Module):
    """Noise level plus condition -> one embedding vector per example.

    emb = MLP(sinusoidal(noise_scale * c_noise)) + E(cond), with E either a class table of
    ``num_classes + 1`` rows (row ``num_classes`` is the null / unconditional token; ADM,
    Dhariwal & Nichol 2021, and DiT add the class embedding to the time embedding this way) or,
    when ``cond_dim > 0``, an MLP on a continuous condition vector.

    ``noise_scale`` makes one embedding serve both noise inputs used in jaxdiff: t in [0, 1]
    scaled by 1000 spans the same phases as DDPM's integer steps, and EDM's log(sigma) / 4 in
    about [-1.5, 1.2] becomes [-1500, 1200], well resolved by the same frequencies.

    Args:
      emb_dim: output width.
      freq_dim: width of the sinusoidal features (even).
      num_classes: K, the number of real classes (used when cond_dim == 0).
      cond_dim: width of continuous condition vectors; 0 selects class conditioning.
      noise_scale: multiplier applied to c_noise before the sinusoidal features.
      guidance_embedding: the network also takes a guidance weight w (a guided-distilled
        student, Meng et al. 2023, Sec. 4.1): cond is then ``{"cond": condition, "w": (B,)}``
        (``jaxdiff.cond.with_guidance_weight``) and MLP(sinusoidal(W_SCALE w)) is added to the
        embedding.  Its output layer starts at zero, so a student initialised from its teacher
        predicts the teacher's output at every w; a bare condition means w = 0.
    """

    W_SCALE = 250.0  # w in Meng et al.'s [0, 4] spans the phases of t * 1000 for t in [0, 1]

    def __init__(self, emb_dim: int, *, freq_dim: int, num_classes: int, cond_dim: int,
                 noise_scale: float, dtype: Any, rngs: nnx.Rngs,
                 guidance_embedding: bool = False):
        self.freq_dim = freq_dim
        self.noise_scale = noise_scale
        self.num_classes = num_classes
        self.cond_dim = cond_dim
        self.dtype = dtype
        self.noise_in = nnx.Linear(freq_dim, emb_dim, dtype=dtype, rngs=rngs)
        self.noise_out = nnx.Linear(emb_dim, emb_dim, dtype=dtype, rngs=rngs)
        if cond_dim > 0:
            self.cond_in = nnx.Linear(cond_dim, emb_dim, dtype=dtype, rngs=rngs)
            self.cond_out = nnx.Linear(emb_dim, emb_dim, dtype=dtype, rngs=rngs)
        else:
            self.class_table = nnx.Embed(num_classes + 1, emb_dim, dtype=dtype, rngs=rngs)
        self.guidance_embedding = bool(guidance_embedding)
        if self.guidance_embedding:
            self.w_in = nnx.Linear(freq_dim, emb_dim, dtype=dtype, rngs=rngs)
            self.w_out = nnx.Linear(emb_dim, emb_dim, kernel_init=nnx.initializers.zeros,
                                    dtype=dtype, rngs=rngs)

    def __call__(self, c_noise: Array, cond: Any) -> Array:
        """c_noise: (B,) float; cond: None, (B,) int class indices in [0, K], or (B, cond_dim)
        float.  None means the null class (class models) or the zero vector (continuous).  With
        ``guidance_embedding``, also ``{"cond": one of those, "w": (B,) float}``.
        Returns (B, emb_dim) in the compute dtype."""
        batch = c_noise.shape[0]
        feats = sinusoidal_embedding(self.noise_scale * c_noise, self.freq_dim).astype(self.dtype)
        emb = self.noise_out(jax.nn.silu(self.noise_in(feats)))
        if isinstance(cond, dict) and "w" in cond:
            if not self.guidance_embedding:
                raise ValueError("cond carries a guidance weight w, but the network has no "
                                 "guidance embedding (config.model.guidance_embedding=False)")
            w = jnp.broadcast_to(jnp.asarray(cond["w"], jnp.float32), (batch,))
            w_feats = sinusoidal_embedding(self.W_SCALE * w, self.freq_dim).astype(self.dtype)
            emb = emb + self.w_out(jax.nn.silu(self.w_in(w_feats)))
            cond = cond["cond"]
        if self.cond_dim > 0:
            if cond is None:
                cond = jnp.zeros((batch, self.cond_dim), self.dtype)
            cond = jnp.asarray(cond)
            if cond.shape != (batch, self.cond_dim) or not jnp.issubdtype(cond.dtype,
                                                                           jnp.floating):
                raise ValueError(f"cond must be float of shape ({batch}, {self.cond_dim}) for a "
                                 f"continuous-condition network, got {cond.dtype}{cond.shape}")
            return emb + self.cond_out(jax.nn.silu(self.cond_in(cond.astype(self.dtype))))
        if cond is None:
            cond = jnp.full((batch,), self.num_classes, jnp.int32)
        cond = jnp.asarray(cond)
        if cond.shape != (batch,) or not jnp.issubdtype(cond.dtype, jnp.integer):
            raise ValueError(f"cond must be int class indices of shape ({batch},) in "
                             f"[0, {self.num_classes}], got {cond.dtype}{cond.shape}")
        return emb + self.class_table(cond)


def check_inputs(x: Array, c_noise: Array, data_shape: tuple[int, ...]) -> Array:
    """Validates x: (B, *data_shape) (e.g. (B, H, W, C) or (B, L, C)) and returns c_noise as
    (B,) float32."""
    if x.ndim != len(data_shape) + 1 or tuple(x.shape[1:]) != tuple(data_shape):
        raise ValueError(f"x must have shape (B, {', '.join(map(str, data_shape))}), "
                         f"got {tuple(x.shape)}")
    c_noise = jnp.asarray(c_noise, jnp.float32)
    if c_noise.ndim > 1 or (c_noise.ndim == 1 and c_noise.shape[0] != x.shape[0]):
        raise ValueError(f"c_noise must have shape () or ({x.shape[0]},), got {c_noise.shape}")
    return jnp.broadcast_to(c_noise, (x.shape[0],))

"""Classifier-free guidance as a Denoiser -> Denoiser transform (Ho & Salimans 2022).

    guided = uncond + s (cond - uncond)

with s = 1 the conditional model and s = 0 the unconditional one (jaxdiff's convention; Meng et
al.'s w is s - 1, DiMR's g is s - 1).  It is computed as the exact two-point interpolation
``(1 - s) uncond + s cond``, which returns the conditional (s = 1) and unconditional (s = 0)
predictions bit-for-bit on every channel.  Guiding the x0-prediction is the same as guiding eps
or the score: at fixed (x, t) they are affine in x0 with branch-independent coefficients and the
weights sum to one.

Both branches run in ONE batched denoiser call (batch 2B).  The scale is a pytree leaf (traced),
per-example scales of shape (B,) are allowed, and an optional guidance interval applies guidance
only for t in (t_lo, t_hi] (Kynkäänniemi et al. 2024, "Applying guidance in a limited interval"),
using the conditional model elsewhere.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from jaxdiff.denoiser import DenoiserBase, batch_times, check_cond_batch

Array = jax.Array


def null_like(cond: Any, null: Any) -> Any:
    """The unconditional counterpart of ``cond``: ``null`` broadcast leaf-by-leaf to cond.

    ``null`` is a class token (scalar) for class-index conditions, or a pytree with the structure
    of ``cond`` whose leaves broadcast to cond's leaves (e.g. a zero vector of shape (D,)).
    """
    return jax.tree_util.tree_map(
        lambda c, n: jnp.broadcast_to(jnp.asarray(n, c.dtype), c.shape), cond, null)


def _per_example(v: Array, x: Array) -> Array:
    v = jnp.broadcast_to(jnp.asarray(v, jnp.float32), (x.shape[0],))
    return v.reshape((-1,) + (1,) * (x.ndim - 1))


@dataclasses.dataclass(frozen=True)
class CFG(DenoiserBase):
    """Classifier-free guidance.

    Args:
      inner: a conditional Denoiser that also accepts the null condition.
      scale: () or (B,) guidance scale s (traced).
      null: the null condition (traced): the class token ``num_classes``, or a pytree matching
        cond (e.g. zeros for vector conditions).
      t_lo, t_hi: guidance interval in t (traced); outside it the conditional model is used.
    """

    inner: DenoiserBase
    scale: Any = 1.0
    null: Any = 0
    t_lo: Any = 0.0
    t_hi: Any = 1.0

    @property
    def schedule(self):
        return self.inner.schedule

    def x0(self, x, t, cond=None):
        if cond is None:
            raise ValueError("CFG needs a condition: cond is None")
        b = x.shape[0]
        check_cond_batch(cond, b)
        t = batch_times(t, x)
        both = jax.tree_util.tree_map(lambda c, n: jnp.concatenate([c, n]), cond,
                                      null_like(cond, self.null))
        out = self.inner(jnp.concatenate([x, x]), jnp.concatenate([t, t]), both)
        c, u = out[:b], out[b:]
        inside = (t > self.t_lo) & (t <= self.t_hi)
        s = jnp.where(inside, jnp.broadcast_to(jnp.asarray(self.scale, jnp.float32), (b,)), 1.0)
        s = _per_example(s, x)
        return (1.0 - s) * u + s * c



jax.tree_util.register_dataclass(
    CFG, data_fields=["inner", "scale", "null", "t_lo", "t_hi"], meta_fields=[])

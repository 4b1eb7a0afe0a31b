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

from jaxdiff.cond import check_cond_batch, null_like
from jaxdiff.denoiser import DenoiserBase, batch_times
from jaxdiff.errors import ConfigError
from jaxdiff.guidance.base import Guided, register_guidance

Array = jax.Array


def _per_example(v: Array, x: Array) -> Array:
    v = jnp.broadcast_to(jnp.asarray(v, jnp.float32), (x.shape[0],))
    return v.reshape((-1,) + (1,) * (x.ndim - 1))


@dataclasses.dataclass(frozen=True)
class CFG(Guided):
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


def _cfg_defaults():
    import ml_collections

    return ml_collections.ConfigDict(dict(scale=2.0, t_lo=0.0, t_hi=1.0))


def _check_cfg(section) -> None:
    import math

    for field, low, high in (("scale", None, None), ("t_lo", 0.0, 1.0), ("t_hi", 0.0, 1.0)):
        v = section[field]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ConfigError(f"config.guidance.{field}: must be a number, got {v!r}")
        if low is not None and not low <= v <= high:
            raise ConfigError(f"config.guidance.{field}: must be in [{low}, {high}], got {v!r}")
    if section.t_lo >= section.t_hi:
        raise ConfigError(f"config.guidance.t_lo: guidance interval needs t_lo < t_hi, got "
                          f"({section.t_lo}, {section.t_hi})")


@register_guidance("cfg", defaults=_cfg_defaults, check=_check_cfg,
                   evals_per_call=lambda section: 2 if float(section.scale) != 1.0 else 1)
def build_cfg(inner, section, spec):
    """CFG with the section's scale and interval around a class-conditional model; an
    unconditional model (no classes) is returned unguided."""
    if spec.num_classes == 0:
        return inner
    return CFG(inner, scale=float(section.scale), null=spec.null, t_lo=float(section.t_lo),
               t_hi=float(section.t_hi))

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

from jaxdiff.cond import check_cond_batch
from jaxdiff.denoiser import DenoiserBase, batch_times
from jaxdiff.guidance.base import (Guided, check_scale_and_interval,
                                   conditional_and_unconditional, interval_scale,
                                   register_guidance)

Array = jax.Array


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
        check_cond_batch(cond, x.shape[0])
        t = batch_times(t, x)
        c, u = conditional_and_unconditional(self.inner, x, t, cond, self.null)
        s = interval_scale(self.scale, t, self.t_lo, self.t_hi, x)
        return (1.0 - s) * u + s * c


jax.tree_util.register_dataclass(
    CFG, data_fields=["inner", "scale", "null", "t_lo", "t_hi"], meta_fields=[])


def _cfg_defaults():
    import ml_collections

    return ml_collections.ConfigDict(dict(scale=2.0, t_lo=0.0, t_hi=1.0))


@register_guidance("cfg", defaults=_cfg_defaults, check=check_scale_and_interval,
                   evals_per_call=lambda section: 2 if float(section.scale) != 1.0 else 1)
def build_cfg(inner, section, spec):
    """CFG with the section's scale and interval around a class-conditional model; an
    unconditional model (no classes) is returned unguided."""
    if spec.num_classes == 0:
        return inner
    return CFG(inner, scale=float(section.scale), null=spec.null, t_lo=float(section.t_lo),
               t_hi=float(section.t_hi))

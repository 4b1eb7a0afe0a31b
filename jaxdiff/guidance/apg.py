"""Adaptive projected guidance, APG (Sadat et al., 2024, "Eliminating oversaturation and
artifacts of high guidance scales in diffusion models", arXiv 2410.02416), as a Denoiser ->
Denoiser transform on the x0-prediction.

With D_c, D_u the conditional and unconditional x0-predictions (one batched call, as CFG):

    diff   = D_c - D_u                                     the CFG update
    diff  <- diff * min(1, r / ||diff||)                   norm threshold r (r = 0: off)
    par    = (<diff, D_c> / <D_c, D_c>) D_c                projection on the conditional
    orth   = diff - par                                    prediction, per example, over all
                                                           non-batch axes
    guided = D_c + (s - 1) (orth + eta par)

s = 1 returns D_c bit-for-bit; eta = 1 with r = 0 (or r = inf) is CFG at the same s up to float
rounding (orth + par = diff); eta = 0 (the default of public implementations of the paper)
drops the parallel part, which the paper identifies as what oversaturates at high s.  The
paper works on the denoised (x0) prediction, as here.

Momentum (the paper's Sec. 4.3, with beta < 0): before the norm threshold the update is
replaced by a running sum that remembers the previous updates with a negative weight,

    m     <- diff + beta m,     diff <- m                   (m = 0 before the first evaluation)

which pushes against the direction guidance has already moved the sample in.  m is state
carried from one evaluation to the next within a solve, so APG with momentum is a stateful
Denoiser (``jaxdiff.denoiser``): the samplers' driver carries m through every evaluation (a
two-evaluation Heun step advances it twice, as in the public implementations, which update
their buffer once per guided prediction) and across a split solve's segments.  m has the
shape of x and is per example.  Outside the guidance interval m is left unchanged.  With
``momentum=True`` and beta = 0 the result is APG without momentum bit for bit; called as a
pure function (e.g. wrapped in another transform or by a search) it raises.

Shapes: x (B, ...), t () or (B,), cond a pytree with leading dimension B; scale () or (B,),
eta, r and beta scalars, all traced.  Guidance applies for t in (t_lo, t_hi] as in CFG, the
conditional model elsewhere.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from jaxdiff.cond import check_cond_batch
from jaxdiff.denoiser import DenoiserBase, batch_times
from jaxdiff.guidance.base import (Guided, check_scale_and_interval,
                                   conditional_and_unconditional, in_interval, interval_scale,
                                   register_guidance)

Array = jax.Array


def project(v: Array, onto: Array) -> tuple[Array, Array]:
    """(parallel, orthogonal) parts of v (B, ...) w.r.t. ``onto`` (B, ...), per example over all
    non-batch axes; an all-zero ``onto`` has no parallel part."""
    axes = tuple(range(1, v.ndim))
    dot = jnp.sum(v * onto, axis=axes, keepdims=True)
    sq = jnp.sum(onto * onto, axis=axes, keepdims=True)
    coef = jnp.where(sq > 0, dot / jnp.where(sq > 0, sq, 1.0), 0.0)
    par = coef * onto
    return par, v - par


@dataclasses.dataclass(frozen=True)
class APG(Guided):
    """Adaptive projected guidance, with or without momentum.

    Args:
      inner: a conditional Denoiser that also accepts the null condition.
      scale: () or (B,) guidance scale s (traced), CFG's convention (1: conditional).
      eta: weight of the update's part parallel to D_c (traced); 1 is CFG.
      norm_threshold: r, the largest norm of the update per example (traced); 0 or inf: no
        rescaling.
      null: the null condition (traced), as for CFG.
      t_lo, t_hi: guidance interval in t (traced).
      beta: the momentum weight (traced; the paper's experiments use negative values).
      momentum: static; True makes APG stateful, carrying the running update m (module
        docstring); False ignores beta.
    """

    inner: DenoiserBase
    scale: Any = 2.0
    eta: Any = 0.0
    norm_threshold: Any = 0.0
    null: Any = 0
    t_lo: Any = 0.0
    t_hi: Any = 1.0
    beta: Any = 0.0
    momentum: bool = False

    @property
    def stateful(self) -> bool:
        return self.momentum

    def init_state(self, shape):
        return jnp.zeros(shape, jnp.float32) if self.momentum else ()

    def x0(self, x, t, cond=None):
        if self.momentum:
            raise ValueError("APG with momentum carries its running update from one evaluation "
                             "to the next: sample it with samplers.sample as the outermost "
                             "denoiser (not wrapped in another transform, not in a search)")
        return self._guide(x, t, cond, None)[0]

    def x0_step(self, x, t, cond, state):
        if not self.momentum:
            return self.x0(x, t, cond), state
        return self._guide(x, t, cond, state)

    def _guide(self, x, t, cond, running):
        """(guided x0 (B, ...), the new running update or None); ``running``: m (B, ...) or
        None (no momentum)."""
        if cond is None:
            raise ValueError("APG needs a condition: cond is None")
        check_cond_batch(cond, x.shape[0])
        t = batch_times(t, x)
        c, u = conditional_and_unconditional(self.inner, x, t, cond, self.null)
        axes = tuple(range(1, x.ndim))
        diff = c - u
        s = interval_scale(self.scale, t, self.t_lo, self.t_hi, x)
        if running is not None:
            inside = in_interval(t, self.t_lo, self.t_hi).reshape(s.shape)
            diff = diff + jnp.asarray(self.beta, jnp.float32) * running
            running = jnp.where(inside, diff, running)
        r = jnp.asarray(self.norm_threshold, jnp.float32)
        norm = jnp.sqrt(jnp.sum(diff * diff, axis=axes, keepdims=True))
        shrink = jnp.where((r > 0) & (norm > r), r / jnp.where(norm > 0, norm, 1.0), 1.0)
        diff = diff * shrink
        par, orth = project(diff, c)
        update = orth + jnp.asarray(self.eta, jnp.float32) * par
        return c + (s - 1.0) * update, running


jax.tree_util.register_dataclass(
    APG, data_fields=["inner", "scale", "eta", "norm_threshold", "null", "t_lo", "t_hi", "beta"],
    meta_fields=["momentum"])


def _defaults():
    import ml_collections

    return ml_collections.ConfigDict(dict(scale=2.0, eta=0.0, norm_threshold=0.0, t_lo=0.0,
                                          t_hi=1.0, momentum=0.0))


def _check(section) -> None:
    from jaxdiff.config import number

    check_scale_and_interval(section)
    number(section.get("eta"), "guidance.eta")
    number(section.get("norm_threshold"), "guidance.norm_threshold", low=0.0)
    number(section.get("momentum"), "guidance.momentum", low=-1.0, low_open=True, high=1.0)


@register_guidance("apg", defaults=_defaults, check=_check,
                   evals_per_call=lambda section: 2, switches=("momentum",))
def build_apg(inner, section, spec):
    """APG around a class-conditional model; an unconditional model is returned unguided (as
    CFG).  ``section.momentum`` is beta; a nonzero one makes the Denoiser stateful."""
    if spec.num_classes == 0:
        return inner
    beta = float(section.get("momentum", 0.0))
    return APG(inner, scale=float(section.scale), eta=float(section.eta),
               norm_threshold=float(section.norm_threshold), null=spec.null,
               t_lo=float(section.t_lo), t_hi=float(section.t_hi), beta=beta,
               momentum=beta != 0.0)

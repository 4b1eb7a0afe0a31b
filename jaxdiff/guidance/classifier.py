"""Classifier guidance as a Denoiser -> Denoiser transform (Dhariwal & Nichol 2021, Sec. 4;
Song et al. 2021, Eq. 14).

    score_guided(x, t, y) = score(x, t, y) + s grad_x log p_phi(y | x_t = x, t)

which on the x0-prediction reads  x0_guided = x0_hat + s (sigma^2 / alpha) grad_x log p_phi
(Tweedie: score = -(x - alpha x0) / sigma^2).  Any differentiable ``log_prob_fn(params, x, t, y)
-> (B,)`` serves: a trained noise-aware classifier or the Gaussian-mixture oracle's exact
posterior.  Examples whose label is the null token (>= ``num_classes``) are not guided.
With s = 1 and the exact p(y | x_t) on the exact unconditional score this samples p(x | y).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from jaxdiff.cond import check_cond_batch
from jaxdiff.denoiser import DenoiserBase, batch_times
from jaxdiff.guidance.base import Guided

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class ClassifierGuidance(Guided):
    """Adds s * grad_x log p(y | x_t) to the inner denoiser's score.

    Args:
      inner: the denoiser to guide (it receives the same cond).
      log_prob_fn: ``log_prob_fn(params, x, t, y) -> (B,)`` log p(y | x_t) (static; hashable).
      params: the classifier's parameters (traced; may be None).
      scale: () or (B,) guidance scale s (traced).
      num_classes: labels >= num_classes (the null token) get no guidance (static).
    """

    inner: DenoiserBase
    log_prob_fn: Callable[[Any, Array, Array, Array], Array]
    params: Any = None
    scale: Any = 1.0
    num_classes: int | None = None

    def x0(self, x, t, cond=None):
        if cond is None:
            raise ValueError("ClassifierGuidance needs class labels: cond is None")
        check_cond_batch(cond, x.shape[0])
        t = batch_times(t, x)
        alpha, sigma = self.schedule.alpha_sigma(t)
        y = jnp.asarray(cond, jnp.int32)
        valid = jnp.ones(y.shape, bool) if self.num_classes is None else y < self.num_classes
        y_cls = y if self.num_classes is None else jnp.minimum(y, self.num_classes - 1)
        grad = jax.grad(lambda z: jnp.sum(self.log_prob_fn(self.params, z, t, y_cls)))(x)
        s = jnp.broadcast_to(jnp.asarray(self.scale, jnp.float32), y.shape)
        coef = jnp.where(valid, s * sigma**2 / alpha, 0.0).reshape((-1,) + (1,) * (x.ndim - 1))
        grad = jnp.where(valid.reshape(coef.shape), grad, 0.0)
        return self.inner(x, t, cond) + coef * grad


jax.tree_util.register_dataclass(
    ClassifierGuidance, data_fields=["inner", "params", "scale"],
    meta_fields=["log_prob_fn", "num_classes"])

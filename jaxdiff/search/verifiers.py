"""Verifiers for inference-time search (Ma et al., arXiv 2501.09732, Sec. 3.1): a verifier is a
pure batched function ``(x0, cond) -> (B,) scores`` of clean samples x0 (B, ...) and their
condition (a pytree with leading dimension B, or None); higher is better.

  classifier_log_prob(logits_fn, params)   log p(c | x0) of a classifier's softmax: the
                                           "oracle" verifier with the classifier the
                                           evaluation uses, a "supervised" one with any other
  gmm_class_log_prob(gmm)                  the exact class posterior of a Gaussian mixture
  quadratic_reward(anchor, tau)            r(x) = -||x - a||^2 / (2 tau^2), the reward whose
                                           tilted mixture ``GMM.tilt`` gives exactly
  restricted(verifier, dims)               a verifier that sees only some coordinates (Ma et
                                           al.'s verifier-hacking study: a partial view)

``scores_of(verifier, x0, cond)`` calls a verifier and checks its output: shape (B,) and finite,
else a one-line ValueError.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Verifier = Callable[[Array, Any], Array]


def scores_of(verifier: Verifier, x0: Array, cond: Any) -> Array:
    """(B,) float32 scores of ``verifier`` on x0 (B, ...); a wrong shape or a non-finite score
    raises a one-line ValueError (checked on the host when the scores are concrete)."""
    s = jnp.asarray(verifier(x0, cond), jnp.float32)
    if s.shape != (x0.shape[0],):
        raise ValueError(f"verifier: expected scores of shape ({x0.shape[0]},), got {s.shape}")
    if not isinstance(s, jax.core.Tracer) and not bool(jnp.all(jnp.isfinite(s))):
        bad = int(np.sum(~np.isfinite(np.asarray(s))))
        raise ValueError(f"verifier: {bad} of {s.shape[0]} scores are not finite")
    return s


@dataclasses.dataclass(frozen=True)
class classifier_log_prob:
    """log softmax(logits_fn(params, x0))[c] for the condition c (B,) int: the score of the
    target class.  ``logits_fn(params, x0) -> (B, C)``."""

    logits_fn: Callable
    params: Any

    def __call__(self, x0: Array, cond: Array) -> Array:
        logits = self.logits_fn(self.params, x0)
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        return jnp.take_along_axis(logp, jnp.asarray(cond, jnp.int32)[:, None], axis=-1)[:, 0]


def gmm_class_log_prob(gmm) -> classifier_log_prob:
    """The exact clean class posterior log p(c | x0) of a ``jaxdiff.toy.gmm.GMM``."""
    from jaxdiff.toy.gmm import CleanClassifier

    return classifier_log_prob(CleanClassifier(), gmm)


@dataclasses.dataclass(frozen=True)
class quadratic_reward:
    """r(x0) = -||x0 - anchor||^2 / (2 tau^2), per sample (the condition is ignored)."""

    anchor: Any
    tau: float = 1.0

    def __call__(self, x0: Array, cond: Any = None) -> Array:
        d = x0 - jnp.asarray(self.anchor, jnp.float32)
        return -jnp.sum(d.reshape(d.shape[0], -1) ** 2, axis=-1) / (2.0 * self.tau**2)


@dataclasses.dataclass(frozen=True)
class restricted:
    """``verifier`` applied to x0 with every feature outside ``dims`` (indices into the flattened
    example) set to zero: a verifier that sees only part of the data."""

    verifier: Verifier
    dims: Sequence[int]

    def __call__(self, x0: Array, cond: Any = None) -> Array:
        flat = x0.reshape(x0.shape[0], -1)
        keep = jnp.zeros(flat.shape[1], bool).at[jnp.asarray(self.dims)].set(True)
        return self.verifier(jnp.where(keep, flat, 0.0).reshape(x0.shape), cond)


def feature_network_verifier(config) -> Verifier:
    """log p(c | clip(x0, -1, 1)) of the evaluation's feature network (``config.eval``: the
    pinned one where the package ships it, else the one trained on this machine): the
    ``classifier`` verifier of ``config.search``."""
    from jaxdiff.classifier_train import own_feature_space
    from jaxdiff.guidance.elucd import FeatureNetworkLogits

    inner = classifier_log_prob(FeatureNetworkLogits(own_feature_space(config).network.apply),
                                None)
    return lambda x0, cond: inner(jnp.clip(x0, -1.0, 1.0), cond)

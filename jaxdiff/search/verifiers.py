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
  feature_similarity(features_fn, den)     the self-supervised verifier: cosine similarity of
                                           the features of x0 and of the model's x0-prediction
                                           from x0 noised to a low level (one denoiser call)

A verifier that calls the denoiser says how often per scored sample in its ``nfe`` attribute
(``denoiser_calls``); the searches add it to the NFE they report.

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


def denoiser_calls(verifier: Verifier) -> int:
    """Denoiser evaluations ``verifier`` spends per scored sample (its ``nfe`` attribute, 0 when
    it has none: classifiers and analytic rewards do not call the diffusion model)."""
    return int(getattr(verifier, "nfe", 0))


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

    @property
    def nfe(self) -> int:
        return denoiser_calls(self.verifier)


@dataclasses.dataclass(frozen=True)
class feature_similarity:
    """The self-supervised verifier of Ma et al. (Sec. 3.1): the cosine similarity between the
    features of a sample and of the model's x0-prediction at a low noise level,

        score(x0) = cos( phi(D(alpha_t (x0 + sigma eps), t, c)), phi(x0) ),   sigma(t) = sigma,

    high when the model, shown the sample under a little noise, gives back what it shows.  The
    paper takes the x0-prediction of the sampling trajectory itself at its noise level 0.4 (of
    a linear interpolant x = (1 - s) x0 + s eps, i.e. sigma = sigma/alpha = 2/3, the default
    here); a verifier sees only the finished sample, so it noises x0 to that level with one
    noise eps (drawn from ``seed``, shared by every example, so a score is a function of x0
    alone) and spends one denoiser evaluation per scored sample (``nfe = 1``, counted by the
    searches).

    features_fn: images (B, ...) -> (B, F) features (e.g. the evaluation's feature network);
    den: the Denoiser (with its guidance); sigma > 0: the noise level as sigma/alpha.
    """

    features_fn: Callable
    den: Any
    sigma: float = 2.0 / 3.0
    seed: int = 0
    nfe = 1

    def __post_init__(self):
        import math

        if not (isinstance(self.sigma, (int, float)) and math.isfinite(self.sigma)
                and self.sigma > 0):
            raise ValueError(f"verifier: feature_similarity needs a noise level sigma > 0, got "
                             f"{self.sigma!r}")

    def __call__(self, x0: Array, cond: Any = None) -> Array:
        sched = self.den.schedule
        sigma = jnp.float32(self.sigma)
        t = sched.t_from_sigma_ve(sigma)
        eps = jax.random.normal(jax.random.key(self.seed), x0.shape[1:], jnp.float32)
        pred = self.den(sched.alpha(t) * (x0 + sigma * eps), t, cond)
        a = self.features_fn(pred).reshape(x0.shape[0], -1).astype(jnp.float32)
        b = self.features_fn(x0).reshape(x0.shape[0], -1).astype(jnp.float32)
        tiny = jnp.float32(1e-12)
        return jnp.sum(a * b, axis=-1) / (jnp.linalg.norm(a, axis=-1) *
                                          jnp.linalg.norm(b, axis=-1) + tiny)


def feature_network_verifier(config, den=None) -> Verifier:
    """The verifier ``config.search.verifier`` names, on the evaluation's feature network
    (``config.eval``: the pinned one where the package ships it, else the one trained on this
    machine), of images clipped to [-1, 1]:

      classifier          log p(c | x0) of its softmax for the sample's class
      feature_similarity  ``feature_similarity`` on its features, with the Denoiser ``den`` at
                          ``config.search.verifier_sigma``
    """
    from jaxdiff.classifier_train import own_feature_space
    from jaxdiff.guidance.elucd import FeatureNetworkLogits

    apply = own_feature_space(config).network.apply
    if config.search.get("verifier", "classifier") == "feature_similarity":
        if den is None:
            raise ValueError("verifier: feature_similarity needs the model's Denoiser")
        return feature_similarity(lambda x: apply(jnp.clip(x, -1.0, 1.0))[0], den,
                                  float(config.search.verifier_sigma))
    inner = classifier_log_prob(FeatureNetworkLogits(apply), None)
    return lambda x0, cond: inner(jnp.clip(x0, -1.0, 1.0), cond)

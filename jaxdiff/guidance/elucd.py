"""EluCD, off-the-shelf classifier guidance (Ma et al., ICLR 2024, "Elucidating the design space
of classifier-guided diffusion generation"), as a Denoiser -> Denoiser transform.

A classifier trained on clean data, f(x0) -> (B, K) logits, guides through the denoiser's
x0-prediction x0_hat:

    log p(y | x0_hat) = tau1 f_y(x0_hat) - logsumexp_k(tau2 f_k(x0_hat))   (temperatures)
    g = grad_{x0_hat} log p(y | x0_hat)                   x0_hat held fixed: no backprop
                                                          through the denoiser
    score_guided = score + s_t g,   s_t = s (1 + gamma sin(pi t))

which on the x0-prediction reads x0_guided = x0_hat + s_t (sigma^2 / alpha) g (Tweedie, as in
``jaxdiff.guidance.classifier``).  This is what the authors' DDPM sampler does: the gradient is
taken w.r.t. a detached x0-prediction and added to the step's mean with the step's variance, as
classifier guidance adds grad_x log p(y | x_t).

Deviation, on the schedule: the DDPM code adds gamma * max_Sigma * sin(pi t / T) to the step's
variance Sigma_t in that update; a Denoiser has no step variance, so the same sine bump
(zero at t = 0 and t = 1, largest mid-way) multiplies the guidance scale instead.  gamma = 0 is
the schedule-free rule exactly.  (The authors' EDM sampler differs again: it feeds a normalised
noisy state to the classifier and normalises the gradient; not implemented here.)

Smoothing: the paper swaps the classifier's ReLUs for Softplus(beta) (beta = 3 DDPM, 5 EDM).
The classifier function is used as given; ``softplus(x, beta)`` is the activation to build it
with.  jaxdiff's own classifier (``jaxdiff.models.classifier``) uses SiLU, already smooth.

Shapes: x (B, ...), t () or (B,), cond (B,) int32 labels; labels >= num_classes (the null token)
are not guided.  ``logits_fn(params, x0)`` must return (B, num_classes); scale, tau1, tau2 and
gamma are traced.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from jaxdiff.cond import check_cond_batch
from jaxdiff.denoiser import DenoiserBase, batch_times
from jaxdiff.errors import ConfigError
from jaxdiff.guidance.base import Guided, NullCondition, register_guidance

Array = jax.Array


def softplus(x: Array, beta: float = 3.0) -> Array:
    """Softplus(beta) = log(1 + exp(beta x)) / beta: the smooth ReLU EluCD swaps in."""
    return jax.nn.softplus(beta * x) / beta


def tempered_log_prob(logits: Array, y: Array, tau1, tau2) -> Array:
    """(B,) tau1 f_y - logsumexp(tau2 f) for logits (B, K) and labels y (B,)."""
    f_y = jnp.take_along_axis(logits, y[:, None], axis=1)[:, 0]
    return tau1 * f_y - jax.nn.logsumexp(tau2 * logits, axis=1)


@dataclasses.dataclass(frozen=True)
class EluCD(Guided):
    """Off-the-shelf (clean) classifier guidance through the x0-prediction.

    Args:
      inner: the conditional Denoiser to guide (it receives the same labels).
      logits_fn: ``logits_fn(params, x0) -> (B, num_classes)`` (static; hashable).
      params: the classifier's parameters (traced; may be None).
      num_classes: K (static); labels >= K are not guided.
      scale: () or (B,) guidance scale s (traced).
      tau1, tau2: temperatures of the target logit and of the normaliser (traced, >= 0).
      gamma: strength of the sine-shaped extra guidance (traced); 0: none.
    """

    inner: DenoiserBase
    logits_fn: Callable[[Any, Array], Array]
    params: Any = None
    num_classes: int = 0
    scale: Any = 1.0
    tau1: Any = 1.0
    tau2: Any = 0.5
    gamma: Any = 0.3

    def x0(self, x, t, cond=None):
        if cond is None:
            raise ValueError("EluCD needs class labels: cond is None")
        b = x.shape[0]
        check_cond_batch(cond, b)
        t = batch_times(t, x)
        y = jnp.asarray(cond, jnp.int32)
        valid = y < self.num_classes
        y_cls = jnp.minimum(y, self.num_classes - 1)
        x0_hat = self.inner(x, t, cond)

        def log_prob(z):
            logits = self.logits_fn(self.params, z)
            if logits.shape != (b, self.num_classes):
                raise ValueError(f"EluCD: the classifier returned logits of shape "
                                 f"{tuple(logits.shape)}, expected ({b}, {self.num_classes}) "
                                 f"(batch, num_classes)")
            return jnp.sum(tempered_log_prob(logits.astype(jnp.float32), y_cls, self.tau1,
                                             self.tau2))

        g = jax.grad(log_prob)(jax.lax.stop_gradient(x0_hat))
        alpha, sigma = self.schedule.alpha_sigma(t)
        s = jnp.broadcast_to(jnp.asarray(self.scale, jnp.float32), (b,))
        s_t = s * (1.0 + self.gamma * jnp.sin(jnp.pi * t))
        coef = jnp.where(valid, s_t * sigma**2 / alpha, 0.0).reshape((-1,) + (1,) * (x.ndim - 1))
        g = jnp.where(valid.reshape(coef.shape), g, 0.0)
        return x0_hat + coef * g


jax.tree_util.register_dataclass(
    EluCD, data_fields=["inner", "params", "scale", "tau1", "tau2", "gamma"],
    meta_fields=["logits_fn", "num_classes"])


# ------------------------------------------------------------------------------------------------
# registration: the classifier from a trained classifier directory
# ------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class FeatureNetworkLogits:
    """``logits_fn`` of a ``jaxdiff.metrics.features.FeatureNetwork`` (its weights are constants
    of its ``apply``): images (B, H, W, C) -> logits (B, K)."""

    apply: Callable

    def __call__(self, params, x0):
        del params
        return self.apply(x0)[1]


def _defaults():
    import ml_collections

    # DDPM ImageNet-128 settings of the paper's code: tau2 = 0.5 tau1, gamma = 0.3, s = 1.
    return ml_collections.ConfigDict(dict(scale=1.0, tau1=1.0, tau2=0.5, gamma=0.3,
                                          classifier_dir="", unconditional=False))


def _check(section) -> None:
    from jaxdiff.config import boolean, number, path_string

    number(section.get("scale"), "guidance.scale")
    number(section.get("tau1"), "guidance.tau1", low=0.0)
    number(section.get("tau2"), "guidance.tau2", low=0.0)
    number(section.get("gamma"), "guidance.gamma")
    path_string(section.get("classifier_dir"), "guidance.classifier_dir")
    boolean(section.get("unconditional"), "guidance.unconditional")


def load_classifier(section, spec):
    """(logits_fn, params, num_classes) of the clean classifier named by ``section``.

    A spec with a ``load_classifier(path)`` method (a host program, or a test) supplies it;
    otherwise ``classifier_dir`` is loaded with its checksum verified, and without one the
    evaluation's own feature network (``jaxdiff.classifier_train.own_feature_space``: the pinned
    network the package ships for the dataset, or the one trained on this machine).
    """
    loader = getattr(spec, "load_classifier", None)
    if callable(loader):
        return loader(section.classifier_dir)
    from jaxdiff.classifier_train import load_feature_network, own_feature_space

    try:
        net = (load_feature_network(section.classifier_dir) if section.classifier_dir
               else own_feature_space(spec.config).network)
    except FileNotFoundError as e:
        raise ConfigError(f"config.guidance.classifier_dir: {e}") from None
    return FeatureNetworkLogits(net.apply), None, int(net.num_classes)


@register_guidance("elucd", defaults=_defaults, check=_check,
                   evals_per_call=lambda section: 1)
def build_elucd(inner, section, spec):
    """EluCD around a class-conditional model with the section's classifier; ``unconditional``:
    guide the model's unconditional prediction (null condition) towards the label.  An
    unconditional run is returned unguided (there are no labels to guide to)."""
    if spec.num_classes == 0:
        return inner
    logits_fn, params, k = load_classifier(section, spec)
    if int(k) != int(spec.num_classes):
        raise ConfigError(f"config.guidance.classifier_dir: the classifier has {k} classes, "
                          f"the run has {spec.num_classes}")
    if section.unconditional:
        inner = NullCondition(inner, int(spec.null))
    return EluCD(inner, logits_fn, params, num_classes=int(spec.num_classes),
                 scale=float(section.scale), tau1=float(section.tau1), tau2=float(section.tau2),
                 gamma=float(section.gamma))

"""DeeDiff: Dynamic Uncertainty-Aware Early Exiting for Accelerating Diffusion Model Generation
(Tang et al. 2023, arXiv 2309.17074): the joint loss of the backbone, its exit heads and their
uncertainty heads (``config.objective.name = 'deediff'``, with ``config.model.exit_heads``).

On the batch of ``denoising`` (same times, noise, condition dropout and weighting w), with g_i
the exit prediction after stage i (i < N - 1), F the network's output, F* its target and u_i the
exit's uncertainty (``jaxdiff.models.early_exit``):

  L_simple = w ||F - F*||^2                                                  (the denoising loss)
  u_hat_i  = tanh(mean |g_i - F*|)                 pseudo uncertainty target (Eq. 6), no gradient
  L_u      = sum_i (u_i - u_hat_i)^2                                                     (Eq. 7)
  L_UAL    = sum_{i < N-1} (1 - u_i) w ||g_i - F*||^2    uncertainty-aware layer-wise loss (Eq. 8)
  L        = L_simple + lambda L_u + beta L_UAL                                          (Eq. 9)

averaged over the batch, ||.||^2 the mean over an example's elements.  The paper writes the
regression in eps; here it is the network's own target F* (eps, x0, v or EDM's F), so the loss
is the run's denoising loss at every exit.  The weight (1 - u_i) of L_UAL is held constant in
the gradient (stop-gradient): left free, L_UAL would be lowered by raising u_i, which fights
L_u; the uncertainty heads learn from L_u alone.

``uncertainty_space`` chooses what u_i learns to predict.  'output' (default) is Eq. 6 on the
network's output as above.  'x0' measures the exit's error on the data prediction the sampler
consumes instead: u_hat_i = tanh(mean |x0(g_i) - x0|), x0(.) the parameterization's map from a
network output at (x_t, t) to x0_hat.  For an eps network x0(g) - x0 = -(sigma/alpha)(g - eps),
so an eps error that Eq. 6 calls small at high noise is large in x0: the exits move from the
noisy steps, where an error decides the sample's content, to the clean ones, where x0_hat
barely depends on the network (a jaxdiff option, not the paper's).  Measured on the digits
DiT (docs/methods/deediff_digits.md): its exits do sit at the clean end and cost no quality,
but they saved no wall time there, and the full network trained this way sampled far worse
(FD 56 against 21) at the same held-out denoising loss: its x0 prediction was 2.5-4x worse at
t >= 0.98 only (equal from t = 0.9 down), where the uniform-t grid's first step starts; how
the x0 target (u_hat = 1 throughout the noisy end) does that through the shared features is
not known, so the paper's 'output' stays the default.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from jaxdiff.errors import ConfigError
from jaxdiff.models.early_exit import all_exits
from jaxdiff.objectives.base import Objective, register_objective
from jaxdiff.objectives.denoising import mean_squared_error, noised_batch, noising_kwargs

Array = jax.Array


def deediff_defaults() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        uncertainty_weight=1.0,   # lambda of Eq. 9 (L_u)
        layer_weight=1.0,         # beta of Eq. 9 (L_UAL)
        uncertainty_space="output",  # what u_i predicts the error of: 'output' (Eq. 6) | 'x0'
    ))


UNCERTAINTY_SPACES = ("output", "x0")


def check_deediff(section, config) -> None:
    from jaxdiff.config import number

    for field in ("uncertainty_weight", "layer_weight"):
        number(section[field], f"objective.{field}", low=0.0)
    if section.get("uncertainty_space", "output") not in UNCERTAINTY_SPACES:
        raise ConfigError(f"config.objective.uncertainty_space: must be one of "
                          f"{UNCERTAINTY_SPACES}, got {section.get('uncertainty_space')!r}")
    if not config.model.get("exit_heads", False):
        raise ConfigError("config.objective.name='deediff' needs a network with exit heads: "
                          "set config.model.exit_heads=True (networks 'dit', 'unet', 'unet1d')")


def deediff_terms(net, nb: dict, dropout_key=None, to_x0=None) -> dict:
    """The per-example terms of Eq. 9 for a staged network ``net`` on a ``noised_batch`` with
    the network inputs added: ``nb['x_in']`` (B, ...) and ``nb['c_noise']`` (B,).  ``to_x0``:
    None for Eq. 6's target on the network output, or a map from a network output (B, ...) to
    its x0_hat for the 'x0' uncertainty space (module docstring).

    Returns dict(simple=(B,), uncertainty=(B,) L_u, layerwise=(B,) L_UAL, u=(N-1, B),
    u_hat=(N-1, B), exit_mse=(N-1, B) unweighted mean squared error of each exit).
    """
    preds, u = all_exits(net, nb["x_in"], nb["c_noise"], nb["cond"], dropout_key)
    target, weight = nb["target"], nb["weight"]
    se = jax.vmap(lambda p: mean_squared_error(p, target))(preds)            # (N, B)
    space = (lambda a: a) if to_x0 is None else to_x0
    ref = space(target)
    abs_err = jax.vmap(lambda p: jnp.mean(jnp.abs(space(p) - ref),
                                          axis=tuple(range(1, target.ndim))))(preds[:-1])
    u_hat = jax.lax.stop_gradient(jnp.tanh(abs_err))
    return dict(simple=weight * se[-1],
                uncertainty=jnp.sum((u - u_hat) ** 2, axis=0),
                layerwise=jnp.sum((1.0 - jax.lax.stop_gradient(u)) * weight * se[:-1], axis=0),
                u=u, u_hat=u_hat, exit_mse=se[:-1])


class DeeDiffObjective(Objective):
    """L_simple + lambda L_u + beta L_UAL on the run's batch (see the module docstring)."""

    def __init__(self, spec, config):
        self.spec = spec
        self.noising = noising_kwargs(spec, config)
        self.dropout = float(config.model.dropout) > 0
        self.lam = float(config.objective.uncertainty_weight)
        self.beta = float(config.objective.layer_weight)
        self.x0_space = config.objective.get("uncertainty_space", "output") == "x0"

    def loss(self, params, extra, batch, key, step):
        del extra, step
        denoiser = self.spec.denoiser(params)
        nb = noised_batch(denoiser, batch["x"], self.spec.condition(batch["label"]), key,
                          **self.noising)
        nb["x_in"], nb["c_noise"] = denoiser.network_inputs(nb["x_t"], nb["t"])
        net = nnx.merge(self.spec.graphdef, params)
        to_x0 = None
        if self.x0_space:
            alpha, sigma = denoiser.schedule.alpha_sigma(nb["t"])
            to_x0 = lambda out: denoiser.param.to_x0(out, nb["x_t"], alpha, sigma)  # noqa: E731
        terms = deediff_terms(net, nb, nb["key_dropout"] if self.dropout else None, to_x0)
        loss = jnp.mean(terms["simple"] + self.lam * terms["uncertainty"]
                        + self.beta * terms["layerwise"])
        return loss, dict(loss_simple=jnp.mean(terms["simple"]),
                          loss_uncertainty=jnp.mean(terms["uncertainty"]),
                          loss_layerwise=jnp.mean(terms["layerwise"]),
                          mean_uncertainty=jnp.mean(terms["u"]))


register_objective("deediff", defaults=deediff_defaults, check=check_deediff,
                   test_model_overrides=dict(exit_heads=True))(DeeDiffObjective)

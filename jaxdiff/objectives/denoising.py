"""Denoising score matching (Ho et al. 2020; Kingma et al. 2023; Karras et al. 2022): the
``denoising`` objective, with its timestep samplers, condition dropout and weightings.

For x0 ~ data, t ~ p(t), eps ~ N(0, I), x_t = alpha_t x0 + sigma_t eps, the loss is

    L = E[ w(lambda_t) ||x0_hat(x_t, t, c) - x0||^2 ]             (Kingma et al. 2023, Eq. 2)
      = E[ w(lambda_t) c_out(t)^2 ||F(x_t, t, c) - F*||^2 ]

with the weighting w expressed on the x0-space error (``parameterization.loss_weight``) and the
regression done on the network output F against its target F* (numerically stable for every
parameterization).  The squared error is averaged over the non-batch dimensions.

Time samplers:
  uniform    t ~ U[t_min, t_max] of the schedule
  discrete   t = n / T, n ~ U{1..T} (DDPM training on its discrete grid; VPLinear only)
  lognormal  log sigma_ve ~ N(p_mean, p_std^2), mapped to t (EDM, Sec. 5: -1.2, 1.2), clipped to
             the schedule's range

Condition dropout for classifier-free guidance (Ho & Salimans 2022): with probability p_uncond a
class condition is replaced by the null token ``num_classes`` (vector conditions by zeros).

All randomness is per example: example j of the global batch uses fold_in(key, j), so a step's
loss does not depend on how the batch is sharded.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxdiff import parameterization as P
from jaxdiff.cond import drop_condition
from jaxdiff.denoiser import Denoiser, batch_times
from jaxdiff.objectives.base import Objective, register_objective
from jaxdiff.rng import example_keys
from jaxdiff.schedules import Schedule, VPLinear, diffuse

Array = jax.Array
TIME_SAMPLERS = ("uniform", "discrete", "lognormal")


def sample_times(key: Array, schedule: Schedule, kind: str = "uniform", *,
                 p_mean: float = -1.2, p_std: float = 1.2) -> Array:
    """One time in [t_min, t_max] from a single key (vmap it over per-example keys); shape ()."""
    lo, hi = schedule.t_min, schedule.t_max
    if kind == "uniform":
        return jax.random.uniform(key, (), minval=lo, maxval=hi)
    if kind == "discrete":
        if not isinstance(schedule, VPLinear):
            raise ValueError("time sampler 'discrete' needs the vp_linear schedule")
        n = jax.random.randint(key, (), 1, schedule.num_steps + 1)
        return n.astype(jnp.float32) / schedule.num_steps
    if kind == "lognormal":
        log_sigma = p_mean + p_std * jax.random.normal(key, ())
        t = schedule.t_from_sigma_ve(jnp.exp(log_sigma))
        return jnp.clip(t, lo, hi)
    raise ValueError(f"unknown time sampler {kind!r}; choose one of {TIME_SAMPLERS}")


def noised_batch(denoiser: Denoiser, x0: Array, cond: Any, key: Array, *,
                 indices: Array | None = None, weighting: str = "native",
                 time_sampler: str = "uniform", p_uncond: float = 0.0, null: Any = None,
                 min_snr_gamma: float = 5.0, p_mean: float = -1.2,
                 p_std: float = 1.2) -> dict:
    """One training batch's noising: what every denoising-type loss regresses.

    Args: as ``denoising_loss``.
    Returns dict(
      x_t=(B, ...) noisy inputs, t=(B,) times, cond=the condition after CFG dropout,
      target=(B, ...) the network-output target F*, weight=(B,) per-example weight on
      mean((F - F*)^2) (the x0-space weighting times c_out^2), key_dropout=the network's
      dropout key).
    """
    b = x0.shape[0]
    if indices is None:
        indices = jnp.arange(b)
    key_examples, key_dropout = jax.random.split(key)
    keys = example_keys(key_examples, indices)
    parts = jax.vmap(lambda k: jax.random.split(k, 3))(keys)               # (B, 3) keys
    sched, param = denoiser.schedule, denoiser.param
    t = jax.vmap(lambda k: sample_times(k, sched, time_sampler, p_mean=p_mean,
                                        p_std=p_std))(parts[:, 0])
    eps = jax.vmap(lambda k: jax.random.normal(k, x0.shape[1:], x0.dtype))(parts[:, 1])
    if p_uncond > 0 and cond is not None:
        if null is None:
            raise ValueError("p_uncond > 0 needs the null condition")
        keep = jax.vmap(lambda k: jax.random.uniform(k, ()) >= p_uncond)(parts[:, 2])
        cond = drop_condition(keep, cond, null)
    t = batch_times(t, x0)
    alpha, sigma = sched.alpha_sigma(t)
    x_t = diffuse(sched, x0, t, eps)
    target = param.target(x0, eps, alpha, sigma)
    _, _, c_out = param.coefficients(alpha, sigma)
    weight = P.loss_weight(weighting, sched.logsnr(t), param, gamma=min_snr_gamma) * c_out**2
    return dict(x_t=x_t, t=t, cond=cond, target=target, weight=weight,
                key_dropout=key_dropout)


def mean_squared_error(out: Array, target: Array) -> Array:
    """(B,) mean over the non-batch dimensions of (out - target)^2 (out cast to float32)."""
    return jnp.mean((out.astype(jnp.float32) - target) ** 2, axis=tuple(range(1, target.ndim)))


def denoising_loss(denoiser: Denoiser, x0: Array, cond: Any, key: Array, *,
                   indices: Array | None = None, weighting: str = "native",
                   time_sampler: str = "uniform", p_uncond: float = 0.0, null: Any = None,
                   min_snr_gamma: float = 5.0, p_mean: float = -1.2, p_std: float = 1.2,
                   dropout: bool = False) -> tuple[Array, dict]:
    """Mean weighted denoising loss over the batch.

    Args:
      denoiser: a network Denoiser (its ``network_output`` is regressed).
      x0: (B, ...) clean data.
      cond: condition pytree with leading dim B, or None.
      key: the step's PRNG key; example j draws from fold_in(key, indices[j]).
      indices: (B,) global example indices (default arange(B)).
      weighting: see ``parameterization.WEIGHTINGS``.
      time_sampler: 'uniform' | 'discrete' | 'lognormal'.
      p_uncond: probability of replacing cond by ``null`` (CFG training).
      null: the null condition (class token ``num_classes`` or a pytree); needed if p_uncond > 0.
      dropout: pass a per-step dropout key to the network.

    Returns:
      (scalar loss, {'loss_per_example': (B,), 't': (B,)}).
    """
    nb = noised_batch(denoiser, x0, cond, key, indices=indices, weighting=weighting,
                      time_sampler=time_sampler, p_uncond=p_uncond, null=null,
                      min_snr_gamma=min_snr_gamma, p_mean=p_mean, p_std=p_std)
    net_kwargs = {"dropout_key": nb["key_dropout"]} if dropout else {}
    out = denoiser.network_output(nb["x_t"], nb["t"], nb["cond"], **net_kwargs)
    per_example = nb["weight"] * mean_squared_error(out, nb["target"])
    return jnp.mean(per_example), {"loss_per_example": per_example, "t": nb["t"]}


def noising_kwargs(spec, config) -> dict:
    """``noised_batch`` keywords from ``config.diffusion`` (weighting, time sampler, CFG
    dropout) and the run's null condition."""
    d = config.diffusion
    return dict(weighting=d.weighting, time_sampler=d.time_sampler, p_uncond=float(d.p_uncond),
                null=spec.null, min_snr_gamma=float(d.min_snr_gamma), p_mean=float(d.p_mean),
                p_std=float(d.p_std))


class DenoisingObjective(Objective):
    """``config.objective.name = 'denoising'``: ``denoising_loss`` with the fields of
    ``config.diffusion`` (weighting, time sampler, CFG dropout ``p_uncond``) on the run's
    Denoiser; no extra state."""

    def __init__(self, spec, config):
        self.spec = spec
        self.kwargs = dict(noising_kwargs(spec, config), dropout=float(config.model.dropout) > 0)

    def loss(self, params, extra, batch, key, step):
        del extra, step
        loss, _ = denoising_loss(self.spec.denoiser(params), batch["x"],
                                 self.spec.condition(batch["label"]), key, **self.kwargs)
        return loss, {}


register_objective("denoising")(DenoisingObjective)

"""The Denoiser: the one boundary every algorithm in jaxdiff consumes.

A denoiser is a pure function ``(x, t, cond) -> x0_hat``:

  x:    (B, ...) noisy state x_t = alpha(t) x0 + sigma(t) eps, float32
  t:    () or (B,) continuous time in [0, 1]
  cond: None, or a pytree whose leaves have leading dimension B (class indices of shape (B,),
        int32, with index ``num_classes`` the unconditional token; or condition vectors)

and it exposes ``eps`` / ``score`` / ``v`` views computed from x0_hat (Tweedie).  Denoisers are
pytrees: network parameters and guidance scales are leaves (traced under jit, so changing them
never recompiles) while the network definition, the schedule and the parameterization are static.

Samplers, guidance transforms, search, classifiers and distillation take a Denoiser, never a raw
network.  Guidance methods are Denoiser -> Denoiser transforms (see ``jaxdiff.guidance``).

Stateful evaluation.  A few guidance rules keep a running quantity from one evaluation to the
next within a solve (APG's momentum).  Such a Denoiser says ``stateful`` and implements
``init_state(shape)`` and ``x0_step(x, t, cond, state) -> (x0_hat, state)``; the samplers'
driver carries the state through every evaluation of a solve (``samplers.base``), including
across the segments of a split solve.  Called as a pure function it raises, so it is never
silently run without its state.  Every other Denoiser is pure: ``stateful`` is False and
``x0_step`` returns the state it was given.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from jaxdiff import parameterization as P
from jaxdiff.cond import check_cond_batch  # noqa: F401  (re-exported for callers)
from jaxdiff.schedules import Schedule

Array = jax.Array
ApplyFn = Callable[[Any, Array, Array, Any], Array]


def batch_times(t: Array, x: Array) -> Array:
    """Broadcasts t of shape () or (B,) to (B,) float32 for x of shape (B, ...)."""
    t = jnp.asarray(t, jnp.float32)
    if t.ndim > 1 or (t.ndim == 1 and t.shape[0] not in (1, x.shape[0])):
        raise ValueError(f"t must be a scalar or have shape ({x.shape[0]},), got {t.shape}")
    return jnp.broadcast_to(t, (x.shape[0],))


class DenoiserBase:
    """Interface: subclasses implement ``x0(x, t, cond)`` and the ``schedule`` property."""

    @property
    def schedule(self) -> Schedule:
        raise NotImplementedError

    def x0(self, x: Array, t: Array, cond: Any = None) -> Array:
        raise NotImplementedError

    def __call__(self, x: Array, t: Array, cond: Any = None) -> Array:
        return self.x0(x, t, cond)

    @property
    def stateful(self) -> bool:
        """Whether evaluations read and advance a state carried through a solve."""
        return False

    def init_state(self, shape: tuple[int, ...]) -> Any:
        """The state before a solve's first evaluation, for states x of ``shape`` (B, ...)."""
        return ()

    def x0_step(self, x: Array, t: Array, cond: Any, state: Any) -> tuple[Array, Any]:
        """One evaluation that reads ``state`` and returns (x0_hat, the advanced state)."""
        return self.x0(x, t, cond), state

    def eps(self, x: Array, t: Array, cond: Any = None) -> Array:
        """eps_hat = (x - alpha x0_hat) / sigma."""
        t = batch_times(t, x)
        alpha, sigma = self.schedule.alpha_sigma(t)
        return P.eps_from_x0(x, self.x0(x, t, cond), alpha, sigma)

    def score(self, x: Array, t: Array, cond: Any = None) -> Array:
        """grad_x log p_t(x | cond) = -(x - alpha x0_hat) / sigma^2."""
        t = batch_times(t, x)
        alpha, sigma = self.schedule.alpha_sigma(t)
        return P.score_from_x0(x, self.x0(x, t, cond), alpha, sigma)

    def v(self, x: Array, t: Array, cond: Any = None) -> Array:
        t = batch_times(t, x)
        alpha, sigma = self.schedule.alpha_sigma(t)
        x0 = self.x0(x, t, cond)
        return P.v_from_x0_eps(x0, P.eps_from_x0(x, x0, alpha, sigma), alpha, sigma)


@dataclasses.dataclass(frozen=True)
class Denoiser(DenoiserBase):
    """A network plus schedule plus parameterization, as a pure pytree callable.

    Args:
      apply_fn: ``apply_fn(params, x_in, c_noise, cond) -> F``, the raw network, with
        x_in = c_in x / alpha of shape (B, ...) and c_noise of shape (B,).  Must be hashable
        (a module-level function, or a frozen dataclass / ``functools.partial`` of one).
      params: the network's parameters (any pytree; the traced part).
      schedule_: the noise process.
      param: how F maps to x0_hat.
    """

    apply_fn: ApplyFn
    params: Any
    schedule_: Schedule
    param: P.Parameterization = P.Parameterization()

    @property
    def schedule(self) -> Schedule:
        return self.schedule_

    def network_inputs(self, x: Array, t: Array) -> tuple[Array, Array]:
        """(x_in, c_noise): the preconditioned input (B, ...) and noise input (B,) that the raw
        network sees at (x, t)."""
        t = batch_times(t, x)
        alpha, sigma = self.schedule_.alpha_sigma(t)
        return self.param.network_input(x, alpha, sigma), self.param.noise_input(t, alpha, sigma)

    def network_output(self, x: Array, t: Array, cond: Any = None, **net_kwargs) -> Array:
        """F evaluated on the preconditioned inputs; ``net_kwargs`` (e.g. ``dropout_key``) are
        passed to ``apply_fn``."""
        check_cond_batch(cond, x.shape[0])
        x_in, c_noise = self.network_inputs(x, t)
        return self.apply_fn(self.params, x_in, c_noise, cond, **net_kwargs)

    def x0(self, x: Array, t: Array, cond: Any = None) -> Array:
        t = batch_times(t, x)
        alpha, sigma = self.schedule_.alpha_sigma(t)
        out = self.network_output(x, t, cond)
        return self.param.to_x0(out.astype(jnp.float32), x, alpha, sigma)


jax.tree_util.register_dataclass(
    Denoiser, data_fields=["params"], meta_fields=["apply_fn", "schedule_", "param"])


@dataclasses.dataclass(frozen=True)
class NNXApply:
    """``apply_fn`` for a Flax NNX network split as ``graphdef, state = nnx.split(net)``.

    Calls ``nnx.merge(graphdef, state)(x_in, c_noise, cond, dropout_key=...)``; dropout is
    active only when a ``dropout_key`` is given (training).
    """

    graphdef: Any

    def __call__(self, params, x_in, c_noise, cond, dropout_key=None):
        from flax import nnx  # local: keep the core importable without flax

        return nnx.merge(self.graphdef, params)(x_in, c_noise, cond, dropout_key=dropout_key)


def from_nnx(graphdef, params, schedule: Schedule, param: P.Parameterization) -> Denoiser:
    """A Denoiser from an NNX network split as ``graphdef, params = nnx.split(net)``."""
    return Denoiser(apply_fn=NNXApply(graphdef), params=params, schedule_=schedule, param=param)

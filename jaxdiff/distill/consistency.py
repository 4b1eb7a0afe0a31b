"""Consistency Models (Song, Dhariwal, Chen & Sutskever, ICML 2023): consistency distillation
(CD) from a teacher's probability-flow ODE and consistency training (CT) from data alone, and
the consistency function they train.

The consistency function.  On the scaled state y = x / alpha at noise level sigma = sigma_ve
(``samplers.base``), Song et al. (Sec. 3, their Appendix C on EDM) write

    f(y, sigma) = c_skip(sigma) y + c_out(sigma) F(y, sigma),
    c_skip = sd^2 / ((sigma - sigma_min)^2 + sd^2),
    c_out  = sd (sigma - sigma_min) / sqrt(sd^2 + sigma^2)

so f(y, sigma_min) = y exactly (the boundary condition).  With EDM's D = c_skip^edm y +
c_out^edm F this is, for any x0-estimate D of any parameterization,

    f = c_skip y + ((sigma - sigma_min) / sigma) (D - c_skip^edm y),
    c_skip^edm = sd^2 / (sigma^2 + sd^2),

which is ``ConsistencyFunction``: exactly Song et al.'s on an EDM network, the same function of
the x0-estimate on any other.  sigma_min is the schedule's sigma_ve at ``t_min``.

Training (Song et al. Algorithms 2 and 3).  Karras's discretisation sigma_1 = sigma_min < ... <
sigma_N = sigma_max (rho = 7) of the schedule's range; n ~ U{1 .. N-1}; y_n+1 = x + sigma_n+1 z;

    CD:  y^_n = one Heun step of the teacher's ODE from sigma_n+1 to sigma_n
    CT:  y^_n = x + sigma_n z                          (the same z: no teacher)
    L  = E[ d(f_theta(y_n+1, sigma_n+1), f_theta-(y^_n, sigma_n)) ]

with theta- the stop-gradient target network, an EMA theta- <- mu theta- + (1 - mu) theta
updated after every step (the objective's extra state), and d the squared L2 distance (mean over
dimensions) or the pseudo-Huber distance sqrt(||a - b||^2 + c^2) - c, c = 0.00054 sqrt(dim) (Song
& Dhariwal 2023).  CT grows N and mu with the step k of K (Song et al. Appendix C):
N(k) = ceil(sqrt(k / K ((s1 + 1)^2 - s0^2) + s0^2) - 1) + 1, mu(k) = exp(s0 log mu0 / N(k)).

Sampling: ``guidance.name = 'consistency'`` wraps the model in its consistency function and
``sample.sampler = 'consistency'`` is multistep consistency sampling (``samplers.consistency``):
1 step is one evaluation.  CD runs by ``--mode=distill`` (the student starts from the teacher),
CT by ``--mode=train``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from jaxdiff.config import choice, number
from jaxdiff.denoiser import DenoiserBase, batch_times
from jaxdiff.distill.teacher import init_from_teacher, load_teacher, teacher_params_like
from jaxdiff.guidance.base import Guided, register_guidance
from jaxdiff.guidance.cfg import CFG
from jaxdiff.objectives.base import Objective, register_objective
from jaxdiff.rng import example_keys
from jaxdiff.schedules import Schedule

Array = jax.Array
DISTANCES = ("l2", "pseudo_huber")
RHO = 7.0


def sigma_min_of(schedule: Schedule) -> float:
    """The consistency function's boundary: sigma_ve at the schedule's ``t_min`` (a Python
    float, also when called while tracing)."""
    return _sigma_ve_at(schedule, schedule.t_min)


def _sigma_ve_at(schedule: Schedule, t: float) -> float:
    with jax.ensure_compile_time_eval():
        return float(schedule.sigma_ve(jnp.float32(t)))


def _bcast(v, x):
    return v.reshape((-1,) + (1,) * (x.ndim - 1))


@dataclasses.dataclass(frozen=True)
class ConsistencyFunction(Guided):
    """f(x, t) of the module docstring around the x0-estimate of ``inner``; x0-shaped output.

    sigma_min: the boundary noise level (``sigma_min_of(schedule)``); sigma_data: sd."""

    inner: DenoiserBase
    sigma_min: float = 0.002
    sigma_data: float = 0.5

    def x0(self, x, t, cond=None):
        t = batch_times(t, x)
        alpha, sigma = self.schedule.alpha_sigma(t)
        s = sigma / alpha
        sd2 = self.sigma_data**2
        skip = sd2 / ((s - self.sigma_min) ** 2 + sd2)
        skip_edm = sd2 / (s**2 + sd2)
        ratio = (s - self.sigma_min) / s
        y = x / _bcast(alpha, x)
        d = self.inner(x, t, cond)
        return _bcast(skip, x) * y + _bcast(ratio, x) * (d - _bcast(skip_edm, x) * y)


jax.tree_util.register_dataclass(ConsistencyFunction, data_fields=["inner"],
                                 meta_fields=["sigma_min", "sigma_data"])


@register_guidance("consistency", defaults=lambda: ml_collections.ConfigDict(),
                   evals_per_call=lambda section: 1)
def build_consistency(inner, section, spec):
    """The run's model as its consistency function (sample it with sampler 'consistency')."""
    del section
    param = getattr(spec, "param", None)
    return ConsistencyFunction(inner, sigma_min=sigma_min_of(inner.schedule),
                               sigma_data=float(param.sigma_data) if param else 0.5)


# ------------------------------------------------------------------------------------------------
# the discretisation and the losses
# ------------------------------------------------------------------------------------------------

def karras_sigma(schedule: Schedule, i: Array, n: Array) -> Array:
    """sigma_i, i = 1 .. n, of Karras's discretisation of [sigma_min, sigma_max] (EDM Eq. 5,
    rho = 7, increasing in i; traced i and n)."""
    lo = sigma_min_of(schedule) ** (1 / RHO)
    hi = _sigma_ve_at(schedule, schedule.t_max) ** (1 / RHO)
    u = (jnp.asarray(i, jnp.float32) - 1.0) / (jnp.asarray(n, jnp.float32) - 1.0)
    return (lo + u * (hi - lo)) ** RHO


def _t_alpha(schedule: Schedule, sigma_ve: Array) -> tuple[Array, Array]:
    t = jnp.clip(schedule.t_from_sigma_ve(sigma_ve), schedule.t_min, schedule.t_max)
    return t, schedule.alpha(t)


def _at(den: DenoiserBase, y: Array, sigma_ve: Array, cond: Any) -> Array:
    """The denoiser's output at the scaled state y (B, ...) and noise level sigma_ve (B,)."""
    t, alpha = _t_alpha(den.schedule, sigma_ve)
    return den(_bcast(alpha, y) * y, t, cond)


def heun_ode_step(teacher: DenoiserBase, y: Array, s: Array, s_next: Array,
                  cond: Any) -> Array:
    """One Heun step of the probability-flow ODE dy/dsigma = (y - D(y)) / sigma from s to
    s_next > 0 (EDM Algorithm 1), per example; no gradient."""
    d = (y - _at(teacher, y, s, cond)) / _bcast(s, y)
    euler = y + _bcast(s_next - s, y) * d
    d2 = (euler - _at(teacher, euler, s_next, cond)) / _bcast(s_next, y)
    return jax.lax.stop_gradient(y + _bcast(s_next - s, y) * 0.5 * (d + d2))


def distance(a: Array, b: Array, kind: str) -> Array:
    """(B,) distance between (B, ...) arrays: mean squared difference, or pseudo-Huber."""
    diff = (a - b).reshape(a.shape[0], -1)
    if kind == "l2":
        return jnp.mean(diff**2, axis=1)
    c = 0.00054 * math.sqrt(diff.shape[1])
    return jnp.sqrt(jnp.sum(diff**2, axis=1) + c**2) - c


def ct_schedule(step: Array, total: int, s0: float, s1: float, mu0: float):
    """(N(k), mu(k)) of consistency training at step k of K = ``total``."""
    k = jnp.asarray(step, jnp.float32)
    n = jnp.ceil(jnp.sqrt(k / total * ((s1 + 1.0) ** 2 - s0**2) + s0**2) - 1.0) + 1.0
    return n.astype(jnp.int32), jnp.exp(s0 * math.log(mu0) / n)


def consistency_loss(student: DenoiserBase, target: DenoiserBase, x0: Array, cond: Any,
                     key: Array, n: Array, *, teacher: DenoiserBase | None, sigma_data: float,
                     distance_kind: str = "l2",
                     indices: Array | None = None) -> tuple[Array, dict]:
    """One batch of the CD loss (``teacher`` given) or the CT loss (``teacher`` None) on N = n
    discretisation points (module docstring).  student / target: the network Denoisers of
    theta and theta- (wrapped here in their consistency functions)."""
    b = x0.shape[0]
    keys = example_keys(key, jnp.arange(b) if indices is None else indices)
    parts = jax.vmap(lambda k: jax.random.split(k, 2))(keys)
    i = jax.vmap(lambda k: jax.random.randint(k, (), 1, n))(parts[:, 0])   # 1 .. N-1
    z = jax.vmap(lambda k: jax.random.normal(k, x0.shape[1:], x0.dtype))(parts[:, 1])
    sched = student.schedule
    s_lo, s_hi = karras_sigma(sched, i, n), karras_sigma(sched, i + 1, n)
    y_hi = x0 + _bcast(s_hi, x0) * z
    if teacher is None:
        y_lo = x0 + _bcast(s_lo, x0) * z
    else:
        y_lo = heun_ode_step(teacher, y_hi, s_hi, s_lo, cond)
    s_min = sigma_min_of(sched)
    f = ConsistencyFunction(student, sigma_min=s_min, sigma_data=sigma_data)
    f_target = ConsistencyFunction(target, sigma_min=s_min, sigma_data=sigma_data)
    pred = _at(f, y_hi, s_hi, cond)
    goal = jax.lax.stop_gradient(_at(f_target, y_lo, s_lo, cond))
    per_example = distance(pred, goal, distance_kind)
    return jnp.mean(per_example), {"n_points": jnp.asarray(n, jnp.float32)}


# ------------------------------------------------------------------------------------------------
# the objectives
# ------------------------------------------------------------------------------------------------

class _Consistency(Objective):
    """Shared by CD and CT: the EMA target network in ``extra['target']``."""

    teacher = None

    def __init__(self, spec, config):
        self.spec = spec
        self.section = config.objective
        self.total = int(config.train.num_steps)

    def points_and_decay(self, step):
        raise NotImplementedError

    def init(self, params, key):
        del key
        extra = dict(target=jax.tree.map(jnp.copy, params))
        if self.teacher is not None:
            extra["teacher"] = teacher_params_like(params, self.teacher.params)
        return extra

    def _teacher(self, extra):
        if self.teacher is None:
            return None
        teacher = dataclasses.replace(self.teacher, params=extra["teacher"])
        scale = float(self.section.get("teacher_scale", 1.0))
        if scale != 1.0 and self.spec.num_classes > 0:
            return CFG(teacher, scale=scale, null=self.spec.null)
        return teacher

    def loss(self, params, extra, batch, key, step):
        n, _ = self.points_and_decay(step)
        den = self.spec.denoiser(params)
        target = self.spec.denoiser(extra["target"])
        return consistency_loss(den, target, batch["x"], self.spec.condition(batch["label"]),
                                key, n, teacher=self._teacher(extra),
                                sigma_data=float(self.spec.param.sigma_data),
                                distance_kind=str(self.section.distance),
                                indices=batch.get("index"))

    def update_extra(self, extra, params, batch, key, step):
        """theta- <- mu theta- + (1 - mu) theta, after the step's update."""
        del batch, key
        _, mu = self.points_and_decay(step)
        target = jax.tree.map(lambda t, p: mu * t + (1.0 - mu) * jax.lax.stop_gradient(p),
                              extra["target"], params)
        return dict(extra, target=target), {"target_decay": mu}


class ConsistencyDistillation(_Consistency):
    """``config.objective.name = 'consistency_distill'``: CD from the teacher of
    ``config.distill`` (the student starts from it); N and mu fixed."""

    def __init__(self, spec, config):
        super().__init__(spec, config)
        self.teacher = load_teacher(spec, config)

    def initial_params(self, params):
        return init_from_teacher(params, self.teacher.params)

    def points_and_decay(self, step):
        del step
        return jnp.int32(int(self.section.num_points)), jnp.float32(float(self.section.decay))


class ConsistencyTraining(_Consistency):
    """``config.objective.name = 'consistency_training'``: CT from data alone, with N(k) and
    mu(k) growing over ``train.num_steps``."""

    def points_and_decay(self, step):
        s = self.section
        return ct_schedule(step, self.total, float(s.s0), float(s.s1), float(s.decay))


def _check_common(section):
    choice(section.distance, "objective.distance", DISTANCES)
    number(section.decay, "objective.decay", low=0.0, high=1.0)
    if section.decay >= 1.0:
        from jaxdiff.errors import ConfigError

        raise ConfigError(f"config.objective.decay = {section.decay}: the target network "
                          f"must follow the student (decay < 1)")


def _check_cd(section, config):
    del config
    number(section.num_points, "objective.num_points", low=2, integer=True)
    number(section.teacher_scale, "objective.teacher_scale", low=0.0)
    _check_common(section)


def _check_ct(section, config):
    del config
    number(section.s0, "objective.s0", low=2.0)
    number(section.s1, "objective.s1", low=float(section.s0))
    _check_common(section)


register_objective(
    "consistency_distill", family="distill", student_fields=(),
    defaults=lambda: ml_collections.ConfigDict(dict(num_points=18, decay=0.95,
                                                    distance="l2", teacher_scale=1.0)),
    check=_check_cd)(ConsistencyDistillation)
register_objective(
    "consistency_training",
    defaults=lambda: ml_collections.ConfigDict(dict(s0=2.0, s1=150.0, decay=0.9,
                                                    distance="l2")),
    check=_check_ct)(ConsistencyTraining)

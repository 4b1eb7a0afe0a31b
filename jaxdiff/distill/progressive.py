"""Progressive Distillation for Fast Sampling of Diffusion Models (Salimans & Ho, ICLR 2022), as
the second stage of On Distillation of Guided Diffusion Models (Meng et al., CVPR 2023): each
round halves the number of DDIM steps, the student's one step matching two of its teacher's.

Round r (r = 0 .. rounds - 1) trains a student for N = teacher_steps / 2^(r + 1) steps on the
nested grid t_k = t_max (1 - k / N) (``schedules.sampling_grid`` kind 'uniform_t_to_zero'),
whose teacher is round r - 1's student (round 0: the model in ``config.distill``).  For
t = t_k, t' = t - t_max / (2N), t'' = t - t_max / N and z_t = alpha_t x + sigma_t eps, two
teacher DDIM steps (Salimans & Ho, Algorithm 2)

    z_t'  = alpha_t'  x_1 + (sigma_t'  / sigma_t ) (z_t  - alpha_t  x_1),  x_1 = x_teacher(z_t, t)
    z_t'' = alpha_t'' x_2 + (sigma_t'' / sigma_t') (z_t' - alpha_t' x_2),  x_2 = x_teacher(z_t', t')

give the x-prediction that takes z_t to z_t'' in ONE DDIM step, in closed form:

    x~ = (z_t'' - (sigma_t'' / sigma_t) z_t) / (alpha_t'' - (sigma_t'' / sigma_t) alpha_t),

and the student minimises max(SNR_t, 1) ||x~ - x_student(z_t, t)||^2 ("truncated SNR"
weighting).  With a guided student of stage one (``config.model.guidance_embedding``) the
guidance weight stays an input: s ~ U[scale_min, scale_max] per example, fed to teacher and
student alike (Meng et al.).

The rounds run back to back in one ``--mode=distill`` job of ``rounds * steps_per_round``
optimizer steps: at the end of every round the teacher becomes the student just trained (in
the compiled step, so a resumed run switches at the same step).  The checkpoint at step
(r + 1) * steps_per_round is round r's student; sample it with ``--config.sample.sampler=ddim
--config.sample.grid=uniform_t_to_zero --config.sample.steps=N`` (the job's summary lists
them).  Unlike Salimans & Ho, the optimizer state carries over from round to round.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from jaxdiff.cond import with_guidance_weight
from jaxdiff.config import number
from jaxdiff.denoiser import DenoiserBase, batch_times
from jaxdiff.distill.teacher import (check_scale_range, init_from_teacher, load_teacher,
                                     teacher_params_like,
                                     truncated_snr_weight)
from jaxdiff.errors import ConfigError
from jaxdiff.objectives.base import Objective, register_objective
from jaxdiff.objectives.denoising import mean_squared_error
from jaxdiff.rng import example_keys
from jaxdiff.schedules import Schedule, diffuse

Array = jax.Array
GRID = "uniform_t_to_zero"


def alpha_sigma_clean_end(schedule: Schedule, t: Array) -> tuple[Array, Array]:
    """(alpha, sigma) at t, exactly (1, 0) where t <= 0 (the grid's clean end)."""
    alpha, sigma = schedule.alpha_sigma(jnp.maximum(t, schedule.t_min))
    clean = t <= 0
    return jnp.where(clean, 1.0, alpha), jnp.where(clean, 0.0, sigma)


def _bcast(v, x):
    return v.reshape((-1,) + (1,) * (x.ndim - 1))


def ddim_move(z: Array, x0: Array, a: Array, s: Array, a_next: Array, s_next: Array) -> Array:
    """One deterministic DDIM step of z (B, ...) at (alpha, sigma) = (a, s) (B,) to
    (a_next, s_next) with the x-prediction x0 (B, ...)."""
    ratio = _bcast(s_next / s, z)
    return _bcast(a_next, z) * x0 + ratio * (z - _bcast(a, z) * x0)


def two_step_target(teacher: DenoiserBase, z: Array, t: Array, t_mid: Array, t_end: Array,
                    cond: Any) -> Array:
    """x~ of the module docstring: the x-prediction whose single DDIM step from (z, t) to
    t_end lands where the teacher's two DDIM steps t -> t_mid -> t_end land.  z (B, ...);
    t, t_mid, t_end (B,) with t > t_mid > t_end >= 0.  No gradient."""
    sched = teacher.schedule
    a, s = alpha_sigma_clean_end(sched, t)
    a1, s1 = alpha_sigma_clean_end(sched, t_mid)
    a2, s2 = alpha_sigma_clean_end(sched, t_end)
    x1 = teacher(z, t, cond)
    z1 = ddim_move(z, x1, a, s, a1, s1)
    x2 = teacher(z1, t_mid, cond)
    z2 = ddim_move(z1, x2, a1, s1, a2, s2)
    ratio = _bcast(s2 / s, z)
    target = (z2 - ratio * z) / (_bcast(a2, z) - ratio * _bcast(a, z))
    return jax.lax.stop_gradient(target)


def round_times(key: Array, schedule: Schedule, student_steps) -> tuple[Array, Array, Array]:
    """(t, t', t'') of one example for a round of ``student_steps`` = N (traced int): t = t_k
    for k ~ U{0 .. N-1} on the grid t_k = t_max (1 - k / N); shapes ()."""
    n = jnp.asarray(student_steps, jnp.int32)
    k = jax.random.randint(key, (), 0, n)
    h = schedule.t_max / n.astype(jnp.float32)
    t = schedule.t_max - k.astype(jnp.float32) * h
    return t, t - 0.5 * h, jnp.maximum(t - h, 0.0)


def progressive_loss(student: DenoiserBase, teacher: DenoiserBase, x0: Array, cond: Any,
                     key: Array, student_steps, *, scale_range: tuple[float, float] | None,
                     indices: Array | None = None) -> tuple[Array, dict]:
    """One batch of a round's loss (module docstring).  ``scale_range``: (s_min, s_max) for a
    guided student (the condition becomes ``{"cond": c, "w": s - 1}``), None otherwise."""
    b = x0.shape[0]
    keys = example_keys(key, jnp.arange(b) if indices is None else indices)
    parts = jax.vmap(lambda k: jax.random.split(k, 3))(keys)
    sched = teacher.schedule
    t, t_mid, t_end = jax.vmap(lambda k: round_times(k, sched, student_steps))(parts[:, 0])
    eps = jax.vmap(lambda k: jax.random.normal(k, x0.shape[1:], x0.dtype))(parts[:, 1])
    if scale_range is not None:
        s = jax.vmap(lambda k: jax.random.uniform(k, (), minval=scale_range[0],
                                                  maxval=scale_range[1]))(parts[:, 2])
        cond = with_guidance_weight(cond, s - 1.0)
    t = batch_times(t, x0)
    z = diffuse(sched, x0, t, eps)
    target = two_step_target(teacher, z, t, t_mid, t_end, cond)
    pred = student(z, t, cond)
    alpha, sigma = sched.alpha_sigma(t)
    per_example = truncated_snr_weight(alpha, sigma) * mean_squared_error(pred, target)
    return jnp.mean(per_example), {"x0_mse": jnp.mean(mean_squared_error(pred, target)),
                                   "student_steps": jnp.asarray(student_steps, jnp.float32)}


class ProgressiveDistillation(Objective):
    """``config.objective.name = 'progressive_distill'`` (module docstring).  Extra state:
    ``teacher``, the current round's teacher parameters (the student's tree)."""

    def __init__(self, spec, config):
        self.spec = spec
        self.section = config.objective
        self.guided = bool(config.model.guidance_embedding)
        self.teacher = load_teacher(spec, config)

    @property
    def rounds(self) -> int:
        return int(self.section.rounds)

    @property
    def steps_per_round(self) -> int:
        return int(self.section.steps_per_round)

    def student_steps(self, step):
        """N of the round that optimizer step ``step`` (traced) belongs to."""
        r = jnp.minimum(jnp.asarray(step, jnp.int32) // self.steps_per_round, self.rounds - 1)
        return jnp.right_shift(jnp.int32(int(self.section.teacher_steps)), r + 1)

    def initial_params(self, params):
        return init_from_teacher(params, self.teacher.params)

    def init(self, params, key):
        del key
        return dict(teacher=teacher_params_like(params, self.teacher.params))

    def loss(self, params, extra, batch, key, step):
        teacher = dataclasses.replace(self.teacher, params=extra["teacher"])
        cond = self.spec.condition(batch["label"])
        scales = ((float(self.section.scale_min), float(self.section.scale_max))
                  if self.guided else None)
        return progressive_loss(self.spec.denoiser(params), teacher, batch["x"], cond, key,
                                self.student_steps(step), scale_range=scales,
                                indices=batch.get("index"))

    def update_extra(self, extra, params, batch, key, step):
        """At the end of a round (after its last optimizer step), the student becomes the
        teacher."""
        del batch, key
        switch = (jnp.asarray(step, jnp.int32) + 1) % self.steps_per_round == 0
        teacher = jax.tree.map(lambda p, t: jnp.where(switch, p, t), params, extra["teacher"])
        return dict(extra, teacher=teacher), {}

    def summary(self) -> dict:
        """Which checkpoint step holds which round's student."""
        n0 = int(self.section.teacher_steps)
        return dict(rounds=[dict(round=r, student_steps=n0 >> (r + 1),
                                 checkpoint_step=(r + 1) * self.steps_per_round,
                                 sample_with=dict(sampler="ddim", grid=GRID,
                                                  steps=n0 >> (r + 1)))
                            for r in range(self.rounds)])


def _defaults():
    return ml_collections.ConfigDict(dict(teacher_steps=64, rounds=6, steps_per_round=1000,
                                          scale_min=1.0, scale_max=5.0))


def _check(section, config):
    number(section.teacher_steps, "objective.teacher_steps", low=2, integer=True)
    n = int(section.teacher_steps)
    if n & (n - 1):
        raise ConfigError(f"config.objective.teacher_steps = {n}: progressive distillation "
                          f"halves the steps every round, so it must be a power of two")
    number(section.rounds, "objective.rounds", low=1, high=n.bit_length() - 1, integer=True)
    number(section.steps_per_round, "objective.steps_per_round", low=1, integer=True)
    check_scale_range(section, "objective")
    total = int(section.rounds) * int(section.steps_per_round)
    t = config.train
    if int(t.num_steps) != total:
        raise ConfigError(f"config.train.num_steps = {t.num_steps}: progressive distillation "
                          f"runs rounds x steps_per_round = {section.rounds} x "
                          f"{section.steps_per_round} = {total} steps")
    every = int(t.checkpoint_every)
    if every <= 0 or int(section.steps_per_round) % every:
        raise ConfigError(f"config.train.checkpoint_every = {every} must divide "
                          f"objective.steps_per_round = {section.steps_per_round}, so that "
                          f"every round's student is saved")
    if int(t.keep_checkpoints) < total // every:
        raise ConfigError(f"config.train.keep_checkpoints = {t.keep_checkpoints}: keep all "
                          f"{total // every} checkpoints, so that every round's student stays")
    if config.sample.grid != GRID:
        raise ConfigError(f"config.sample.grid = {config.sample.grid!r}: a progressive student "
                          f"samples on the grid it was distilled on, {GRID!r}")


register_objective("progressive_distill", defaults=_defaults, check=_check, family="distill",
                   student_fields=(),
                   test_config=dict(**{"train.num_steps": 6000, "train.checkpoint_every": 1000,
                                       "train.keep_checkpoints": 6,
                                       "sample.grid": GRID}))(ProgressiveDistillation)

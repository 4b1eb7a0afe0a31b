"""One-Step Diffusion Distillation through Score Implicit Matching (SIM; Luo, Huang, Geng, Kolter
& Qi, NeurIPS 2024): a one-step generator trained so that the scores of its diffused samples
match the teacher's, with an online "fake" score network standing in for the generator's own.

The generator.  g_theta(z, c) = D_theta(sigma(t_init) z, t_init, c), z ~ N(0, I): the student
network evaluated once at the fixed noise level t_init (sigma_ve = ``sigma_init``, 2.5 as in
SiD and SIM's released generator), started from the teacher's weights.  ``OneStepGenerator``
is the same function as a Denoiser: at any (x, t) it reads x as sigma(t) z, so DDIM with one
step from t_max draws g_theta(z) (``guidance.name = 'one_step'``, ``sample.steps = 1``).

The divergence (SIM Sec. 3.1).  With x_t = alpha_t x0 + sigma_t eps, s_p the teacher's score
and s_q the score of the diffused generator distribution q_t,

    D(theta) = E_t E_{x_t ~ pi_t} d(y_t),       y_t = s_p(x_t) - s_q(x_t),

for a distance d and a sampling distribution pi_t held fixed at the current generator.  Its
gradient cannot be taken through s_q directly (q has no density), but the score-gradient
theorem (SIM Thm. 3.1) turns it into the gradient of a loss that needs only the score network
s_psi ~ s_q (stop-gradient parameters):

    L(theta) = E_{z, t, eps} d'(y_t)^T ( s_psi(x_t) - grad_x log q_t(x_t | x0) ),
    x0 = g_theta(z),  x_t = alpha_t x0 + sigma_t eps,

differentiated through x0 and x_t everywhere (the networks' inputs, not their weights; the
identity needs the path through d'(y_t(x_t)) too: tests/test_sim.py compares this gradient
with the divergence's own on Gaussians with closed-form scores).  jaxdiff measures y in
x0 units, y = (sigma^2 / alpha) (s_p - s_psi) = D_p(x_t) - D_psi(x_t), a per-t rescaling of
the distance, which turns the loss into

    L(theta) = E d'(D_p(x_t) - D_psi(x_t))^T ( D_psi(x_t) - x0 )

with d the pseudo-Huber distance sqrt(||y||^2 + c^2) - c (SIM Sec. 3.3; d'(y) =
y / sqrt(||y||^2 + c^2), c = ``huber_c`` sqrt(dim)) or the squared L2 distance ||y||^2 / 2
(d'(y) = y; SiD with alpha = 1).

The fake score (SIM Algorithm 1).  s_psi, started from the teacher, is trained by denoising
score matching (the teacher's own weighting and time sampler, ``config.diffusion``) on
stop-gradient generator samples, with its own Adam; it lives in the objective's extra state
with its optimizer, so a checkpoint holds generator, fake score and both optimizers.  Each
job step updates the generator (``loss``) and then the fake score (``update_extra``,
``fake_updates`` times): the paper's alternation.  Data are never read (SIM is data-free):
the batch gives only its labels, the classes to generate.

Config: ``config.objective`` = name 'sim' with sigma_init, distance, huber_c, fake_lr,
fake_b1, fake_b2, fake_updates, teacher_scale (a CFG teacher), time_sampler (of the
generator loss); ``config.distill.teacher_workdir``; run with ``--mode=distill``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxdiff.config import choice, number
from jaxdiff.denoiser import DenoiserBase, batch_times
from jaxdiff.distill.teacher import frozen, init_from_teacher, load_teacher, teacher_params_like
from jaxdiff.errors import ConfigError
from jaxdiff.guidance.base import Guided, register_guidance
from jaxdiff.guidance.cfg import CFG
from jaxdiff.objectives.base import Objective, register_objective
from jaxdiff.objectives.denoising import TIME_SAMPLERS, denoising_loss, noising_kwargs
from jaxdiff.objectives.denoising import sample_times
from jaxdiff.rng import example_keys
from jaxdiff.schedules import diffuse

Array = jax.Array
DISTANCES = ("pseudo_huber", "l2")


def _bcast(v, x):
    return v.reshape((-1,) + (1,) * (x.ndim - 1))


@dataclasses.dataclass(frozen=True)
class OneStepGenerator(Guided):
    """The one-step generator of the module docstring as a Denoiser.

    inner: the student's network Denoiser; sigma_init: () the generator's input noise level
    (sigma_ve, traced).  ``generate(z, cond)``: (B, ...) -> (B, ...) x0; ``x0(x, t, cond)``
    reads x as sigma(t) z and returns ``generate(z, cond)``."""

    inner: DenoiserBase
    sigma_init: Any = 2.5

    def t_init(self):
        sched = self.schedule
        t = sched.t_from_sigma_ve(jnp.asarray(self.sigma_init, jnp.float32))
        return jnp.clip(t, sched.t_min, sched.t_max)

    def generate(self, z, cond=None):
        t0 = jnp.broadcast_to(self.t_init(), z.shape[:1])
        _, sigma = self.schedule.alpha_sigma(t0)
        return self.inner(_bcast(sigma, z) * z, t0, cond)

    def x0(self, x, t, cond=None):
        t = batch_times(t, x)
        _, sigma = self.schedule.alpha_sigma(t)
        return self.generate(x / _bcast(sigma, x), cond)


jax.tree_util.register_dataclass(OneStepGenerator, data_fields=["inner", "sigma_init"],
                                 meta_fields=[])


def _one_step_defaults():
    return ml_collections.ConfigDict(dict(sigma_init=2.5))


def _check_one_step(section):
    number(section.sigma_init, "guidance.sigma_init", low=0.0)


@register_guidance("one_step", defaults=_one_step_defaults, check=_check_one_step,
                   evals_per_call=lambda section: 1)
def build_one_step(inner, section, spec):
    """The run's model as a SIM one-step generator (sample it with ddim, 1 step)."""
    objective = spec.config.get("objective") if hasattr(spec.config, "get") else None
    if objective is not None and objective.get("name") == "sim" and \
            float(objective.sigma_init) != float(section.sigma_init):
        raise ConfigError(f"config.guidance.sigma_init = {section.sigma_init}: the generator "
                          f"was trained at config.objective.sigma_init = "
                          f"{objective.sigma_init}; sample it there")
    return OneStepGenerator(inner, sigma_init=float(section.sigma_init))


# ------------------------------------------------------------------------------------------------
# the losses
# ------------------------------------------------------------------------------------------------

def distance_grad(y: Array, kind: str, huber_c: float) -> Array:
    """d'(y) per example, (B, ...) -> (B, ...): y / sqrt(||y||^2 + c^2) with c = huber_c
    sqrt(dim) (pseudo-Huber), or y (squared L2 / 2)."""
    if kind == "l2":
        return y
    flat = y.reshape(y.shape[0], -1)
    c = huber_c * math.sqrt(flat.shape[1])
    return y / _bcast(jnp.sqrt(jnp.sum(flat**2, axis=1) + c**2), y)


def generator_noise(key: Array, shape: tuple, indices: Array | None = None) -> Array:
    """z (B, ...) ~ N(0, I), example j from fold_in(key, indices[j])."""
    keys = example_keys(key, jnp.arange(shape[0]) if indices is None else indices)
    return jax.vmap(lambda k: jax.random.normal(k, shape[1:], jnp.float32))(keys)


def times_and_noise(key: Array, shape: tuple, schedule, time_sampler: str = "uniform",
                    indices: Array | None = None) -> tuple[Array, Array]:
    """The generator loss's draws: t (B,) from the time sampler and eps (B, ...) ~ N(0, I),
    example j from fold_in(key, indices[j])."""
    keys = example_keys(key, jnp.arange(shape[0]) if indices is None else indices)
    parts = jax.vmap(lambda k: jax.random.split(k, 2))(keys)
    t = jax.vmap(lambda k: sample_times(k, schedule, time_sampler))(parts[:, 0])
    eps = jax.vmap(lambda k: jax.random.normal(k, shape[1:], jnp.float32))(parts[:, 1])
    return t, eps


def sim_generator_loss(generator, teacher: DenoiserBase, fake: DenoiserBase, z: Array,
                       cond: Any, key: Array, *, distance_kind: str = "pseudo_huber",
                       huber_c: float = 0.00054, time_sampler: str = "uniform",
                       indices: Array | None = None) -> tuple[Array, dict]:
    """SIM's generator loss (module docstring) for one batch.

    generator: (z, cond) -> x0, the function being trained; teacher, fake: frozen Denoisers
    (D_p and D_psi; their parameters carry no gradient, their inputs do); z: (B, ...) noise;
    example j draws t and eps from fold_in(key, indices[j]).  Returns (scalar, metrics)."""
    b = z.shape[0]
    sched = teacher.schedule
    t, eps = times_and_noise(key, z.shape, sched, time_sampler, indices)
    x0 = generator(z, cond)
    x_t = diffuse(sched, x0, t, eps)
    d_fake = fake(x_t, t, cond)
    y = teacher(x_t, t, cond) - d_fake
    per_example = jnp.sum((distance_grad(y, distance_kind, huber_c) * (d_fake - x0))
                          .reshape(b, -1), axis=1)
    gap = jnp.sqrt(jnp.mean(jax.lax.stop_gradient(y).reshape(b, -1) ** 2))
    return jnp.mean(per_example), {"score_gap": gap}


# ------------------------------------------------------------------------------------------------
# the objective
# ------------------------------------------------------------------------------------------------

class ScoreImplicitMatching(Objective):
    """``config.objective.name = 'sim'`` (module docstring).  Extra state: the frozen teacher,
    the fake score's parameters and its optimizer state."""

    def __init__(self, spec, config):
        self.spec = spec
        self.section = s = config.objective
        self.teacher = load_teacher(spec, config)
        self.fake_opt = optax.adam(float(s.fake_lr), b1=float(s.fake_b1), b2=float(s.fake_b2))
        self.dsm = noising_kwargs(spec, config)

    def initial_params(self, params):
        return init_from_teacher(params, self.teacher.params)

    def init(self, params, key):
        del key
        teacher = teacher_params_like(params, self.teacher.params)
        fake = jax.tree.map(jnp.copy, teacher)
        return dict(teacher=teacher, fake=fake, fake_opt=self.fake_opt.init(fake))

    def generator(self, params) -> OneStepGenerator:
        return OneStepGenerator(self.spec.denoiser(params),
                                sigma_init=float(self.section.sigma_init))

    def _teacher(self, extra):
        teacher = dataclasses.replace(self.teacher, params=frozen(extra["teacher"]))
        scale = float(self.section.teacher_scale)
        if scale != 1.0 and self.spec.num_classes > 0:
            return CFG(teacher, scale=scale, null=self.spec.null)
        return teacher

    def _noise(self, batch, key):
        shape = (batch["label"].shape[0],) + tuple(self.spec.example_shape)
        return generator_noise(key, shape, batch.get("index"))

    def loss(self, params, extra, batch, key, step):
        del step
        k_z, k_loss = jax.random.split(key)
        s = self.section
        return sim_generator_loss(
            self.generator(params).generate, self._teacher(extra),
            self.spec.denoiser(frozen(extra["fake"])), self._noise(batch, k_z),
            self.spec.condition(batch["label"]), k_loss, distance_kind=str(s.distance),
            huber_c=float(s.huber_c), time_sampler=str(s.time_sampler),
            indices=batch.get("index"))

    def update_extra(self, extra, params, batch, key, step):
        """``fake_updates`` denoising-score-matching steps of the fake score on stop-gradient
        samples of the updated generator."""
        del step
        cond = self.spec.condition(batch["label"])
        gen = self.generator(frozen(params))
        fake, opt_state = extra["fake"], extra["fake_opt"]
        losses = []
        for i in range(int(self.section.fake_updates)):
            k_z, k_dsm = jax.random.split(jax.random.fold_in(key, i))
            x0 = jax.lax.stop_gradient(gen.generate(self._noise(batch, k_z), cond))
            loss, grads = jax.value_and_grad(lambda f: denoising_loss(
                self.spec.denoiser(f), x0, cond, k_dsm, indices=batch.get("index"),
                **self.dsm)[0])(fake)
            updates, opt_state = self.fake_opt.update(grads, opt_state, fake)
            fake = optax.apply_updates(fake, updates)
            losses.append(loss)
        return dict(extra, fake=fake, fake_opt=opt_state), {"fake_loss": jnp.mean(
            jnp.stack(losses))}


def _defaults():
    return ml_collections.ConfigDict(dict(
        sigma_init=2.5, distance="pseudo_huber", huber_c=0.00054, fake_lr=1e-5, fake_b1=0.0,
        fake_b2=0.999, fake_updates=1, teacher_scale=1.0, time_sampler="uniform"))


def _check(section, config):
    del config
    number(section.sigma_init, "objective.sigma_init", low=0.0, low_open=True)
    choice(section.distance, "objective.distance", DISTANCES)
    number(section.huber_c, "objective.huber_c", low=0.0)
    number(section.fake_lr, "objective.fake_lr", low=0.0)
    number(section.fake_b1, "objective.fake_b1", low=0.0, high=1.0)
    number(section.fake_b2, "objective.fake_b2", low=0.0, high=1.0)
    number(section.fake_updates, "objective.fake_updates", low=1, integer=True)
    number(section.teacher_scale, "objective.teacher_scale", low=0.0)
    choice(section.time_sampler, "objective.time_sampler", TIME_SAMPLERS)


register_objective("sim", defaults=_defaults, check=_check, family="distill",
                   student_fields=(), test_perturb_extra=("fake",))(ScoreImplicitMatching)

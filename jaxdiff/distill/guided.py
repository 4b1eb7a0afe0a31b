"""On Distillation of Guided Diffusion Models (Meng et al., CVPR 2023): stage one, one network
that takes the guidance weight as an input and matches the teacher's two-branch guided output.

The teacher x_theta is a conditional model trained with condition dropout, guided by
classifier-free guidance.  Meng et al. write guidance as

    x^w_theta(z_t, c) = (1 + w) x_theta(z_t, c) - w x_theta(z_t, null)

which is jaxdiff's CFG at scale s = w + 1 (``meng_w`` converts, the only place that does).  The
student x_eta(z_t, c, w) is the teacher's network plus an embedding of w added to the
time-and-class embedding (``config.model.guidance_embedding``; its output layer starts at zero,
so the student starts as the conditional teacher at every w) and minimises

    L(eta) = E_{x, c, t, s ~ U[scale_min, scale_max], eps}
             [ max(SNR_t, 1) ||x_eta(z_t, c, s - 1) - x^{s-1}_theta(z_t, c)||^2 ],
    z_t = alpha_t x + sigma_t eps,

one network call per step where the teacher needs two.  Stage two (``distill.progressive``)
then halves its sampling steps.  Sampling a guided student: ``guidance.name = 'distilled'``
with ``guidance.scale`` = s, any sampler.

Config: ``config.objective`` = name 'guided_distill' with scale_min, scale_max (CFG scales,
Meng et al.'s w in [0, 4] is s in [1, 5]); ``config.distill.teacher_workdir``; run with
``--mode=distill``.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from jaxdiff.cond import with_guidance_weight
from jaxdiff.config import choice, number
from jaxdiff.denoiser import DenoiserBase, batch_times
from jaxdiff.distill.teacher import (check_scale_range, init_from_teacher, load_teacher,
                                     truncated_snr_weight)
from jaxdiff.errors import ConfigError
from jaxdiff.guidance.base import Guided, register_guidance
from jaxdiff.guidance.cfg import CFG
from jaxdiff.objectives.base import Objective, register_objective
from jaxdiff.objectives.denoising import TIME_SAMPLERS, mean_squared_error, sample_times
from jaxdiff.rng import example_keys
from jaxdiff.schedules import diffuse

Array = jax.Array


def meng_w(scale):
    """Meng et al.'s guidance weight w for jaxdiff's CFG scale s: w = s - 1 (s = 1, w = 0 is
    the conditional model)."""
    return scale - 1.0


@dataclasses.dataclass(frozen=True)
class WithGuidanceWeight(Guided):
    """A guided-distilled student sampled at CFG scale ``scale`` (() or (B,), traced): its
    network gets the condition with w = scale - 1.  One network call per evaluation."""

    inner: DenoiserBase
    scale: Any = 1.0

    def x0(self, x, t, cond=None):
        t = batch_times(t, x)
        w = jnp.broadcast_to(meng_w(jnp.asarray(self.scale, jnp.float32)), t.shape)
        return self.inner(x, t, with_guidance_weight(cond, w))


jax.tree_util.register_dataclass(WithGuidanceWeight, data_fields=["inner", "scale"],
                                 meta_fields=[])


def _distilled_defaults():
    return ml_collections.ConfigDict(dict(scale=2.0))


def _check_distilled(section):
    number(section.scale, "guidance.scale", low=0.0)


@register_guidance("distilled", defaults=_distilled_defaults, check=_check_distilled,
                   evals_per_call=lambda section: 1, inner_takes_w=True)
def build_distilled(inner, section, spec):
    """A guided-distilled student at the section's scale."""
    if not spec.config.model.guidance_embedding:
        raise ConfigError("config.guidance.name='distilled' samples a guided-distilled "
                          "student, which needs config.model.guidance_embedding=True")
    return WithGuidanceWeight(inner, scale=float(section.scale))


def guided_target(teacher: DenoiserBase, z: Array, t: Array, cond: Any, scale: Array,
                  null: Any) -> Array:
    """The teacher's CFG prediction x^{s-1}_theta(z_t, c) at per-example scales ``scale`` (B,);
    (B, ...) float32, no gradient."""
    return jax.lax.stop_gradient(CFG(teacher, scale=scale, null=null)(z, t, cond))


def guided_distill_loss(student: DenoiserBase, teacher: DenoiserBase, x0: Array, cond: Any,
                        key: Array, *, scale_min: float, scale_max: float, null: Any,
                        indices: Array | None = None,
                        time_sampler: str = "uniform") -> tuple[Array, dict]:
    """Stage-one loss (module docstring) on a batch.

    student: a Denoiser whose network has a guidance embedding; teacher: the conditional
    Denoiser; x0 (B, ...) data; cond its condition (class indices (B,)); example j draws its
    time, noise and scale from fold_in(key, indices[j]).  Returns (scalar, metrics)."""
    b = x0.shape[0]
    keys = example_keys(key, jnp.arange(b) if indices is None else indices)
    parts = jax.vmap(lambda k: jax.random.split(k, 3))(keys)
    sched = teacher.schedule
    t = jax.vmap(lambda k: sample_times(k, sched, time_sampler))(parts[:, 0])
    eps = jax.vmap(lambda k: jax.random.normal(k, x0.shape[1:], x0.dtype))(parts[:, 1])
    s = jax.vmap(lambda k: jax.random.uniform(k, (), minval=scale_min,
                                              maxval=scale_max))(parts[:, 2])
    z = diffuse(sched, x0, t, eps)
    target = guided_target(teacher, z, t, cond, s, null)
    pred = WithGuidanceWeight(student, scale=s)(z, t, cond)
    alpha, sigma = sched.alpha_sigma(t)
    per_example = truncated_snr_weight(alpha, sigma) * mean_squared_error(pred, target)
    return jnp.mean(per_example), {"x0_mse": jnp.mean(mean_squared_error(pred, target))}


class GuidedDistillation(Objective):
    """``config.objective.name = 'guided_distill'`` (module docstring).  The frozen teacher's
    parameters are the extra state (``extra['teacher']``); the student starts from them."""

    def __init__(self, spec, config):
        if spec.num_classes == 0:
            raise ConfigError("config.objective.name='guided_distill' distils classifier-free "
                              "guidance, which needs a class-conditional teacher")
        if not config.model.guidance_embedding:
            raise ConfigError("config.model.guidance_embedding: a guided-distilled student "
                              "takes the guidance weight as input; set it to True")
        self.spec = spec
        self.section = config.objective
        self.teacher = load_teacher(spec, config)

    def initial_params(self, params):
        return init_from_teacher(params, self.teacher.params)

    def init(self, params, key):
        del params, key
        return dict(teacher=self.teacher.params)

    def loss(self, params, extra, batch, key, step):
        del step
        teacher = dataclasses.replace(self.teacher, params=extra["teacher"])
        return guided_distill_loss(
            self.spec.denoiser(params), teacher, batch["x"], batch["label"], key,
            scale_min=float(self.section.scale_min), scale_max=float(self.section.scale_max),
            null=self.spec.null, indices=batch.get("index"),
            time_sampler=str(self.section.time_sampler))


def _defaults():
    return ml_collections.ConfigDict(dict(scale_min=1.0, scale_max=5.0, time_sampler="uniform"))


def _check(section, config):
    del config
    check_scale_range(section, "objective")
    choice(section.time_sampler, "objective.time_sampler", TIME_SAMPLERS)


register_objective("guided_distill", defaults=_defaults, check=_check, family="distill",
                   student_fields=("guidance_embedding",),
                   test_model_overrides=dict(guidance_embedding=True))(GuidedDistillation)

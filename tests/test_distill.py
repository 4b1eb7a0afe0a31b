"""Distillation (jaxdiff.distill): the identities of its targets against the exact Gaussian-
mixture teacher, its config errors, the student's guidance embedding, and the distill job end to
end (teacher -> guided student -> progressive rounds -> the sampling job) with an exact resume.

* Progressive distillation: with the exact teacher, ``two_step_target`` as a denoiser sampled by
  DDIM on the N-step grid lands where the teacher's DDIM lands on the 2N-step grid (the closed
  form of Salimans & Ho); the nested grid; the round schedule and the teacher switch.
* Guided distillation: the target at s = 1 is the conditional teacher; the loss is zero for the
  exact guided student and positive for the conditional one.
"""
import dataclasses
import functools
import os

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxdiff import config as C
from jaxdiff import samplers, schedules
from jaxdiff.cond import with_guidance_weight
from jaxdiff.denoiser import DenoiserBase, batch_times
from jaxdiff.distill.guided import (WithGuidanceWeight, guided_distill_loss, guided_target,
                                    meng_w)
from jaxdiff.distill.progressive import (GRID, ProgressiveDistillation, progressive_loss,
                                         round_times, two_step_target)
from jaxdiff.distill.teacher import init_from_teacher
from jaxdiff.errors import ConfigError, MissingInputError
from jaxdiff.guidance.cfg import CFG
from jaxdiff.toy.gmm import oracle_denoiser, toy_mixture_2d
from tests.helpers.compile_speed import FULL_OPTIMISATION

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCHED = schedules.get_schedule("vp_cosine")
GMM = toy_mixture_2d()
TEACHER = oracle_denoiser(GMM, SCHED)
NULL = GMM.num_classes
COND = jnp.arange(96, dtype=jnp.int32) % GMM.num_classes


@dataclasses.dataclass(frozen=True)
class TwoStepStudent(DenoiserBase):
    """The optimal progressive student of a round of ``n`` steps: the closed-form target."""

    teacher: DenoiserBase
    n: int

    @property
    def schedule(self):
        return self.teacher.schedule

    def x0(self, x, t, cond=None):
        t = batch_times(t, x)
        h = self.schedule.t_max / self.n
        return two_step_target(self.teacher, x, t, t - 0.5 * h, jnp.maximum(t - h, 0.0), cond)


@dataclasses.dataclass(frozen=True)
class ExactGuidedStudent(DenoiserBase):
    """The optimal stage-one student: the teacher's CFG at the scale its condition carries."""

    teacher: DenoiserBase

    @property
    def schedule(self):
        return self.teacher.schedule

    def x0(self, x, t, cond=None):
        return CFG(self.teacher, scale=cond["w"] + 1.0, null=NULL)(x, t, cond["cond"])


for _cls in (TwoStepStudent, ExactGuidedStudent):
    jax.tree_util.register_dataclass(_cls, data_fields=["teacher"],
                                     meta_fields=[f for f in ("n",) if f in
                                                  {x.name for x in dataclasses.fields(_cls)}])


def _ddim(den, steps, key=0):
    return samplers.sample(den, jax.random.key(key), (COND.shape[0], 2), sampler="ddim",
                           steps=steps, grid=GRID, cond=COND, eta=0.0).x0


# ------------------------------------------------------------------------------------------------
# progressive distillation
# ------------------------------------------------------------------------------------------------

def test_the_distillation_grid_is_nested_and_ends_clean():
    for n in (1, 2, 4, 32):
        g, g2 = (schedules.sampling_grid(SCHED, k, GRID) for k in (n, 2 * n))
        chex.assert_shape(g.t, (n + 1,))
        np.testing.assert_allclose(g2.t[::2], g.t, rtol=0, atol=1e-6)
        assert float(g.t[0]) == pytest.approx(SCHED.t_max) and float(g.sigma_ve[-1]) == 0.0
    with pytest.raises(ValueError, match="no t_min"):
        schedules.sampling_grid(SCHED, 4, GRID, t_min=0.1)


@pytest.mark.parametrize("n", [1, 2, 8])
def test_one_optimal_student_step_is_two_teacher_ddim_steps(n):
    teacher = _ddim(TEACHER, 2 * n)
    student = _ddim(TwoStepStudent(TEACHER, n), n)
    np.testing.assert_allclose(student, teacher, rtol=0, atol=2e-5)
    # ... and not what the teacher gives in n steps itself (the test can fail).
    assert float(jnp.max(jnp.abs(_ddim(TEACHER, n) - teacher))) > 1e-2


def test_round_times_lie_on_the_round_grid():
    keys = jax.random.split(jax.random.key(0), 256)
    for n in (1, 4):
        t, t_mid, t_end = jax.vmap(lambda k: round_times(k, SCHED, n))(keys)
        grid = np.asarray(schedules.sampling_grid(SCHED, 2 * n, GRID).t)
        on = lambda v: np.min(np.abs(np.asarray(v)[:, None] - grid[None]), axis=1)  # noqa: E731
        assert on(t).max() < 1e-6 and on(t_mid).max() < 1e-6 and on(t_end).max() < 1e-6
        assert len(np.unique(np.round(np.asarray(t), 5))) == n  # every start point is drawn
        np.testing.assert_array_less(np.asarray(t_end), np.asarray(t))


def test_progressive_loss_is_zero_for_the_optimal_student_only():
    x0 = GMM.sample(jax.random.key(1), COND.shape[0], COND)
    key = jax.random.key(2)
    optimal, _ = progressive_loss(TwoStepStudent(TEACHER, 4), TEACHER, x0, COND, key, 4,
                                  scale_range=None)
    teacher_as_student, _ = progressive_loss(TEACHER, TEACHER, x0, COND, key, 4,
                                             scale_range=None)
    assert float(optimal) < 1e-8
    assert float(teacher_as_student) > 1e-3


def test_rounds_halve_the_steps_and_the_teacher_switches_at_each_round_end():
    obj = ProgressiveDistillation.__new__(ProgressiveDistillation)
    obj.section = ml_collections.ConfigDict(dict(teacher_steps=16, rounds=3, steps_per_round=5))
    assert [int(obj.student_steps(s)) for s in (0, 4, 5, 9, 10, 14, 99)] == [8, 8, 4, 4, 2, 2, 2]
    extra = dict(teacher=dict(w=jnp.zeros(3)))
    params = dict(w=jnp.ones(3))
    for step, switched in ((0, False), (3, False), (4, True), (9, True), (10, False)):
        new, _ = obj.update_extra(extra, params, {}, None, jnp.int32(step))
        assert float(new["teacher"]["w"][0]) == float(switched), step
    rounds = obj.summary()["rounds"]
    assert [(r["student_steps"], r["checkpoint_step"]) for r in rounds] == [(8, 5), (4, 10),
                                                                          (2, 15)]


# ------------------------------------------------------------------------------------------------
# guided distillation (stage one)
# ------------------------------------------------------------------------------------------------

def test_meng_w_is_the_cfg_scale_minus_one():
    assert meng_w(1.0) == 0.0 and meng_w(5.0) == 4.0


def test_guided_target_at_scale_one_is_the_conditional_teacher():
    x = jax.random.normal(jax.random.key(3), (COND.shape[0], 2))
    t = jnp.full((COND.shape[0],), 0.4)
    got = guided_target(TEACHER, x, t, COND, jnp.ones(COND.shape), NULL)
    np.testing.assert_array_equal(got, TEACHER(x, t, COND))
    w = 2.0
    manual = (1 + w) * TEACHER(x, t, COND) - w * TEACHER(x, t, jnp.full_like(COND, NULL))
    np.testing.assert_allclose(guided_target(TEACHER, x, t, COND, jnp.full(COND.shape, 3.0),
                                             NULL), manual, rtol=1e-5, atol=1e-5)


def test_guided_loss_is_zero_for_the_exact_student_and_positive_for_the_conditional_one():
    x0 = GMM.sample(jax.random.key(4), COND.shape[0], COND)
    kw = dict(scale_min=1.0, scale_max=5.0, null=NULL)
    exact, _ = guided_distill_loss(ExactGuidedStudent(TEACHER), TEACHER, x0, COND,
                                   jax.random.key(5), **kw)
    assert float(exact) < 1e-9
    conditional = _IgnoresW(TEACHER)
    wrong, _ = guided_distill_loss(conditional, TEACHER, x0, COND, jax.random.key(5), **kw)
    assert float(wrong) > 1e-2
    at_one, _ = guided_distill_loss(conditional, TEACHER, x0, COND, jax.random.key(5),
                                    scale_min=1.0, scale_max=1.0, null=NULL)
    assert float(at_one) == 0.0  # s = 1 (w = 0): the conditional teacher is the target


@dataclasses.dataclass(frozen=True)
class _IgnoresW(DenoiserBase):
    teacher: DenoiserBase

    @property
    def schedule(self):
        return self.teacher.schedule

    def x0(self, x, t, cond=None):
        return self.teacher(x, t, cond["cond"])


jax.tree_util.register_dataclass(_IgnoresW, data_fields=["teacher"], meta_fields=[])


# ------------------------------------------------------------------------------------------------
# the student network and its initialisation
# ------------------------------------------------------------------------------------------------

def _tiny_unet(guidance_embedding):
    from flax import nnx

    from jaxdiff.models import build_model, default_unet_config

    cfg = default_unet_config()
    cfg.update(dict(base_channels=8, num_groups=4, num_heads=2, channel_mult=(1,),
                    attn_resolutions=(), guidance_embedding=guidance_embedding))
    net = build_model(cfg, (8, 8, 1), 3, nnx.Rngs(0))
    return net, nnx.to_pure_dict(nnx.split(net)[1])


def test_a_student_from_its_teacher_predicts_the_teacher_at_every_w():
    from flax import nnx

    teacher, teacher_params = _tiny_unet(False)
    student, student_params = _tiny_unet(True)
    params = init_from_teacher(student_params, teacher_params)
    nnx.update(student, params)
    x = jax.random.normal(jax.random.key(6), (3, 8, 8, 1))
    c_noise, labels = jnp.array([0.1, 0.5, 0.9]), jnp.array([0, 1, 3])
    want = teacher(x, c_noise, labels)
    for w in (0.0, 4.0):
        np.testing.assert_array_equal(student(x, c_noise, with_guidance_weight(labels, w)), want)
    np.testing.assert_array_equal(student(x, c_noise, labels), want)  # a bare condition: w = 0
    with pytest.raises(ValueError, match="no guidance embedding"):
        teacher(x, c_noise, with_guidance_weight(labels, 1.0))
    # The embedding is live: moving its output layer moves the prediction with w.
    nnx.update(student, jax.tree.map(lambda p: p + 0.1, params))
    a = student(x, c_noise, with_guidance_weight(labels, 0.0))
    b = student(x, c_noise, with_guidance_weight(labels, 3.0))
    assert float(jnp.max(jnp.abs(a - b))) > 1e-4


def test_init_from_teacher_refuses_another_network():
    _, small = _tiny_unet(False)
    other = jax.tree.map(lambda p: jnp.zeros(p.shape[:-1] + (p.shape[-1] + 1,)), small)
    with pytest.raises(ConfigError, match="config.model: the teacher's weight .* shape"):
        init_from_teacher(small, other)
    with pytest.raises(ConfigError, match="the student lacks"):
        init_from_teacher(small, dict(small, extra_layer=dict(w=jnp.zeros(2))))


# ------------------------------------------------------------------------------------------------
# config errors
# ------------------------------------------------------------------------------------------------

def _progressive_config(**objective):
    config = C.load_config_file(os.path.join(ROOT, "configs", "digits.py"))
    config.objective = ml_collections.ConfigDict(dict(
        name="progressive_distill", teacher_steps=8, rounds=3, steps_per_round=2,
        scale_min=1.0, scale_max=5.0, **objective))
    config.train.num_steps, config.train.checkpoint_every = 6, 2
    config.train.keep_checkpoints = 3
    config.sample.grid = GRID
    return config


@pytest.mark.parametrize("change, field", [
    (dict(teacher_steps=12), "config.objective.teacher_steps = 12: .* power of two"),
    (dict(rounds=4), "config.objective.rounds: must be <= 3"),
    (dict(scale_min=3.0, scale_max=2.0), "config.objective.scale_min = 3.0 is above"),
])
def test_bad_progressive_sections_are_named(change, field):
    C.validate(_progressive_config())
    config = _progressive_config()
    config.objective.update(change)
    with pytest.raises(ConfigError, match=field):
        C.validate(config)


@pytest.mark.parametrize("dotted, value, field", [
    ("train.num_steps", 5, "config.train.num_steps = 5"),
    ("train.checkpoint_every", 4, "config.train.checkpoint_every = 4 must divide"),
    ("train.keep_checkpoints", 2, "config.train.keep_checkpoints = 2"),
    ("sample.grid", "uniform_t", "config.sample.grid = 'uniform_t'"),
])
def test_a_progressive_run_must_save_every_round_on_its_grid(dotted, value, field):
    config = _progressive_config()
    section, name = dotted.split(".")
    config[section][name] = value
    with pytest.raises(ConfigError, match=field):
        C.validate(config)


def test_guided_distill_needs_a_w_input_and_a_teacher():
    from jaxdiff.jobs.train import distill, train

    config = C.load_config_file(os.path.join(ROOT, "configs", "digits.py"))
    config.objective = ml_collections.ConfigDict(dict(name="guided_distill", scale_min=2.0,
                                                      scale_max=1.0, time_sampler="uniform"))
    with pytest.raises(ConfigError, match="scale_min = 2.0 is above"):
        C.validate(config)
    config.objective.scale_min = 1.0
    with pytest.raises(ConfigError, match="--mode=distill"):
        train(config, "/nonexistent/never-made")
    with pytest.raises(MissingInputError, match="config.distill.teacher_workdir: give"):
        distill(config, "/nonexistent/never-made")
    config.distill.teacher_workdir = "/nonexistent/teacher"
    with pytest.raises(MissingInputError, match="no checkpoint directory"):
        distill(config, "/nonexistent/never-made")


# ------------------------------------------------------------------------------------------------
# both stages trained against the exact teacher (a small MLP student)
# ------------------------------------------------------------------------------------------------

class _MLP:
    """A two-layer MLP student for 2-D data with the guidance-weight embedding (built lazily so
    collecting the tests imports no flax module state)."""

    @staticmethod
    def build(width=128):
        from tests.helpers.toy_nets import mlp_2d

        return mlp_2d(GMM.num_classes, width, guidance_embedding=True)


def _fit(student, params, loss_fn, steps, seed, aux=(), batch=256):
    """Adam on ``loss_fn(denoiser, x0, labels, key, aux)`` over fresh mixture batches; ``aux``
    (a teacher, a step count) is traced, so rounds of one structure compile once."""
    run, opt = _fit_jit(student, loss_fn, steps, batch)
    return run(params, opt.init(params), jax.random.key(seed), aux)


@functools.lru_cache(maxsize=None)
def _fit_jit(student, loss_fn, steps, batch):
    import optax

    opt = optax.adam(3e-3)

    @functools.partial(jax.jit, compiler_options=FULL_OPTIMISATION)  # training: run time
    def run(params, opt_state, key, aux):
        def step(carry, i):
            p, o = carry
            k1, k2, k3 = jax.random.split(jax.random.fold_in(key, i), 3)
            c = jax.random.randint(k1, (batch,), 0, GMM.num_classes)
            loss, grads = jax.value_and_grad(
                lambda q: loss_fn(student(q), GMM.sample(k2, batch, c), c, k3, aux)[0])(p)
            updates, o = opt.update(grads, o, p)
            return (optax.apply_updates(p, updates), o), loss

        (params, _), _ = jax.lax.scan(step, (params, opt_state), jnp.arange(steps))
        return params

    return run, opt


def test_trained_students_match_the_guided_teacher_and_keep_its_mmd_at_few_steps():
    """Stage one learns the guided teacher on held-out (t, s), s = 1 included; four progressive
    rounds 16 -> 8 -> 4 -> 2 -> 1 (the round-0 teacher the exact guided mixture) give students
    whose MMD to the data at 4 steps is within 2x of the teacher's DDIM-64 (and below the
    teacher's own 4-step DDIM)."""
    from jaxdiff import parameterization as P
    from jaxdiff.denoiser import from_nnx
    from jaxdiff.metrics.two_sample import mmd2_rbf

    graphdef, params = _MLP.build()
    student = lambda p: from_nnx(graphdef, p, SCHED, P.Parameterization("v"))  # noqa: E731
    params = _fit(student, params, lambda s, x0, c, k, _: guided_distill_loss(
        s, TEACHER, x0, c, k, scale_min=1.0, scale_max=3.0, null=NULL), 1000, seed=1)

    k = jax.random.key(9)
    n = 1000
    c = jax.random.randint(k, (n,), 0, GMM.num_classes)
    t = jax.random.uniform(jax.random.fold_in(k, 2), (n,), minval=0.05, maxval=0.95)
    s = jax.random.uniform(jax.random.fold_in(k, 3), (n,), minval=1.0, maxval=3.0)
    z = schedules.diffuse(SCHED, GMM.sample(jax.random.fold_in(k, 1), n, c), t,
                          jax.random.normal(jax.random.fold_in(k, 4), (n, 2)))
    rms = lambda a: float(jnp.sqrt(jnp.mean(a**2)))  # noqa: E731
    want = guided_target(TEACHER, z, t, c, s, NULL)
    err = rms(WithGuidanceWeight(student(params), scale=s)(z, t, c) - want)
    guidance_effect = rms(want - TEACHER(z, t, c))
    assert err < 0.15 and err < 0.25 * guidance_effect, (err, guidance_effect)
    assert rms(WithGuidanceWeight(student(params), scale=1.0)(z, t, c) - TEACHER(z, t, c)) < 0.15

    teacher = ExactGuidedStudent(TEACHER)
    students = {}

    def round_loss(s_, x0, c_, k_, aux):
        tt, m = aux
        return progressive_loss(s_, tt, x0, c_, k_, m, scale_range=(1.0, 3.0))

    for r, n_steps in enumerate((8, 4, 2, 1)):
        params = _fit(student, params, round_loss, 400, seed=10 + r,
                      aux=(teacher, jnp.int32(n_steps)))
        teacher = student(params)
        students[n_steps] = params

    labels = jnp.arange(n) % GMM.num_classes
    data = np.asarray(GMM.sample(jax.random.key(77), n, labels))

    def mmd(den, steps):
        x = samplers.sample(den, jax.random.key(5), (n, 2), sampler="ddim", steps=steps,
                            grid=GRID, cond=labels, eta=0.0).x0
        return mmd2_rbf(np.asarray(x), data)

    guided = CFG(TEACHER, scale=2.0, null=NULL)
    reference, teacher_4 = mmd(guided, 64), mmd(guided, 4)
    student_4 = mmd(WithGuidanceWeight(student(students[4]), 2.0), 4)
    assert student_4 < 2.0 * reference and student_4 < teacher_4, (student_4, reference,
                                                                    teacher_4)
    student_1 = mmd(WithGuidanceWeight(student(students[1]), 2.0), 1)
    assert student_1 < 0.25 * mmd(guided, 1), student_1

"""CTRL (jaxdiff/objectives/ctrl.py) on the exact Gaussian-mixture oracle: the per-step KL is the
Gaussian KL of the two DDIM transitions computed independently in x-space; a rollout of the
pretrained model against itself is DDIM sampling with zero KL; the gradient through the rollout
is the derivative of the objective (finite differences on common noise); alpha = 1 fine-tuning
of the unconditional mixture with its clean classifier reaches the exact class-conditional
mixture within the two-sample noise floor; a fine-tuned network starts as the pretrained one
(KL exactly 0); bad input is one clear error."""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdiff import config as C
from jaxdiff import samplers, schedules
from jaxdiff.errors import ConfigError
from jaxdiff.metrics.two_sample import mmd2_noise_floor, mmd2_rbf
from jaxdiff.objectives import build_objective, objective_config
from jaxdiff.objectives.ctrl import ctrl_loss, kl_rollout, transition_kl
from jaxdiff.search.verifiers import gmm_class_log_prob
from jaxdiff.toy import gmm as G
from tests.helpers.compile_speed import FULL_OPTIMISATION

K = 3
SCHED = schedules.VPCosine()
# Wide components: classes overlap, so the denoisers are smooth and the pathwise gradient of
# the rollout has a small variance (with narrow ones single trajectories near a class boundary
# carry gradients hundreds of times the mean).
MIX = G.toy_mixture_2d(num_classes=K, std=0.8)
PRE = G.oracle_denoiser(MIX, SCHED, conditional=False)
REWARD = gmm_class_log_prob(MIX)
GRID = schedules.sampling_grid(SCHED, 40, "uniform_t")


def test_transition_kl_is_the_gaussian_kl_of_the_ddim_steps_in_x_space():
    rng = np.random.default_rng(0)
    ab = np.asarray([0.3, 0.6])                                    # alpha-bar at t, t'
    s, s_next = np.sqrt((1 - ab) / ab)                             # sigma_ve
    d1, d2 = rng.normal(size=(2, 5, 3))
    for eta in (1.0, 0.5):
        # DDIM(eta) in x-space (Song et al. 2021, Eq. 12 and 16), float64
        std = eta * np.sqrt((1 - ab[1]) / (1 - ab[0]) * (1 - ab[0] / ab[1]))
        coef = np.sqrt(ab[1]) - np.sqrt(1 - ab[1] - std**2) * np.sqrt(ab[0] / (1 - ab[0]))
        want = np.sum((coef * (d1 - d2)) ** 2, axis=1) / (2 * std**2)
        got = transition_kl(jnp.asarray(d1, jnp.float32), jnp.asarray(d2, jnp.float32), s,
                            s_next, eta)
        np.testing.assert_allclose(got, want, rtol=1e-5)
    chex.assert_trees_all_equal(transition_kl(jnp.ones((2, 3)), jnp.zeros((2, 3)), s, 0.0, 1.0),
                                jnp.zeros(2))  # a deterministic step carries no KL


def test_rollout_of_the_pretrained_model_is_ddim_sampling_with_zero_kl():
    b = 64
    y = jnp.arange(b, dtype=jnp.int32) % K
    den = G.oracle_denoiser(MIX, SCHED)
    roll = kl_rollout(den, den, jax.random.key(1), (b, 2), y, y, GRID, 0.7)
    ref = samplers.sample(den, jax.random.key(1), (b, 2), sampler="ddim", eta=0.7, grid=GRID,
                          cond=y)
    chex.assert_trees_all_close(roll.x0, ref.x0, atol=1e-5)
    chex.assert_shape(roll.step_kl, (GRID.steps, b))
    chex.assert_trees_all_equal(roll.kl, jnp.zeros(b))


def _loss(logits, key, b=256, labels=None, **kw):
    labels = jnp.arange(b, dtype=jnp.int32) % K if labels is None else labels
    model = G.class_weights_denoiser(MIX, SCHED, logits)
    return ctrl_loss(model, PRE, REWARD, key, (b, 2), labels, None, GRID, alpha=1.0, eta=1.0,
                     **kw)


def test_the_gradient_through_the_rollout_is_the_derivative_of_the_objective():
    base = G.class_weights_denoiser(MIX, SCHED).params["logits"]
    logits = base + 0.3 * jax.random.normal(jax.random.key(2), base.shape)
    direction = jax.random.normal(jax.random.key(3), base.shape)
    key, h = jax.random.key(4), 1e-2
    f = jax.jit(lambda lg: _loss(lg, key)[0])
    grad = jax.jit(jax.grad(lambda lg: _loss(lg, key)[0]))(logits)
    fd = (f(logits + h * direction) - f(logits - h * direction)) / (2 * h)
    np.testing.assert_allclose(float(jnp.sum(grad * direction)), float(fd), rtol=0.03)
    # every step differentiated is the full gradient; recomputing steps changes nothing
    @jax.jit
    def variants(lg):
        return [jax.grad(lambda p: _loss(p, key, b=32, **kw)[0])(lg)
                for kw in ({}, dict(backprop_steps=GRID.steps), dict(remat=True),
                           dict(backprop_steps=5))]

    plain, full, remat, last = variants(logits)
    chex.assert_trees_all_close(full, plain, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(remat, plain, rtol=1e-4, atol=1e-6)
    assert float(jnp.max(jnp.abs(last - plain))) > 1e-3  # truncation drops the early steps


def test_alpha_one_fine_tuning_reaches_the_exact_class_conditional_mixture():
    """The unconditional mixture fine-tuned per class with its exact clean classifier: CTRL's
    optimum at alpha = 1 is p(x0) p(c | x0) / p(c), the class-conditional mixture."""
    steps, lr = 300, 0.05
    opt = optax.adam(optax.cosine_decay_schedule(lr, steps, 0.05))

    @functools.partial(jax.jit, compiler_options=FULL_OPTIMISATION)  # 300 steps: run time
    def update(logits, state, key):
        (_, metrics), g = jax.value_and_grad(_loss, has_aux=True)(logits, key)
        u, state = opt.update(g, state)
        return optax.apply_updates(logits, u), state, metrics

    logits = G.class_weights_denoiser(MIX, SCHED).params["logits"]
    state = opt.init(logits)
    for i in range(steps):
        logits, state, metrics = update(logits, state, jax.random.fold_in(jax.random.key(5), i))
    model = G.class_weights_denoiser(MIX, SCHED, logits)
    n = 1000
    for c in range(K):
        cond = jnp.full((n,), c, jnp.int32)
        ours = samplers.sample(model, jax.random.key(6), (n, 2), sampler="ddpm", grid=GRID,
                               cond=cond).x0
        exact = MIX.sample(jax.random.key(7 + c), n, cond=c)
        floor = mmd2_noise_floor(MIX.sample(jax.random.key(20 + c), n, cond=c), exact,
                                 num_permutations=100)
        before = samplers.sample(PRE, jax.random.key(6), (n, 2), sampler="ddpm",
                                 grid=GRID).x0
        assert mmd2_rbf(ours, exact) < floor, (c, mmd2_rbf(ours, exact), floor)
        assert mmd2_rbf(before, exact) > 10 * floor  # the test tells the classes apart
    assert float(metrics["kl"]) > 0.3  # the model did move away from the pretrained one


def _tiny_objective(**fields):
    from tests.test_objective_conformance import NUM_CLASSES, SHAPE, _config, _TeacherSpec
    from jaxdiff.jobs.spec import build_spec

    config = _config("ctrl")
    config.objective.update(fields)
    spec = _TeacherSpec(build_spec(config, NUM_CLASSES, SHAPE), config, "ctrl")
    return spec, build_objective(spec, config), SHAPE, NUM_CLASSES


def test_the_fine_tuned_network_starts_as_the_pretrained_one_with_zero_kl():
    spec, objective, shape, k = _tiny_objective()
    params = objective.initial_params(spec.init_params())
    extra = objective.init(params, jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (4,) + shape)
    t = jnp.full((4,), 0.4)
    @jax.jit
    def predictions(params, teacher):
        per_class = [spec.denoiser(params)(x, t, jnp.full((4,), c, jnp.int32)) for c in range(k)]
        return per_class, spec.denoiser(teacher)(x, t, jnp.full((4,), k, jnp.int32))

    per_class, null = predictions(params, extra["teacher"])
    for pred in per_class:
        chex.assert_trees_all_equal(pred, null)
    batch = dict(x=x, label=jnp.arange(4, dtype=jnp.int32) % k)
    _, metrics = jax.jit(objective.loss)(params, extra, batch, jax.random.key(2), jnp.int32(0))
    assert float(metrics["kl"]) == 0.0


@pytest.mark.parametrize("field,value,match", [
    ("alpha", -0.5, "config.objective.alpha"),
    ("eta", 0.0, "config.objective.eta"),
    ("backprop_steps", 4, "config.objective.backprop_steps"),
    ("grid", "linear", "config.objective.grid"),
])
def test_bad_config_is_one_clear_error(field, value, match):
    from tests.test_objective_conformance import _config

    config = _config("ctrl")
    config.objective = objective_config("ctrl", steps=3, **{field: value})
    with pytest.raises(ConfigError, match=match):
        C.validate(config)


def test_bad_input_is_one_clear_error():
    with pytest.raises(ValueError, match="backprop_steps"):
        kl_rollout(PRE, PRE, jax.random.key(0), (2, 2), None, None, GRID, 1.0,
                   backprop_steps=GRID.steps + 1)
    from tests.test_objective_conformance import SHAPE, _config
    from jaxdiff.jobs.spec import build_spec

    config = _config("ctrl")
    with pytest.raises(ConfigError, match="CTRL adds a class condition"):
        build_objective(build_spec(config, 0, SHAPE), config)

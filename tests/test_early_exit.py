"""DeeDiff early exit (``jaxdiff.models.early_exit``, objective ``deediff``): the staged pass is
the network, threshold 0 is the full model, every example exits at its own first confident
stage, the batch skips what nobody needs, and the loss terms are the paper's Eq. 6-9."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxdiff import config as C
from jaxdiff import samplers
from jaxdiff.errors import ConfigError
from jaxdiff.jobs.spec import build_spec
from jaxdiff.models import NETWORKS, build_model
from jaxdiff.models import early_exit as E
from jaxdiff.objectives import build_objective, objective_config
from jaxdiff.objectives.denoising import denoising_loss

SHAPES = {"dit": (8, 8, 1), "unet": (8, 8, 1), "unet1d": (16, 2)}
NUM_CLASSES = 3
B = 6


def _model_config(name, exit_heads=True):
    cfg = NETWORKS.default_config(name)
    cfg.update(NETWORKS.entry(name).meta["test_overrides"])
    cfg.exit_heads = exit_heads
    return cfg


def _random_like(abstract, scale=0.1, seed=1):
    """Parameters N(0, scale^2) of the layout ``abstract`` (a pytree of arrays or shape
    structs), drawn on the host as tests/test_models.py does: no layer stays zero-initialised
    (zero heads would make all exits equal) and no initialiser runs."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda v: jnp.asarray(scale * rng.standard_normal(v.shape), v.dtype),
                        abstract)


def _random_net(cfg, shape):
    abstract = nnx.eval_shape(lambda: build_model(cfg, shape, NUM_CLASSES, nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    return nnx.merge(graphdef, _random_like(state))


@pytest.fixture(scope="module", params=sorted(SHAPES))
def staged(request):
    name = request.param
    shape = SHAPES[name]
    net = _random_net(_model_config(name), shape)
    x = jax.random.normal(jax.random.key(2), (B,) + shape)
    c_noise = jnp.linspace(1.0, 900.0, B)
    cond = jnp.arange(B, dtype=jnp.int32) % (NUM_CLASSES + 1)
    preds, u = jax.jit(lambda *a: E.all_exits(net, *a))(x, c_noise, cond)
    return name, net, (x, c_noise, cond), preds, u


def test_staged_pass_is_the_network(staged):
    _, net, args, preds, u = staged
    n = net.num_stages
    chex.assert_shape(preds, (n, B) + args[0].shape[1:])
    chex.assert_shape(u, (n - 1, B))
    np.testing.assert_allclose(preds[-1], jax.jit(lambda *a: net(*a))(*args), rtol=0, atol=1e-6)
    assert bool(jnp.all((u > 0) & (u < 1)))
    # the exits are distinct predictions (the test can tell one exit from another)
    gaps = jnp.abs(preds[:-1] - preds[-1]).max(axis=tuple(range(1, preds.ndim)))
    assert float(jnp.min(gaps)) > 1e-3


def _exit_rule(net, args, threshold):
    return jax.jit(lambda th: E.early_exit(net, *args, th))(jnp.float32(threshold))


def test_threshold_zero_is_the_full_model(staged):
    _, net, args, _, _ = staged
    out, exit_stage, run = _exit_rule(net, args, 0.0)
    full = jax.jit(lambda: net(*args))()
    np.testing.assert_allclose(out, full, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(exit_stage, net.num_stages - 1)
    assert int(run) == net.num_stages


def test_threshold_above_one_exits_everything_at_the_first_exit(staged):
    _, net, args, preds, _ = staged
    out, exit_stage, run = _exit_rule(net, args, 1.5)
    np.testing.assert_allclose(out, preds[0], rtol=0, atol=1e-5)
    np.testing.assert_array_equal(exit_stage, 0)
    assert int(run) == 1


@pytest.mark.parametrize("quantile", [0.3, 0.6])
def test_each_example_exits_at_its_own_first_confident_stage(staged, quantile):
    _, net, args, preds, u = staged
    # midway between two neighbouring uncertainties: jit's rounding cannot flip a comparison
    values = np.sort(np.asarray(u).ravel())
    j = int(quantile * (len(values) - 1))
    threshold = float(values[j] + values[j + 1]) / 2
    assert values[j + 1] - values[j] > 1e-5
    out, exit_stage, run = _exit_rule(net, args, threshold)
    n = net.num_stages
    u_np = np.asarray(u)
    expect = np.array([next((i for i in range(n - 1) if u_np[i, b] < threshold), n - 1)
                       for b in range(B)])
    np.testing.assert_array_equal(exit_stage, expect)
    ref = jnp.stack([preds[e, b] for b, e in enumerate(expect)])
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5)
    # the batch runs up to the last example's exit, and no further
    assert int(run) == int(expect.max()) + 1


def test_a_network_without_exit_heads_is_refused():
    net = _random_net(_model_config("dit", exit_heads=False), SHAPES["dit"])
    x = jnp.zeros((2,) + SHAPES["dit"])
    with pytest.raises(ValueError, match="exit_heads=True"):
        E.early_exit(net, x, jnp.ones(2), None, 0.5)


def _run_config(objective="deediff", exit_heads=True, **objective_fields):
    from jaxdiff.data import default_data_config

    config = C.base_config(default_data_config("signals1d"), _model_config("unet1d", exit_heads))
    config.objective = objective_config(objective, **objective_fields)
    return config


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="config.model.exit_heads"):
        C.validate(_run_config(exit_heads=False), num_classes=NUM_CLASSES,
                   example_shape=SHAPES["unet1d"])
    bad = _run_config(objective="denoising", exit_heads=False)
    bad.sample.exit_threshold = 0.5
    with pytest.raises(ConfigError, match="config.sample.exit_threshold"):
        C.validate(bad, num_classes=NUM_CLASSES, example_shape=SHAPES["unet1d"])
    with pytest.raises(ConfigError, match="config.objective.layer_weight"):
        C.validate(_run_config(layer_weight=-1.0), num_classes=NUM_CLASSES,
                   example_shape=SHAPES["unet1d"])


@pytest.fixture(scope="module")
def objective_setup():
    config = _run_config()
    spec = build_spec(config, NUM_CLASSES, SHAPES["unet1d"])
    params = _random_like(spec.abstract_params)
    batch = dict(x=jax.random.normal(jax.random.key(4), (B,) + SHAPES["unet1d"]),
                 label=jnp.arange(B, dtype=jnp.int32) % NUM_CLASSES)
    return config, spec, params, batch


def _loss(config, spec, params, batch, **fields):
    config = config.copy_and_resolve_references()
    config.objective.update(fields)
    objective = build_objective(spec, config)
    return objective.loss(params, {}, batch, jax.random.key(5), jnp.int32(0))


def test_zero_weights_give_the_denoising_loss(objective_setup):
    config, spec, params, batch = objective_setup
    loss, metrics = _loss(config, spec, params, batch, uncertainty_weight=0.0, layer_weight=0.0)
    ref, _ = denoising_loss(spec.denoiser(params), batch["x"], batch["label"],
                            jax.random.key(5), p_uncond=float(config.diffusion.p_uncond),
                            null=spec.null, weighting=config.diffusion.weighting,
                            time_sampler=config.diffusion.time_sampler)
    np.testing.assert_allclose(loss, ref, rtol=1e-6)
    np.testing.assert_allclose(metrics["loss_simple"], ref, rtol=1e-6)


def test_loss_terms_are_the_papers_equations(objective_setup):
    """L = L_simple + lambda sum_i (u_i - tanh(mean|g_i - F*|))^2
           + beta sum_i (1 - u_i) w ||g_i - F*||^2, recomputed from the exits directly."""
    config, spec, params, batch = objective_setup
    base, m = _loss(config, spec, params, batch, uncertainty_weight=0.0, layer_weight=0.0)
    with_u, _ = _loss(config, spec, params, batch, uncertainty_weight=2.0, layer_weight=0.0)
    with_l, _ = _loss(config, spec, params, batch, uncertainty_weight=0.0, layer_weight=3.0)
    # the same batch the objective draws, rebuilt from the denoising loss' own noising
    from jaxdiff.objectives.denoising import noised_batch, noising_kwargs

    den = spec.denoiser(params)
    nb = noised_batch(den, batch["x"], batch["label"], jax.random.key(5),
                      **noising_kwargs(spec, config))
    net = nnx.merge(spec.graphdef, params)
    preds, u = E.all_exits(net, *den.network_inputs(nb["x_t"], nb["t"]), nb["cond"])
    target = np.asarray(nb["target"])
    preds, u, w = np.asarray(preds, np.float64), np.asarray(u, np.float64), np.asarray(nb["weight"])
    axes = tuple(range(2, preds.ndim))
    u_hat = np.tanh(np.mean(np.abs(preds[:-1] - target), axis=axes))
    l_u = np.mean(np.sum((u - u_hat) ** 2, axis=0))
    l_ual = np.mean(np.sum((1 - u) * w * np.mean((preds[:-1] - target) ** 2, axis=axes), axis=0))
    np.testing.assert_allclose(float(with_u) - float(base), 2.0 * l_u, rtol=1e-4)
    np.testing.assert_allclose(float(with_l) - float(base), 3.0 * l_ual, rtol=1e-4)
    assert l_u > 1e-4 and l_ual > 1e-4


def test_layerwise_loss_does_not_train_the_uncertainty_heads(objective_setup):
    """(1 - u_i) is a constant weight in L_UAL's gradient: the uncertainty heads learn from
    L_u alone."""
    config, spec, params, batch = objective_setup

    def grads(**fields):
        return jax.jit(jax.grad(lambda p: _loss(config, spec, p, batch, **fields)[0]))(params)

    g = grads(uncertainty_weight=0.0, layer_weight=1.0)
    assert all(float(jnp.max(jnp.abs(v))) == 0.0 for v in jax.tree.leaves(g["uncertainty"]))
    assert max(float(jnp.max(jnp.abs(v))) for v in jax.tree.leaves(g["exit_heads"])) > 0
    g = grads(uncertainty_weight=1.0, layer_weight=0.0)
    assert max(float(jnp.max(jnp.abs(v))) for v in jax.tree.leaves(g["uncertainty"])) > 0


def test_early_exit_denoiser_samples_like_the_network_at_threshold_zero(objective_setup):
    config, spec, params, _ = objective_setup
    den = spec.denoiser(params)
    key, labels = jax.random.key(7), jnp.arange(4, dtype=jnp.int32) % NUM_CLASSES
    run = lambda d: samplers.sample(d, key, (4,) + SHAPES["unet1d"], cond=labels,  # noqa: E731
                                    sampler="ddim", steps=4).x
    plain = run(den)
    np.testing.assert_allclose(run(E.early_exit_denoiser(den, 0.0)), plain, rtol=1e-5, atol=1e-5)
    # a threshold that exits everything at the first exit changes the samples
    assert float(jnp.max(jnp.abs(run(E.early_exit_denoiser(den, 1.5)) - plain))) > 1e-3

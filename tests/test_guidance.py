"""Guidance transforms: exact identities of CFG and classifier guidance on the GMM oracle."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import samplers, schedules
from jaxdiff.denoiser import Denoiser
from jaxdiff.guidance import CFG, ClassifierGuidance
from jaxdiff.metrics import two_sample
from jaxdiff.parameterization import Parameterization
from jaxdiff.toy import gmm as G

NUM_CLASSES = 3


def _toy_net(params, x, c_noise, cond):
    """A small nonlinear class-conditional 'network' on (B, H, W, C) images."""
    emb = params["emb"][cond]                                     # (B, C)
    h = jnp.tanh(x @ params["w"] + emb[:, None, None, :] * c_noise[:, None, None, None])
    return h @ params["v"]


@pytest.fixture(scope="module")
def image_denoiser():
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    c = 4
    params = {"w": jax.random.normal(k1, (c, c)), "v": jax.random.normal(k2, (c, c)),
              "emb": jax.random.normal(k3, (NUM_CLASSES + 1, c))}
    return Denoiser(_toy_net, params, schedules.VPCosine(), Parameterization("eps"))


def _inputs(b=6):
    x = jax.random.normal(jax.random.key(1), (b, 3, 3, 4))
    t = jnp.linspace(0.1, 0.9, b)
    y = jnp.arange(b) % NUM_CLASSES
    return x, t, y


def _branches(d, x, t, y):
    """Conditional and unconditional predictions from the same batched (2B) call CFG makes."""
    both = d(jnp.concatenate([x, x]), jnp.concatenate([t, t]),
             jnp.concatenate([y, jnp.full_like(y, NUM_CLASSES)]))
    return both[: x.shape[0]], both[x.shape[0]:]


def test_cfg_scale_one_is_conditional_and_zero_is_unconditional(image_denoiser):
    x, t, y = _inputs()
    cond, uncond = _branches(image_denoiser, x, t, y)
    assert not np.allclose(cond, uncond)
    g1 = CFG(image_denoiser, scale=1.0, null=NUM_CLASSES)(x, t, y)
    g0 = CFG(image_denoiser, scale=0.0, null=NUM_CLASSES)(x, t, y)
    np.testing.assert_array_equal(np.asarray(g1), np.asarray(cond))  # every channel, exactly
    np.testing.assert_array_equal(np.asarray(g0), np.asarray(uncond))
    # and equal to separate unbatched calls up to the network's batch-size rounding
    np.testing.assert_allclose(g1, image_denoiser(x, t, y), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(g0, image_denoiser(x, t, jnp.full_like(y, NUM_CLASSES)),
                               rtol=1e-5, atol=1e-5)
    g3 = CFG(image_denoiser, scale=3.0, null=NUM_CLASSES)(x, t, y)
    np.testing.assert_allclose(g3, uncond + 3.0 * (cond - uncond), rtol=1e-5, atol=1e-5)


def test_cfg_per_example_scale_and_interval(image_denoiser):
    x, t, y = _inputs()
    scales = jnp.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    per = CFG(image_denoiser, scale=scales, null=NUM_CLASSES)(x, t, y)
    for i, s in enumerate(np.asarray(scales)):
        one = CFG(image_denoiser, scale=float(s), null=NUM_CLASSES)(x, t, y)
        np.testing.assert_allclose(per[i], one[i], rtol=1e-6, atol=1e-6)
    # guidance only for t in (0.3, 0.7]: the conditional model elsewhere
    g = CFG(image_denoiser, scale=4.0, null=NUM_CLASSES, t_lo=0.3, t_hi=0.7)(x, t, y)
    full = CFG(image_denoiser, scale=4.0, null=NUM_CLASSES)(x, t, y)
    cond, _ = _branches(image_denoiser, x, t, y)
    inside = (np.asarray(t) > 0.3) & (np.asarray(t) <= 0.7)
    assert inside.any() and (~inside).any()
    np.testing.assert_array_equal(np.asarray(g)[~inside], np.asarray(cond)[~inside])
    np.testing.assert_allclose(np.asarray(g)[inside], np.asarray(full)[inside], rtol=1e-6)


def test_cfg_vector_condition_with_zero_null():
    def net(params, x, c_noise, cond):
        return jnp.tanh(x + cond @ params)

    d = Denoiser(net, jnp.ones((2, 2)), schedules.EDM(), Parameterization("x0"))
    x = jnp.ones((3, 2))
    cond = jnp.arange(6.0).reshape(3, 2)
    g = CFG(d, scale=0.0, null=jnp.zeros(2))(x, 0.5, cond)
    np.testing.assert_array_equal(np.asarray(g), np.asarray(d(x, 0.5, jnp.zeros((3, 2)))))


def test_classifier_guidance_with_exact_posterior_is_exact_conditional():
    """score(x) + grad log p(c | x_t) = score(x | c): the x0-predictions agree pointwise."""
    gmm = G.toy_mixture_2d(num_classes=NUM_CLASSES)
    sched = schedules.VPLinear()
    uncond = G.oracle_denoiser(gmm, sched, conditional=False)
    cond_d = G.oracle_denoiser(gmm, sched)
    guided = ClassifierGuidance(uncond, G.OracleClassifier(sched), gmm, scale=1.0,
                                num_classes=NUM_CLASSES)
    x = 2.0 * jax.random.normal(jax.random.key(3), (64, 2))
    t = jax.random.uniform(jax.random.key(4), (64,), minval=0.05, maxval=0.95)
    y = jnp.arange(64) % NUM_CLASSES
    np.testing.assert_allclose(guided(x, t, y), cond_d(x, t, y), rtol=2e-4, atol=2e-4)
    # the null token is not guided
    null = jnp.full_like(y, NUM_CLASSES)
    np.testing.assert_array_equal(np.asarray(guided(x, t, null)), np.asarray(uncond(x, t, null)))


def test_classifier_guidance_samples_class_conditional_mixture():
    gmm = G.toy_mixture_2d(num_classes=NUM_CLASSES)
    sched = schedules.VPLinear()
    uncond = G.oracle_denoiser(gmm, sched, conditional=False)
    guided = ClassifierGuidance(uncond, G.OracleClassifier(sched), gmm, scale=1.0,
                                num_classes=NUM_CLASSES)
    n, label = 1000, 1
    y = jnp.full((n,), label)
    out = samplers.sample(guided, jax.random.key(5), (n, 2), sampler="ddim", steps=100,
                          grid="uniform_logsnr", cond=y)
    ref = gmm.sample(jax.random.key(6), n, cond=label)
    other = gmm.sample(jax.random.key(7), n, cond=0)
    mmd = two_sample.mmd2_rbf(out.x0, ref)
    floor = two_sample.mmd2_noise_floor(out.x0, ref, num_permutations=60)
    assert mmd < floor, (mmd, floor)
    assert two_sample.mmd2_rbf(out.x0, other) > 10 * floor  # the test can tell classes apart


def test_changing_guidance_scale_does_not_recompile():
    gmm = G.toy_mixture_2d(num_classes=NUM_CLASSES)
    d = G.oracle_denoiser(gmm, schedules.EDM())
    y = jnp.arange(8) % NUM_CLASSES
    samplers.sample(CFG(d, 1.5, NUM_CLASSES), jax.random.key(0), (8, 2), sampler="ddim",
                    steps=7, cond=y)
    before = samplers.compile_count()
    outs = [samplers.sample(CFG(d, s, NUM_CLASSES), jax.random.key(0), (8, 2), sampler="ddim",
                            steps=7, cond=y).x0 for s in (0.0, 2.5, 7.0)]
    assert samplers.compile_count() == before
    assert not np.allclose(outs[0], outs[2])


def test_guidance_composes():
    gmm = G.toy_mixture_2d(num_classes=NUM_CLASSES)
    sched = schedules.VPLinear()
    d = G.oracle_denoiser(gmm, sched)
    cg = ClassifierGuidance(d, G.OracleClassifier(sched), gmm, scale=0.5, num_classes=NUM_CLASSES)
    both = CFG(cg, scale=1.0, null=NUM_CLASSES)
    x = jax.random.normal(jax.random.key(8), (5, 2))
    y = jnp.array([0, 1, 2, 0, 1])
    np.testing.assert_array_equal(np.asarray(both(x, 0.4, y)), np.asarray(cg(x, 0.4, y)))
    out = jax.jit(lambda g, x: g(x, 0.4, y))(CFG(cg, 2.0, NUM_CLASSES), x)
    assert out.shape == x.shape and np.all(np.isfinite(out))


def test_guidance_bad_input(image_denoiser):
    x, t, y = _inputs()
    with pytest.raises(ValueError, match="cond is None"):
        CFG(image_denoiser, 2.0, NUM_CLASSES)(x, t, None)
    with pytest.raises(ValueError, match="batch size mismatch"):
        CFG(image_denoiser, 2.0, NUM_CLASSES)(x, t, y[:3])

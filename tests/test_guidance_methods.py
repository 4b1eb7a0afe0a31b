"""Autoguidance, APG, EluCD and CFG++ on the exact Gaussian-mixture oracle: identities that hold exactly
(or to float rounding), the paper's formulas against independent computations, composition under
one jit with every scale traced, bad input, and one sampler run each."""
import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import samplers, schedules
from jaxdiff.errors import ConfigError
from jaxdiff.guidance import (APG, CFG, Autoguidance, EluCD, build_guidance, check_guidance,
                              guidance_config)
from jaxdiff.guidance.apg import project
from jaxdiff.guidance.elucd import softplus, tempered_log_prob
from jaxdiff.toy import gmm as G

K = 3
MIX = G.toy_mixture_2d(num_classes=K)
WIDE = dataclasses.replace(MIX, stds=2.0 * MIX.stds)   # a "bad version": blurrier components
SCHED = schedules.VPLinear()
GOOD = G.oracle_denoiser(MIX, SCHED)
BAD = G.oracle_denoiser(WIDE, SCHED)
UNCOND = G.oracle_denoiser(MIX, SCHED, conditional=False)
CLF = G.CleanClassifier()


def _inputs(b=12, seed=0):
    x = 2.0 * jax.random.normal(jax.random.key(seed), (b, 2))
    t = jnp.linspace(0.05, 0.95, b)
    y = jnp.arange(b, dtype=jnp.int32) % K
    return x, t, y


def _branches(d, x, t, y):
    """Conditional and unconditional predictions of the one batched (2B) call CFG / APG make."""
    out = d(jnp.concatenate([x, x]), jnp.concatenate([t, t]),
            jnp.concatenate([y, jnp.full_like(y, K)]))
    return out[: x.shape[0]], out[x.shape[0]:]


@dataclasses.dataclass(frozen=True)
class _Spec:
    num_classes: int = K
    classes_of_classifier: int = K

    @property
    def null(self):
        return self.num_classes

    def load_denoiser(self, workdir, step):
        return BAD

    def load_classifier(self, path):
        return CLF, MIX, self.classes_of_classifier


# ------------------------------------------------------------------------------------------------
# autoguidance
# ------------------------------------------------------------------------------------------------

def test_autoguidance_identities_are_exact():
    x, t, y = _inputs()
    good = GOOD(x, t, y)
    assert not np.allclose(good, BAD(x, t, y))
    chex.assert_trees_all_equal(Autoguidance(GOOD, BAD, scale=1.0)(x, t, y), good)
    # a bad model equal to the good one: the difference is exactly zero at any scale
    chex.assert_trees_all_equal(Autoguidance(GOOD, GOOD, scale=3.7)(x, t, y), good)
    chex.assert_trees_all_close(Autoguidance(GOOD, BAD, scale=0.0)(x, t, y), BAD(x, t, y),
                                rtol=1e-6, atol=1e-6)
    g = Autoguidance(GOOD, BAD, scale=2.5)(x, t, y)
    chex.assert_trees_all_close(g, BAD(x, t, y) + 2.5 * (good - BAD(x, t, y)), rtol=1e-5,
                                atol=1e-5)
    # unconditional models too (cond None), per-example scales
    s = jnp.linspace(0.0, 3.0, x.shape[0])
    per = Autoguidance(UNCOND, G.oracle_denoiser(WIDE, SCHED, conditional=False), scale=s)
    one = Autoguidance(UNCOND, G.oracle_denoiser(WIDE, SCHED, conditional=False), scale=3.0)
    chex.assert_trees_all_close(per(x, t)[-1], one(x, t)[-1], rtol=1e-6)


def test_autoguidance_interval_uses_the_good_model_outside():
    x, t, y = _inputs()
    g = Autoguidance(GOOD, BAD, scale=3.0, t_lo=0.3, t_hi=0.7)(x, t, y)
    full = Autoguidance(GOOD, BAD, scale=3.0)(x, t, y)
    inside = (np.asarray(t) > 0.3) & (np.asarray(t) <= 0.7)
    assert inside.any() and (~inside).any()
    chex.assert_trees_all_equal(np.asarray(g)[~inside], np.asarray(GOOD(x, t, y))[~inside])
    chex.assert_trees_all_equal(np.asarray(g)[inside], np.asarray(full)[inside])


def test_autoguidance_bad_input():
    x, t, y = _inputs()
    other = G.oracle_denoiser(WIDE, schedules.EDM())
    with pytest.raises(ValueError, match="schedule"):
        Autoguidance(GOOD, other, scale=2.0)(x, t, y)
    with pytest.raises(ValueError, match="batch size mismatch"):
        Autoguidance(GOOD, BAD, scale=2.0)(x, t, y[:3])
    bad = guidance_config("autoguidance", bad_step=-2)
    with pytest.raises(ConfigError, match="config.guidance.bad_step"):
        check_guidance(bad)
    with pytest.raises(ConfigError, match="config.guidance.t_lo"):
        check_guidance(guidance_config("autoguidance", t_lo=0.8, t_hi=0.5))

    @dataclasses.dataclass(frozen=True)
    class NoModels:      # a run spec that loads the bad model from its workdir
        num_classes: int = K
        null: int = K

    with pytest.raises(ConfigError, match="config.guidance.bad_workdir"):
        build_guidance(GOOD, guidance_config("autoguidance"), NoModels())
    with pytest.raises(FileNotFoundError, match="no checkpoint directory"):
        build_guidance(GOOD, guidance_config("autoguidance", bad_workdir="/nonexistent/run"),
                       NoModels())
    with pytest.raises(ConfigError, match="config.guidance.name"):
        build_guidance(GOOD, guidance_config("autoguidance"), NoModels(num_classes=0))


def test_autoguidance_sharpens_samples():
    """Guiding away from the blurrier model concentrates samples on the components: the mean
    distance of a sample to its nearest component mean shrinks."""
    n = 400
    y = jnp.arange(n, dtype=jnp.int32) % K

    def spread(den):
        out = samplers.sample(den, jax.random.key(1), (n, 2), sampler="ddim", steps=40, cond=y)
        d = jnp.linalg.norm(out.x0[:, None, :] - MIX.means[None], axis=-1).min(axis=1)
        assert np.all(np.isfinite(out.x0))
        return float(jnp.mean(d))

    good = build_guidance(GOOD, guidance_config("autoguidance", scale=1.0), _Spec())
    guided = build_guidance(GOOD, guidance_config("autoguidance", scale=2.0), _Spec())
    assert spread(guided) < 0.9 * spread(good)


# ------------------------------------------------------------------------------------------------
# APG
# ------------------------------------------------------------------------------------------------

def test_apg_scale_one_is_conditional_and_eta_one_is_cfg():
    x, t, y = _inputs()
    c, u = _branches(GOOD, x, t, y)
    one = APG(GOOD, scale=1.0, eta=0.3, norm_threshold=0.5, null=K)
    chex.assert_trees_all_equal(one(x, t, y), c)
    cfg = CFG(GOOD, scale=3.0, null=K)(x, t, y)
    for r in (0.0, float("inf")):
        apg = APG(GOOD, scale=3.0, eta=1.0, norm_threshold=r, null=K)
        chex.assert_trees_all_close(apg(x, t, y), cfg, rtol=1e-5, atol=1e-5)
    assert not np.allclose(APG(GOOD, scale=3.0, eta=0.0, null=K)(x, t, y),
                           CFG(GOOD, scale=3.0, null=K)(x, t, y), atol=1e-3)


def test_apg_projection_and_norm_threshold():
    x, t, y = _inputs()
    c, u = _branches(GOOD, x, t, y)
    par, orth = project(c - u, c)
    chex.assert_trees_all_close(par + orth, c - u, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(jnp.sum(orth * c, -1), 0.0, atol=1e-5)
    np.testing.assert_allclose(jnp.abs(jnp.sum(par * c, -1)),
                               jnp.linalg.norm(par, axis=-1) * jnp.linalg.norm(c, axis=-1),
                               rtol=1e-5)
    # eta = 0: the update is orthogonal to D_c; with r the update's norm is at most r
    s, r = 4.0, 0.6
    upd = (APG(GOOD, scale=s, eta=0.0, null=K)(x, t, y) - c) / (s - 1)
    np.testing.assert_allclose(jnp.sum(upd * c, -1), 0.0, atol=1e-5)
    upd_r = (APG(GOOD, scale=s, eta=1.0, norm_threshold=r, null=K)(x, t, y) - c) / (s - 1)
    norms = np.asarray(jnp.linalg.norm(upd_r, axis=-1))
    full = np.asarray(jnp.linalg.norm(c - u, axis=-1))
    assert (full > r).any() and (full <= r).any()
    np.testing.assert_allclose(norms[full > r], r, rtol=1e-4)
    np.testing.assert_allclose(norms[full <= r], full[full <= r], rtol=1e-4)
    # a zero conditional prediction has no parallel part (no division by zero)
    z = jnp.zeros((2, 3, 3, 1))
    par0, orth0 = project(jnp.ones_like(z), z)
    chex.assert_trees_all_equal(par0, z)
    chex.assert_trees_all_equal(orth0, jnp.ones_like(z))


def test_apg_bad_input():
    x, t, y = _inputs()
    with pytest.raises(ValueError, match="cond is None"):
        APG(GOOD, scale=2.0, null=K)(x, t, None)
    with pytest.raises(ConfigError, match="config.guidance.norm_threshold"):
        check_guidance(guidance_config("apg", norm_threshold=-1.0))


def _apg_momentum_ddim_reference(x_T, y, grid, scale, beta):
    """DDIM (eta = 0) in x-space with APG's momentum written out as the paper's reference code
    does (a running buffer updated once per guided prediction, then the projection), in NumPy
    float64: independent of the sampler driver's state carry."""
    x, m = np.asarray(x_T, np.float64), np.zeros(np.shape(x_T))
    t, alpha = np.asarray(grid.t, np.float64), np.asarray(grid.alpha, np.float64)
    sig = np.asarray(grid.sigma_ve, np.float64) * alpha          # sigma in x-space
    for i in range(len(t) - 1):
        c, u = (np.asarray(v, np.float64) for v in _branches(
            GOOD, jnp.asarray(x, jnp.float32), jnp.full((x.shape[0],), t[i], jnp.float32), y))
        m = (c - u) + beta * m
        dot = np.sum(m * c, -1, keepdims=True)
        orth = m - dot / np.sum(c * c, -1, keepdims=True) * c      # eta = 0, no threshold
        d = c + (scale - 1.0) * orth
        eps = (x - alpha[i] * d) / sig[i]
        x = alpha[i + 1] * d + sig[i + 1] * eps
    return x


def test_apg_momentum_sampling_matches_the_reference_loop():
    """APG with momentum through samplers.sample (the driver's state carry) equals the paper's
    running-buffer loop; beta = 0 with momentum on is APG without momentum bit for bit; beta
    changes the samples without recompiling."""
    n, steps, scale = 32, 12, 4.0
    y = jnp.arange(n, dtype=jnp.int32) % K
    x_T = jax.random.normal(jax.random.key(5), (n, 2))
    grid = schedules.sampling_grid(SCHED, steps, "uniform_t")
    x_T = x_T * grid.sigma_ve[0] * grid.alpha[0]

    def run(beta, momentum=True):
        den = APG(GOOD, scale=scale, eta=0.0, null=K, beta=beta, momentum=momentum)
        return samplers.sample(den, jax.random.key(0), (n, 2), sampler="ddim", grid=grid,
                               cond=y, x_start=x_T).x0

    with_momentum = run(-0.5)
    np.testing.assert_allclose(with_momentum, _apg_momentum_ddim_reference(x_T, y, grid, scale,
                                                                           -0.5),
                               rtol=1e-4, atol=1e-4)
    before = samplers.compile_count()
    other = run(-0.25)
    assert samplers.compile_count() == before          # beta is traced
    without = run(0.0, momentum=False)
    chex.assert_trees_all_equal(run(0.0), without)
    assert not np.allclose(with_momentum, without, atol=1e-2)
    assert not np.allclose(other, with_momentum, atol=1e-3)


def test_apg_momentum_state_errors():
    x, t, y = _inputs()
    apg = APG(GOOD, scale=2.0, null=K, beta=-0.5, momentum=True)
    with pytest.raises(ValueError, match="outermost"):
        apg(x, t, y)
    with pytest.raises(ValueError, match="outermost"):   # wrapped: evaluated as a pure function
        samplers.sample(CFG(apg, 2.0, K), jax.random.key(0), (12, 2), sampler="ddim", steps=4,
                        cond=y)
    with pytest.raises(ConfigError, match="config.guidance.momentum"):
        check_guidance(guidance_config("apg", momentum=-1.0))
    built = build_guidance(GOOD, guidance_config("apg", momentum=-0.5), _Spec())
    assert built.stateful and float(built.beta) == -0.5
    assert not build_guidance(GOOD, guidance_config("apg"), _Spec()).stateful


def test_apg_samples_match_cfg_at_eta_one():
    n = 64
    y = jnp.arange(n, dtype=jnp.int32) % K
    kw = dict(sampler="ddim", steps=20, cond=y)
    a = samplers.sample(build_guidance(GOOD, guidance_config("apg", scale=3.0, eta=1.0), _Spec()),
                        jax.random.key(2), (n, 2), **kw).x0
    c = samplers.sample(CFG(GOOD, 3.0, K), jax.random.key(2), (n, 2), **kw).x0
    chex.assert_trees_all_close(a, c, rtol=1e-4, atol=1e-4)
    e = samplers.sample(build_guidance(GOOD, guidance_config("apg", scale=3.0), _Spec()),
                        jax.random.key(2), (n, 2), **kw).x0
    assert np.all(np.isfinite(e)) and not np.allclose(e, c, atol=1e-3)


# ------------------------------------------------------------------------------------------------
# EluCD
# ------------------------------------------------------------------------------------------------

def _elucd(inner=GOOD, **kw):
    return EluCD(inner, CLF, MIX, num_classes=K, **kw)


def test_elucd_scale_zero_and_null_token_are_the_inner_model():
    x, t, y = _inputs()
    chex.assert_trees_all_equal(_elucd(scale=0.0)(x, t, y), GOOD(x, t, y))
    null = jnp.full_like(y, K)
    chex.assert_trees_all_equal(_elucd(scale=2.0)(x, t, null), GOOD(x, t, null))


def test_elucd_is_the_papers_update_on_the_detached_x0_prediction():
    x, t, y = _inputs()
    s, tau1, tau2, gamma = 1.5, 1.0, 0.5, 0.3
    x0 = GOOD(x, t, y)
    g = jax.grad(lambda z: jnp.sum(tempered_log_prob(CLF(MIX, z), y, tau1, tau2)))(x0)
    alpha, sigma = SCHED.alpha_sigma(t)
    coef = (s * (1 + gamma * jnp.sin(jnp.pi * t)) * sigma**2 / alpha)[:, None]
    out = _elucd(scale=s, tau1=tau1, tau2=tau2, gamma=gamma)(x, t, y)
    chex.assert_trees_all_close(out, x0 + coef * g, rtol=1e-5, atol=1e-5)
    # differentiating through the denoiser (which the paper does not do) would give another answer
    g_through = jax.grad(lambda z: jnp.sum(tempered_log_prob(CLF(MIX, GOOD(z, t, y)), y, tau1,
                                                             tau2)))(x)
    assert not np.allclose(out, x0 + coef * g_through, atol=1e-3)
    # tau1 = tau2 = 1 is log softmax: for the exact posterior, the gradient of log p(y | x0)
    lp = jax.grad(lambda z: jnp.sum(jnp.take_along_axis(
        jax.nn.log_softmax(CLF(MIX, z)), y[:, None], 1)))(x0)
    one = _elucd(scale=1.0, tau1=1.0, tau2=1.0, gamma=0.0)(x, t, y)
    chex.assert_trees_all_close(one, x0 + (sigma**2 / alpha)[:, None] * lp, rtol=1e-5,
                                atol=1e-5)


def test_elucd_bad_input():
    x, t, y = _inputs()

    def four_logits(params, z):
        return jnp.concatenate([CLF(params, z), jnp.zeros((z.shape[0], 1))], axis=1)

    with pytest.raises(ValueError, match=r"logits of shape \(12, 4\), expected \(12, 3\)"):
        EluCD(GOOD, four_logits, MIX, num_classes=K)(x, t, y)
    for field in ("tau1", "tau2"):
        with pytest.raises(ConfigError, match=f"config.guidance.{field}"):
            check_guidance(guidance_config("elucd", **{field: -0.5}))
    check_guidance(guidance_config("elucd", tau2=0.0))   # the paper's EDM setting
    with pytest.raises(ConfigError, match="config.guidance.classifier_dir"):
        build_guidance(GOOD, guidance_config("elucd"), _Spec(classes_of_classifier=4))
    with pytest.raises(ValueError, match="cond is None"):
        _elucd()(x, t, None)
    np.testing.assert_allclose(softplus(jnp.array([-30.0, 0.0, 30.0]), 3.0),
                               [0.0, np.log(2.0) / 3.0, 30.0], atol=1e-6)


def test_elucd_guides_an_unconditional_model_to_the_label():
    """An unconditional model guided by the exact clean classifier samples mostly the asked
    class (the unguided model: about a third)."""
    n = 300
    y = jnp.arange(n, dtype=jnp.int32) % K

    def accuracy(den):
        out = samplers.sample(den, jax.random.key(3), (n, 2), sampler="ddim", steps=40, cond=y)
        assert np.all(np.isfinite(out.x0))
        return float(jnp.mean(jnp.argmax(CLF(MIX, out.x0), -1) == y))

    plain = accuracy(_elucd(UNCOND, scale=0.0))
    guided = accuracy(_elucd(UNCOND, scale=3.0))
    assert plain < 0.5 and guided > plain + 0.3, (plain, guided)


# ------------------------------------------------------------------------------------------------
# CFG++
# ------------------------------------------------------------------------------------------------

def _cfgpp_reference(grid, lam, x_t, y):
    """CFG++'s DDIM (Chung et al., Algorithm 1) in x-space and float64 on the mixture's exact
    posterior means: x' = alpha' x0_hat + sigma' eps_u, x0_hat = x0_u + lam (x0_c - x0_u)."""
    alpha = np.asarray(grid.alpha, np.float64)
    sigma = alpha * np.asarray(grid.sigma_ve, np.float64)
    mu, s2 = np.asarray(MIX.means, np.float64), np.asarray(MIX.stds, np.float64) ** 2
    logw, classes = np.asarray(MIX.log_weights, np.float64), np.asarray(MIX.classes)

    def mean(x, a, sg, allowed):
        var = a**2 * s2 + sg**2
        diff = x[:, None, :] - a * mu[None]
        logp = logw - 0.5 * (diff**2).sum(-1) / var - np.log(var)          # d = 2
        logp = np.where(allowed, logp, -np.inf)
        r = np.exp(logp - logp.max(1, keepdims=True))
        r /= r.sum(1, keepdims=True)
        return (r[..., None] * (mu[None] + (a * s2 / var)[None, :, None] * diff)).sum(1)

    x = np.asarray(x_t, np.float64)
    own = classes[None, :] == np.asarray(y)[:, None]
    for i in range(grid.steps):
        c = mean(x, alpha[i], sigma[i], own)
        u = mean(x, alpha[i], sigma[i], np.ones_like(own))
        x0_hat = u + lam * (c - u)
        eps_u = (x - alpha[i] * u) / sigma[i]
        x = alpha[i + 1] * x0_hat + sigma[i + 1] * eps_u
    return x


@pytest.mark.parametrize("sampler", ["ddim", "euler"])
def test_cfgpp_samples_are_algorithm_1_in_float64(sampler):
    from jaxdiff.guidance.cfgpp import cfgpp

    grid = schedules.sampling_grid(SCHED, 12, "uniform_t")
    y = jnp.arange(64, dtype=jnp.int32) % K
    x_t = jax.random.normal(jax.random.key(4), (64, 2))
    for lam in (0.3, 0.8):
        got = samplers.sample(cfgpp(GOOD, grid, scale=lam, null=K), jax.random.key(0), (64, 2),
                              sampler=sampler, grid=grid, cond=y, x_T=x_t).x0
        want = _cfgpp_reference(grid, lam, np.asarray(x_t), y)
        np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=0, atol=2e-4)
        # the test can fail: CFG at the same scale renoises with the guided noise
        plain = samplers.sample(CFG(GOOD, scale=lam, null=K), jax.random.key(0), (64, 2),
                                sampler=sampler, grid=grid, cond=y, x_T=x_t).x0
        assert np.abs(np.asarray(plain, np.float64) - want).max() > 1e-2


def test_cfgpp_scale_zero_is_the_unconditional_model_bit_for_bit():
    from jaxdiff.guidance.cfgpp import cfgpp

    grid = schedules.sampling_grid(SCHED, 8, "karras")
    x, _, y = _inputs()
    for i in range(8):
        t = jnp.full((x.shape[0],), grid.t[i])
        chex.assert_trees_all_equal(cfgpp(GOOD, grid, scale=0.0, null=K)(x, t, y),
                                    GOOD(x, t, jnp.full_like(y, K)))
    np.testing.assert_allclose(
        cfgpp(GOOD, grid, scale=0.0, null=K).next_ratio(jnp.asarray(grid.t[:8])),
        np.asarray(grid.sigma_ve[1:]) / np.asarray(grid.sigma_ve[:-1]), rtol=1e-6)


def test_cfgpp_registration_refuses_samplers_it_is_not_exact_for():
    import ml_collections

    @dataclasses.dataclass(frozen=True)
    class Spec:
        sampler: str
        options: dict
        num_classes: int = K
        null: int = K

        @property
        def config(self):
            return ml_collections.ConfigDict(dict(sample=dict(
                sampler=self.sampler, steps=10, grid="uniform_t", options=self.options)))

    section = guidance_config("cfgpp", scale=0.5)
    den = build_guidance(GOOD, section, Spec("ddim", {"eta": 0.0}))
    assert float(den.scale) == 0.5 and den.grid_t.shape == (11,)
    for sampler, options in (("heun", {}), ("dpmpp_2m", {}), ("ddim", {"eta": 1.0})):
        with pytest.raises(ConfigError, match=r"config\.sample\.sampler: CFG\+\+") as err:
            build_guidance(GOOD, section, Spec(sampler, options))
        assert "\n" not in str(err.value)


# ------------------------------------------------------------------------------------------------
# composition
# ------------------------------------------------------------------------------------------------

def test_composition_in_one_jit_with_every_scale_traced():
    x, t, y = _inputs()
    traces = []

    @jax.jit
    def call(den, x, t, y):
        traces.append(1)
        return den(x, t, y)

    def stack(s_cfg, s_elucd, s_auto, eta):
        inner = Autoguidance(GOOD, BAD, scale=s_auto)
        return CFG(APG(_elucd(inner, scale=s_elucd), scale=s_cfg, eta=eta, null=K), s_cfg, K)

    outs = [call(stack(*p), x, t, y) for p in ((1.0, 0.0, 1.0, 0.0), (2.0, 1.0, 2.0, 0.5),
                                                (3.0, 0.5, 1.5, 1.0))]
    assert len(traces) == 1
    assert not np.allclose(outs[1], outs[2])
    # every transform at its identity: the conditional model
    chex.assert_trees_all_close(outs[0], GOOD(x, t, y), rtol=1e-6, atol=1e-6)
    # a guided sampler does not recompile for new scales either
    n = 16
    yy = jnp.arange(n, dtype=jnp.int32) % K
    samplers.sample(stack(2.0, 1.0, 2.0, 0.0), jax.random.key(0), (n, 2), sampler="ddim",
                    steps=5, cond=yy)
    before = samplers.compile_count()
    out = samplers.sample(stack(3.0, 0.5, 1.5, 1.0), jax.random.key(0), (n, 2), sampler="ddim",
                          steps=5, cond=yy)
    assert samplers.compile_count() == before and np.all(np.isfinite(out.x0))


# ------------------------------------------------------------------------------------------------
# autoguidance's bad model restored from a trained workdir
# ------------------------------------------------------------------------------------------------

def test_autoguidance_loads_a_smaller_bad_model_from_its_workdir(tmp_path):
    """The registered builder restores the bad model of ``bad_workdir`` with the network of that
    workdir's own config.json (here: half the channels of the run's network)."""
    import os

    from jaxdiff.jobs.spec import open_checkpoints, spec_for_data
    from tests.sample_job_common import tiny_config

    def constant_params(spec, value):        # any weights will do; no initialiser compiled
        return jax.tree.map(lambda a: jnp.full(a.shape, value, a.dtype), spec.abstract_params)

    run_cfg = tiny_config()
    bad_cfg = tiny_config()
    bad_cfg.model.base_channels = 4
    bad_spec, _ = spec_for_data(bad_cfg)
    bad_params = constant_params(bad_spec, 0.02)
    bad_dir = str(tmp_path / "bad")
    ckpt = open_checkpoints(bad_dir, async_save=False)
    ckpt.save(0, dict(model=dict(params=bad_params,
                                 ema=tuple(bad_params for _ in bad_cfg.train.ema_decays)),
                      train=dict(step=jnp.zeros((), jnp.int32))), force=True)
    ckpt.close()
    with open(os.path.join(bad_dir, "config.json"), "w") as f:
        f.write(bad_cfg.to_json_best_effort())

    spec, _ = spec_for_data(run_cfg)
    good = spec.denoiser(constant_params(spec, 0.01))
    section = guidance_config("autoguidance", bad_workdir=bad_dir, scale=1.0)
    check_guidance(section)
    den = build_guidance(good, section, spec)
    widths = {tuple(v.shape)[-1] for v in jax.tree.leaves(den.bad.params)}
    assert max(widths) < max(tuple(v.shape)[-1] for v in jax.tree.leaves(good.params))
    x = jax.random.normal(jax.random.key(0), (2,) + spec.example_shape)
    y = jnp.array([0, 1], jnp.int32)
    chex.assert_trees_all_equal(den(x, 0.5, y), good(x, 0.5, y))
    guided = dataclasses.replace(den, scale=2.0)(x, 0.5, y)
    assert np.all(np.isfinite(guided)) and not np.array_equal(guided, good(x, 0.5, y))


def test_elucd_defaults_to_the_evaluations_pinned_classifier():
    """Without classifier_dir, EluCD guides with the evaluation's own feature network: on
    MNIST-5k the pinned one the package ships (nothing is trained or read from a cache)."""
    from jaxdiff.classifier_train import own_feature_space
    from jaxdiff.config import load_config_file
    from tests.helpers.cli import ROOT

    config = load_config_file(f"{ROOT}/configs/mnist5k.py")

    @dataclasses.dataclass(frozen=True)
    class Spec:
        config: object
        num_classes: int = 10
        null: int = 10

    den = build_guidance(GOOD, guidance_config("elucd"), Spec(config))
    pinned = own_feature_space(config)
    assert pinned.pinned and den.num_classes == 10
    x = jnp.zeros((2, 32, 32, 1))
    np.testing.assert_array_equal(np.asarray(den.logits_fn(den.params, x)),
                                  np.asarray(pinned.network.apply(x)[1]))

"""Schedules, sampling grids, parameterizations and the GMM oracle against their definitions."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import parameterization as P
from jaxdiff import schedules
from jaxdiff.toy import gmm as G

ALL = {name: make() for name, make in schedules.SCHEDULES.items()}


def _times(s: schedules.Schedule, n: int = 33) -> jax.Array:
    return jnp.linspace(s.t_min, s.t_max, n, dtype=jnp.float32)


@pytest.mark.parametrize("name", ["vp_linear", "vp_cosine"])
def test_vp_schedules_preserve_variance(name):
    s = ALL[name]
    alpha, sigma = s.alpha_sigma(_times(s))
    np.testing.assert_allclose(alpha**2 + sigma**2, 1.0, rtol=1e-6)


@pytest.mark.parametrize("name", sorted(ALL))
def test_logsnr_and_time_round_trip(name):
    s = ALL[name]
    t = _times(s)
    lam = s.logsnr(t)
    assert np.all(np.diff(np.asarray(lam)) < 0), "logsnr must decrease with t"
    np.testing.assert_allclose(s.t_from_logsnr(lam), t, atol=2e-5)
    np.testing.assert_allclose(s.logsnr(s.t_from_logsnr(lam)), lam, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(s.sigma_ve(t), s.sigma(t) / s.alpha(t), rtol=1e-5)


def test_vp_linear_is_ddpm_discrete_alpha_bar():
    """alpha(n/T)^2 = prod_{i<=n} (1 - beta_i), beta = linspace(1e-4, 0.02, 1000) (Ho et al. 2020)."""
    s = schedules.VPLinear()
    betas = 1e-4 + (0.02 - 1e-4) * np.arange(1000) / 999.0
    abar = np.cumprod(1.0 - betas)
    t = jnp.arange(1, 1001, dtype=jnp.float32) / 1000
    np.testing.assert_allclose(s.alpha(t) ** 2, abar, rtol=1e-5)
    np.testing.assert_allclose(s.sigma(t) ** 2, 1.0 - abar, rtol=1e-5)
    assert s.t_min == 1e-3


@pytest.mark.parametrize("kind", ["uniform_t", "karras"])
def test_edm_grid_is_the_karras_formula(kind):
    """EDM Eq. 5: sigma_i = (smax^(1/rho) + i/(N-1) (smin^(1/rho) - smax^(1/rho)))^rho, then 0."""
    s = schedules.EDM()
    n = 18
    i = np.arange(n)
    want = (80.0 ** (1 / 7) + i / (n - 1) * (0.002 ** (1 / 7) - 80.0 ** (1 / 7))) ** 7
    grid = schedules.sampling_grid(s, n, kind)
    np.testing.assert_allclose(grid.sigma_ve[:-1], want, rtol=2e-5)
    assert float(grid.sigma_ve[-1]) == 0.0


@pytest.mark.parametrize("name", sorted(ALL))
def test_every_grid_decreases_to_zero_noise(name):
    s = ALL[name]
    for kind in schedules.GRID_KINDS:
        for steps in (1, 17):
            g = schedules.sampling_grid(s, steps, kind)
            sig = np.asarray(g.sigma_ve)
            assert sig.shape == (steps + 1,) and g.steps == steps
            assert np.all(np.diff(sig) < 0), (kind, steps, sig)
            assert sig[-1] == 0.0 and float(g.alpha[-1]) == 1.0 and float(g.t[-1]) == 0.0
            np.testing.assert_allclose(g.t[0], s.t_max, rtol=1e-6)
            np.testing.assert_allclose(sig[0], s.sigma_ve(jnp.float32(s.t_max)), rtol=1e-4)


@pytest.mark.parametrize("name", sorted(ALL))
def test_grid_with_a_noisy_end(name):
    """t_end: steps + 1 real noisy points from t_max down to t_end, spaced like the full grid;
    no zero-noise point and clean_end False."""
    s = ALL[name]
    t_end = 0.5 * (s.t_min + s.t_max)
    for kind in (k for k in schedules.GRID_KINDS if k not in schedules.CLEAN_END_ONLY):
        for steps in (1, 9):
            g = schedules.sampling_grid(s, steps, kind, t_end=t_end)
            sig = np.asarray(g.sigma_ve)
            assert sig.shape == (steps + 1,) and g.steps == steps and not g.clean_end
            assert np.all(np.diff(sig) < 0) and sig[-1] > 0, (kind, steps, sig)
            np.testing.assert_allclose([g.t[0], g.t[-1]], [s.t_max, t_end], rtol=1e-6)
            np.testing.assert_allclose(sig[-1], s.sigma_ve(jnp.float32(t_end)), rtol=1e-5)
            np.testing.assert_allclose(g.alpha, s.alpha(g.t), rtol=1e-6)
    # uniform_t: the points of the grid from t_max to t_end, equally spaced in t
    g = schedules.sampling_grid(s, 4, "uniform_t", t_end=t_end)
    np.testing.assert_allclose(g.t, np.linspace(s.t_max, t_end, 5), rtol=1e-6)


def test_grid_split_and_noisy_times():
    s = schedules.EDM()
    g = schedules.sampling_grid(s, 6, "karras")
    first, second = g.split(2)
    assert (first.steps, second.steps) == (2, 4)
    assert not first.clean_end and second.clean_end
    for a, b in [(first.t, g.t[:3]), (second.t, g.t[2:]), (first.sigma_ve, g.sigma_ve[:3]),
                 (second.sigma_ve, g.sigma_ve[2:]), (second.alpha, g.alpha[2:])]:
        np.testing.assert_array_equal(a, b)
    # split of a noisy-ended grid keeps the noisy end on its second part
    a, b = first.split(1)
    assert not a.clean_end and not b.clean_end and b.steps == 1
    for m in (0, 6, 2.0):
        with pytest.raises(ValueError, match="split"):
            g.split(m)
    noisy = schedules.grid_from_times(s, [1.0, 0.6, 0.3], end="noisy")
    assert not noisy.clean_end and float(noisy.sigma_ve[-1]) > 0
    np.testing.assert_allclose(noisy.sigma_ve, s.sigma_ve(jnp.asarray([1.0, 0.6, 0.3])))
    clean = schedules.grid_from_times(s, [1.0, 0.6, 0.3])
    assert clean.clean_end and float(clean.sigma_ve[-1]) == 0.0
    with pytest.raises(ValueError, match="t\\[-1\\] > 0"):
        schedules.grid_from_times(s, [1.0, 0.5, 0.0], end="noisy")
    with pytest.raises(ValueError, match="decreasing"):
        schedules.grid_from_times(s, [1.0, 0.3, 0.3], end="noisy")
    with pytest.raises(ValueError, match="'clean' or 'noisy'"):
        schedules.grid_from_times(s, [1.0, 0.5], end="half")
    with pytest.raises(ValueError, match="t_min"):
        schedules.sampling_grid(s, 3, "karras", t_min=0.1, t_end=0.2)
    with pytest.raises(ValueError, match="t_end"):
        schedules.sampling_grid(s, 3, "karras", t_end=1.0)
    with pytest.raises(ValueError, match="t_end"):
        schedules.sampling_grid(s, 3, "karras", t_end=0.0)


@pytest.mark.parametrize("kind", P.KINDS)
@pytest.mark.parametrize("name", ["vp_cosine", "vp_linear", "ve", "edm"])
def test_parameterization_round_trip(kind, name):
    """to_x0(target(x0, eps)) == x0 for x = alpha x0 + sigma eps, per-example times."""
    s = ALL[name]
    param = P.Parameterization(kind)
    k0, k1 = jax.random.split(jax.random.key(0))
    x0 = jax.random.normal(k0, (8, 3))
    eps = jax.random.normal(k1, (8, 3))
    t = jnp.linspace(s.t_min + 0.05, s.t_max - 0.05, 8)
    alpha, sigma = s.alpha_sigma(t)
    x = alpha[:, None] * x0 + sigma[:, None] * eps
    f = param.target(x0, eps, alpha, sigma)
    scale = np.maximum(1.0, np.asarray(sigma / alpha))[:, None]   # rounding grows with sigma_ve
    np.testing.assert_allclose(param.to_x0(f, x, alpha, sigma) / scale, x0 / scale, atol=2e-5)
    # and the eps view of the same prediction is eps
    np.testing.assert_allclose(P.eps_from_x0(x, param.to_x0(f, x, alpha, sigma), alpha, sigma),
                               eps, atol=5e-4)


def test_edm_preconditioning_is_the_papers_table():
    """EDM Table 1 at sigma_data = 0.5 (alpha = 1): c_skip = sd^2/(s^2+sd^2),
    c_out = s sd / sqrt(s^2+sd^2), c_in = 1/sqrt(s^2+sd^2), c_noise = ln(s)/4."""
    param = P.Parameterization("edm", sigma_data=0.5)
    sig = np.array([0.002, 0.5, 1.0, 80.0])
    c_in, c_skip, c_out = param.coefficients(jnp.ones(4), jnp.asarray(sig, jnp.float32))
    np.testing.assert_allclose(c_skip, 0.25 / (sig**2 + 0.25), rtol=1e-6)
    np.testing.assert_allclose(c_out, sig * 0.5 / np.sqrt(sig**2 + 0.25), rtol=1e-6)
    np.testing.assert_allclose(c_in, 1.0 / np.sqrt(sig**2 + 0.25), rtol=1e-6)
    np.testing.assert_allclose(param.noise_input(jnp.zeros(4), jnp.ones(4), sig),
                               np.log(sig) / 4, rtol=1e-6)
    # spelled out at sigma = sigma_data = 1/2: c_skip = 1/2, c_out = sqrt(2)/4, c_in = sqrt(2)
    np.testing.assert_allclose([c_skip[1], c_out[1], c_in[1]],
                               [0.5, math.sqrt(2) / 4, math.sqrt(2)], rtol=1e-6)


@pytest.mark.parametrize("cond", [None, 1])
def test_oracle_denoiser_is_the_posterior_mean(cond):
    """E[x0 | x_t] by self-normalised importance sampling: x0 ~ p0(. | c), weights N(x_t; a x0, s^2)."""
    gmm = G.toy_mixture_2d()
    s = schedules.VPCosine()
    t = jnp.float32(0.55)
    alpha, sigma = s.alpha_sigma(t)                    # sigma_ve ~ 1: a real mixture posterior
    den = G.oracle_denoiser(gmm, s)
    x_t = gmm.sample_noisy(jax.random.key(1), 5, alpha, sigma, cond)
    labels = None if cond is None else jnp.full((5,), cond)
    oracle = np.asarray(den(x_t, t, labels), np.float64)
    m = 200_000
    x0 = np.asarray(gmm.sample(jax.random.key(2), m, cond), np.float64)
    a, sg = float(alpha), float(sigma)
    for j in range(5):
        logw = -np.sum((np.asarray(x_t[j], np.float64) - a * x0) ** 2, -1) / (2 * sg**2)
        w = np.exp(logw - logw.max())
        w /= w.sum()
        mean = w @ x0
        ess = 1.0 / np.sum(w**2)
        se = np.sqrt((w @ (x0 - mean) ** 2) / ess)
        assert ess > 1000
        np.testing.assert_array_less(np.abs(oracle[j] - mean), 4.5 * se + 1e-4)

"""Denoising loss: analytic MMSE on Gaussian data, weightings, time samplers, cond dropout."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import parameterization as P, schedules
from jaxdiff.objectives import denoising as losses
from jaxdiff.denoiser import Denoiser
from jaxdiff.toy import gmm as G

S = 0.7  # data std
D = 3    # data dim


class _ExactGaussianApply:
    """Exact posterior-mean network for x0 ~ N(0, S^2 I), in any parameterization."""

    def __init__(self, schedule, param):
        self.schedule, self.param = schedule, param

    def __hash__(self):
        return 0

    def __call__(self, params, x_in, c_noise, cond, dropout_key=None):
        t = c_noise
        alpha, sigma = self.schedule.alpha_sigma(t)
        x = x_in / (self.param.coefficients(alpha, sigma)[0] / alpha)[:, None]
        x0_hat = (alpha * S**2 / (alpha**2 * S**2 + sigma**2))[:, None] * x
        eps = P.eps_from_x0(x, x0_hat, alpha, sigma)
        return self.param.target(x0_hat, eps, alpha, sigma)


@pytest.mark.parametrize("kind,weighting", [("eps", "native"), ("x0", "x0"), ("v", "v"),
                                            ("eps", "min_snr")])
def test_loss_of_exact_denoiser_is_analytic_mmse(kind, weighting):
    sched, param = schedules.VPCosine(), P.Parameterization(kind)
    d = Denoiser(_ExactGaussianApply(sched, param), None, sched, param)
    n = 20000
    x0 = S * jax.random.normal(jax.random.key(0), (n, D))
    _, aux = losses.denoising_loss(d, x0, None, jax.random.key(1), weighting=weighting)
    t = aux["t"]
    alpha, sigma = sched.alpha_sigma(t)
    mmse = S**2 * sigma**2 / (alpha**2 * S**2 + sigma**2)     # per dimension, x0 space
    w = P.loss_weight(weighting, sched.logsnr(t), param)
    ratio = np.asarray(aux["loss_per_example"]) / np.asarray(w * mmse)
    assert abs(ratio.mean() - 1.0) < 0.03, ratio.mean()


def test_weightings_identities():
    lam = jnp.linspace(-8, 8, 17)
    eps, edm = P.Parameterization("eps"), P.Parameterization("edm", sigma_data=0.5)
    np.testing.assert_allclose(P.loss_weight("native", lam, eps), jnp.exp(lam), rtol=1e-5)
    np.testing.assert_allclose(P.loss_weight("native", lam, edm), P.loss_weight("edm", lam, edm),
                               rtol=1e-5)
    np.testing.assert_allclose(P.loss_weight("min_snr", lam, eps),
                               jnp.minimum(jnp.exp(lam), 5.0), rtol=1e-6)
    with pytest.raises(ValueError, match="unknown loss weighting"):
        P.loss_weight("nope", lam, eps)


def test_time_samplers_ranges():
    keys = jax.random.split(jax.random.key(0), 4000)
    lin = schedules.VPLinear()
    td = jax.vmap(lambda k: losses.sample_times(k, lin, "discrete"))(keys)
    n = np.asarray(td) * 1000
    np.testing.assert_allclose(n, np.round(n), atol=1e-3)
    assert n.min() >= 1 and n.max() <= 1000
    edm = schedules.EDM()
    tl = jax.vmap(lambda k: losses.sample_times(k, edm, "lognormal"))(keys)
    log_sigma = np.log(np.asarray(edm.sigma(tl)))
    inside = (log_sigma > np.log(edm.sigma_min) + 0.5) & (log_sigma < np.log(edm.sigma_max) - 0.5)
    assert abs(log_sigma[inside].mean() + 1.2) < 0.1 and abs(log_sigma.std() - 1.2) < 0.1
    with pytest.raises(ValueError, match="vp_linear"):
        losses.sample_times(keys[0], edm, "discrete")
    with pytest.raises(ValueError, match="unknown time sampler"):
        losses.sample_times(keys[0], edm, "foo")


def test_condition_dropout_rate_and_null():
    gmm = G.toy_mixture_2d()
    seen = {}

    def spy(params, x_in, c_noise, cond, dropout_key=None):
        seen["cond"] = cond
        return x_in

    d = Denoiser(spy, None, schedules.EDM(), P.Parameterization("x0"))
    y = jnp.zeros(8000, jnp.int32)
    x0 = gmm.sample(jax.random.key(0), 8000)
    losses.denoising_loss(d, x0, y, jax.random.key(2), p_uncond=0.2, null=gmm.num_classes)
    frac = float(jnp.mean(seen["cond"] == gmm.num_classes))
    assert abs(frac - 0.2) < 0.02
    with pytest.raises(ValueError, match="null condition"):
        losses.denoising_loss(d, x0, y, jax.random.key(2), p_uncond=0.2)


def test_loss_is_per_example_deterministic():
    """Example j's noise and time depend on its global index only."""
    sched, param = schedules.EDM(), P.Parameterization("edm")
    d = Denoiser(_ExactGaussianApply(sched, param), None, sched, param)
    x0 = S * jax.random.normal(jax.random.key(0), (16, D))
    _, full = losses.denoising_loss(d, x0, None, jax.random.key(3), time_sampler="lognormal")
    _, half = losses.denoising_loss(d, x0[8:], None, jax.random.key(3), indices=jnp.arange(8, 16),
                                    time_sampler="lognormal")
    np.testing.assert_array_equal(np.asarray(full["t"][8:]), np.asarray(half["t"]))
    np.testing.assert_allclose(full["loss_per_example"][8:], half["loss_per_example"], rtol=1e-6)

"""The Gaussian-mixture oracle's exact posterior under a linear observation and the samplers'
resampling loop (the pieces of the Steered Diffusion tests that follow):

* ``GMM.condition_on`` against quadrature on a 2-D grid, importance weights in 3-D and the
  closed form of one Gaussian;
* the resampling loop: its one-step decomposition with N = 1 is the plain solve; NFE counted by
  a callback equals the reported one.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import samplers, schedules
from jaxdiff.denoiser import DenoiserBase
from jaxdiff.samplers import base as SB
from jaxdiff.toy import gmm as G

MIX = G.toy_mixture_2d(num_classes=3)
SCHED = schedules.VPLinear()
UNCOND = G.oracle_denoiser(MIX, SCHED, conditional=False)
A_X = np.array([[1.0, 0.0]], np.float32)      # observe the first coordinate


def _log_normal(r, var):
    return -0.5 * r**2 / var - 0.5 * np.log(2 * np.pi * var)


# ------------------------------------------------------------------------------------------------
# the exact posterior under y = A x0 + n
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("a", [[[1.0, 0.0]], [[0.6, -0.8]]])
def test_condition_on_matches_quadrature_in_2d(a):
    a = np.asarray(a, np.float32)
    y, s_y = np.array([0.9], np.float32), 0.3
    post = MIX.condition_on(a, y, s_y)
    u = np.linspace(-4.0, 4.0, 321)
    xx = np.stack(np.meshgrid(u, u, indexing="ij"), -1).reshape(-1, 2).astype(np.float32)
    ones = jnp.ones(len(xx))
    log_prior = np.asarray(MIX.log_prob(jnp.asarray(xx), ones, 0.0 * ones), np.float64)
    log_unnorm = log_prior + _log_normal(xx @ a[0] - y[0], s_y**2)
    cell = (u[1] - u[0]) ** 2
    ref = np.exp(log_unnorm - log_unnorm.max())
    ref /= ref.sum() * cell
    got = np.exp(np.asarray(post.log_prob(jnp.asarray(xx)), np.float64))
    assert got.sum() * cell == pytest.approx(1.0, abs=2e-3)
    assert np.max(np.abs(got - ref)) < 2e-3 * ref.max()
    # and its moments against the grid's
    mean = (ref[:, None] * xx).sum(0) * cell
    np.testing.assert_allclose(np.asarray(post.mean()), mean, atol=2e-3)


def test_condition_on_matches_importance_weights_in_3d():
    gmm = G.make_gmm([[0.0, 1.0, -1.0], [2.0, -1.0, 0.5], [-1.5, 0.0, 1.5]], [0.4, 0.7, 0.5],
                     weights=[0.5, 0.3, 0.2])
    a = np.array([[1.0, 0.5, 0.0], [0.0, -1.0, 1.0]], np.float32)
    y, s_y = np.array([0.5, 1.0], np.float32), 0.5
    post = gmm.condition_on(a, y, s_y)
    x = np.asarray(gmm.sample(jax.random.key(0), 400_000), np.float64)
    logw = _log_normal(x @ a.T - y, s_y**2).sum(1)
    w = np.exp(logw - logw.max())
    w /= w.sum()
    mean = w @ x
    cov = (w[:, None] * (x - mean)).T @ (x - mean)
    np.testing.assert_allclose(np.asarray(post.mean()), mean, atol=0.02)
    np.testing.assert_allclose(np.asarray(post.covariance()), cov, atol=0.02)
    # exact samples of the posterior carry the same moments
    s = np.asarray(post.sample(jax.random.key(1), 200_000), np.float64)
    np.testing.assert_allclose(s.mean(0), mean, atol=0.02)


def test_condition_on_one_gaussian_is_the_closed_form():
    gmm = G.make_gmm([[1.0]], 2.0)
    post = gmm.condition_on([[1.0]], [3.0], 1.0)
    # mean mu + s^2 / (s^2 + s_y^2) (y - mu) = 1 + 0.8 * 2, variance s^2 s_y^2 / (s^2 + s_y^2)
    np.testing.assert_allclose(np.asarray(post.means), [[2.6]], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(post.covs), [[[0.8]]], rtol=1e-6)
    with pytest.raises(ValueError, match="A must have shape"):
        gmm.condition_on([[1.0, 0.0]], [3.0], 1.0)


# ------------------------------------------------------------------------------------------------
# the resampling loop
# ------------------------------------------------------------------------------------------------

def _decomposed(name, grid, shape, key, **options):
    """The resampling driver's one-step decomposition with a single pass (what N = 1 would run
    through ``_resampled_solve``), built as ``_run`` builds its context."""
    spec = samplers.get_sampler(name)
    opts = spec.resolve_options(options)
    keys = SB.example_keys(key, jnp.arange(shape[0]))
    offset = jnp.asarray(0, jnp.int32)
    ctx = SB.SamplerContext(lambda y, t, a: UNCOND(a * y, t), grid,
                            lambda i: SB.normal_per_example(keys, offset + i + 1, shape[1:]),
                            SCHED, opts, None, grid.steps, offset)
    y0 = grid.sigma_ve[0] * SB.normal_per_example(keys, 0, shape[1:])
    return jax.jit(lambda y: SB._resampled_solve(spec, ctx, y, keys, shape[1:], 1))(y0)


@pytest.mark.parametrize("name", ["ddpm", "ddim", "euler", "heun"])
def test_one_pass_decomposition_is_the_plain_solve(name):
    grid = schedules.sampling_grid(SCHED, 8, "uniform_t")
    key, shape = jax.random.key(5), (32, 2)
    plain = samplers.sample(UNCOND, key, shape, sampler=name, grid=grid)
    np.testing.assert_allclose(np.asarray(_decomposed(name, grid, shape, key)),
                               np.asarray(plain.x0), rtol=1e-5, atol=1e-5)


@dataclasses.dataclass(frozen=True)
class _Counting(DenoiserBase):
    """The oracle, counting its evaluations with a host callback."""

    inner: object

    @property
    def schedule(self):
        return self.inner.schedule

    def x0(self, x, t, cond=None):
        jax.debug.callback(lambda: _CALLS.append(1))
        return self.inner(x, t, cond)


jax.tree_util.register_dataclass(_Counting, data_fields=["inner"], meta_fields=[])
_CALLS = []


@pytest.mark.parametrize("name,steps", [("ddpm", 6), ("euler", 5), ("heun", 4)])
def test_resampling_nfe_is_counted_exactly(name, steps):
    for n in (1, 3):
        _CALLS.clear()
        out = samplers.sample(_Counting(UNCOND), jax.random.key(0), (8, 2), sampler=name,
                              steps=steps, grid="uniform_t", resample=n)
        jax.block_until_ready(out.x)
        jax.effects_barrier()
        assert len(_CALLS) == out.nfe == n * samplers.nfe_of(name, steps), (name, n)
    # a partial solve (noisy end) counts too
    _CALLS.clear()
    out = samplers.sample(_Counting(UNCOND), jax.random.key(0), (8, 2), sampler=name,
                          steps=steps, grid="uniform_t", t_end=0.3, resample=2)
    jax.block_until_ready(out.x)
    jax.effects_barrier()
    assert len(_CALLS) == out.nfe

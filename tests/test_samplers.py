"""Samplers against exact references: the GMM oracle, closed-form Gaussian flows, DDPM's posterior.

Every sampler run here is driven by an exact denoiser, so all remaining error is the sampler's.
"""
import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import parameterization as P
from jaxdiff import samplers, schedules
from jaxdiff.denoiser import Denoiser, DenoiserBase
from jaxdiff.metrics.two_sample import mmd2_noise_floor, mmd2_rbf
from jaxdiff.samplers import ddim, heun
from jaxdiff.samplers.base import SamplerContext
from jaxdiff.toy import gmm as G

GMM = G.toy_mixture_2d()
EDM = schedules.EDM()
ORACLE = G.oracle_denoiser(GMM, EDM)
KEY = jax.random.key(0)
N = 1000                      # samples per draw (MMD and convergence share these draws)
DETERMINISTIC = ["euler", "ddim", "heun", "dpmpp_2m", "dpmpp_3m", "unipc", "ipndm"]
CHURN = dict(s_churn=40.0, s_tmin=0.05, s_tmax=50.0, s_noise=1.003)  # EDM's ImageNet setting


X_T = EDM.sigma_max * jax.random.normal(KEY, (N, 2))   # initial noise at t = 1 (alpha = 1)


@functools.lru_cache(maxsize=None)
def draw(name: str, nfe: int, options: tuple = ()) -> np.ndarray:
    """(N, 2) samples of the toy mixture, EDM schedule, Karras grid.  Deterministic samplers all
    start from the same initial noise X_T (passing it also skips compiling the noise generator);
    stochastic ones draw theirs from KEY."""
    steps = samplers.steps_for_nfe(name, nfe)
    x_T = None if samplers.get_sampler(name).stochastic and name != "ddim" else X_T
    out = samplers.sample(ORACLE, KEY, (N, 2), sampler=name, steps=steps, grid="karras",
                          x_T=x_T, **dict(options))
    return np.asarray(out.x0)


@functools.lru_cache(maxsize=None)
def exact_floor() -> tuple[np.ndarray, float]:
    """Exact samples and the 1% MMD^2 permutation floor at this sample size.

    The floor is computed once, on two independent exact samples: under the null (a correct
    sampler) the permutation distribution is that of any pooled sample of this size.
    """
    exact = np.asarray(GMM.sample(jax.random.key(1), N))
    other = np.asarray(GMM.sample(jax.random.key(2), N))
    return exact, mmd2_noise_floor(other, exact, num_permutations=100, level=0.01)


# ------------------------------------------------------------------------------------------------
# registry
# ------------------------------------------------------------------------------------------------

def test_registry_lists_every_family_and_counts_nfe():
    for name in DETERMINISTIC + ["ddpm", "heun_sde"]:
        assert name in samplers.SAMPLERS
    assert samplers.nfe_of("heun", 18) == 35 and samplers.nfe_of("heun_sde", 18) == 35
    for name in ["euler", "ddim", "ddpm", "dpmpp_2m", "dpmpp_3m", "unipc", "ipndm"]:
        assert samplers.nfe_of(name, 7) == 7
    assert samplers.steps_for_nfe("heun", 10) == 5          # 9 NFE; 6 steps would be 11
    assert samplers.steps_for_nfe("unipc", 10) == 10
    assert samplers.sample(ORACLE, KEY, (2, 2), sampler="heun", steps=3).nfe == 5


def test_registry_is_the_shared_helper():
    from jaxdiff.errors import ConfigError
    from jaxdiff.registry import Registry

    assert isinstance(samplers.SAMPLERS, Registry) and samplers.SAMPLERS.kind == "sampler"
    assert sorted(samplers.SAMPLERS) == sorted(DETERMINISTIC + ["consistency", "ddpm", "evodiff",
                                                                "heun_sde"])
    spec = samplers.SAMPLERS["heun_sde"]
    assert isinstance(spec, samplers.SamplerSpec) and spec.stochastic
    assert spec.traced_options == ("s_churn", "s_noise", "s_tmax", "s_tmin")
    assert samplers.SAMPLERS["unipc"].traced_options == ()       # order fixes the program
    with pytest.raises(ConfigError, match="unknown sampler 'huen'.*did you mean 'heun'"):
        samplers.get_sampler("huen")
    with pytest.raises(ValueError, match="already registered"):
        samplers.register("euler", nfe=lambda n: n)(lambda ctx, y: y)


# ------------------------------------------------------------------------------------------------
# distribution: every sampler at high NFE is indistinguishable from exact sampling
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,nfe,options", [
    *[(n, 80, ()) for n in ["dpmpp_2m", "dpmpp_3m", "unipc", "ipndm"]],
    ("euler", 160, ()), ("ddim", 160, ()), ("heun", 159, ()),
    ("ddpm", 200, ()), ("heun_sde", 159, tuple(sorted(CHURN.items()))),
])
def test_high_nfe_samples_match_exact_mixture(name, nfe, options):
    exact, floor = exact_floor()
    x = draw(name, nfe, options)
    assert np.all(np.isfinite(x))
    assert mmd2_rbf(x, exact) < floor


# ------------------------------------------------------------------------------------------------
# convergence order against a converged reference from the same initial noise
# ------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def reference() -> np.ndarray:
    """The probability-flow ODE solution from draw()'s initial noise: 1000 Heun steps."""
    return draw("heun", 1999)


# (NFEs in the asymptotic regime, band for the log-log slope of the error vs NFE), by sampler
# and options
CONVERGENCE = {
    "euler": ((20, 40, 80), (0.85, 1.3)),
    "heun": ((39, 79, 159), (1.7, 2.6)),
    "dpmpp_2m": ((40, 80, 160), (1.7, 2.6)),
    # the official third-order weight is half the Taylor one: second order asymptotically
    # (slope 3.5 at 20-80 NFE, 2.3 at 40-160 NFE, with the smaller errors of the two forms)
    "dpmpp_3m": ((40, 80, 160), (1.7, 2.7)),
    "dpmpp_3m form=taylor": ((40, 80, 160), (2.7, 4.0)),     # third order
    "unipc": ((20, 40, 80), (2.4, 3.6)),        # UniP-2 + UniC-2: third order
    "ipndm": ((40, 80, 160), (1.7, 3.0)),       # fixed-step AB weights on a graded grid: >= 2
}


def _named(key: str) -> tuple[str, tuple]:
    """'name opt=value ...' -> (name, ((opt, value), ...)) for draw()."""
    name, *opts = key.split()
    return name, tuple(tuple(o.split("=")) for o in opts)


@pytest.mark.parametrize("key", sorted(CONVERGENCE))
def test_convergence_order(key):
    """Slope of the median per-sample error vs NFE.

    The median, not the mean: a few trajectories pass near the boundary between two modes, where
    the flow separates them and an O(h^p) error at high noise becomes an O(1) error at the end;
    those samples converge late and would dominate an RMS over the batch.
    """
    nfes, (lo, hi) = CONVERGENCE[key]
    name, options = _named(key)
    ref = reference()
    errs = [np.median(np.linalg.norm(draw(name, n, options) - ref, axis=-1)) for n in nfes]
    true_nfe = [samplers.nfe_of(name, samplers.steps_for_nfe(name, n)) for n in nfes]
    slope = -np.polyfit(np.log(true_nfe), np.log(errs), 1)[0]
    assert lo <= slope <= hi, (key, errs, slope)


def test_unipc_order3_is_fourth_order():
    """UniP-3 + UniC-3 (the configurable order): one order above its predictor."""
    ref = reference()
    nfes = (20, 40, 80)
    errs = [np.median(np.linalg.norm(draw("unipc", n, (("order", 3),)) - ref, axis=-1))
            for n in nfes]
    slope = -np.polyfit(np.log(nfes), np.log(errs), 1)[0]
    assert 3.3 <= slope <= 5.0, (errs, slope)


# ------------------------------------------------------------------------------------------------
# exact identities
# ------------------------------------------------------------------------------------------------

def test_euler_equals_ddim_eta0():
    """y + (s' - s)(y - D)/s == D + (s'/s)(y - D): equal up to float32 rounding."""
    a = samplers.sample(ORACLE, KEY, (64, 2), sampler="euler", steps=12, x_T=X_T[:64]).x0
    b = samplers.sample(ORACLE, KEY, (64, 2), sampler="ddim", steps=12, x_T=X_T[:64],
                        eta=0.0).x0
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=2e-5)


def test_heun_sde_without_churn_is_heun():
    cond = jnp.arange(16) % GMM.num_classes
    heun_x = samplers.sample(ORACLE, KEY, (16, 2), sampler="heun", steps=9, cond=cond).x0
    no_churn = samplers.sample(ORACLE, KEY, (16, 2), sampler="heun_sde", steps=9, cond=cond,
                               s_churn=0.0).x0
    np.testing.assert_array_equal(heun_x, no_churn)
    churned = samplers.sample(ORACLE, KEY, (16, 2), sampler="heun_sde", steps=9, cond=cond,
                              s_churn=10.0).x0
    assert np.min(np.abs(np.asarray(heun_x - churned))) > 0


def test_numeric_options_are_traced_and_never_recompile():
    """eta and the churn options are traced arguments: new values reuse the compiled program
    (``samplers.compile_count``), and s_churn = 0 is still heun's result bit for bit."""
    cond = jnp.arange(16) % GMM.num_classes
    run = functools.partial(samplers.sample, ORACLE, KEY, (16, 2), steps=9, cond=cond)
    heun_x = run(sampler="heun").x0
    ddim = {eta: run(sampler="ddim", eta=eta).x0 for eta in (0.0, 0.3, 1.0)}
    churn = {c: run(sampler="heun_sde", s_churn=c).x0 for c in (0.0, 1.0)}
    before = samplers.compile_count()
    ddim.update({eta: run(sampler="ddim", eta=eta).x0 for eta in (0.5, 0.9)})
    # gamma = min(s_churn / 9, sqrt(2) - 1): 40 is capped, 2 is not
    churn.update({c: run(sampler="heun_sde", s_churn=c).x0 for c in (2.0, 40.0)})
    other = run(sampler="heun_sde", s_churn=40.0, s_tmin=0.5, s_tmax=10.0, s_noise=1.1).x0
    zero_again = run(sampler="heun_sde", s_churn=jnp.float32(0.0)).x0   # an array leaf too
    assert samplers.compile_count() == before
    np.testing.assert_array_equal(churn[0.0], heun_x)
    np.testing.assert_array_equal(zero_again, heun_x)
    for results in (ddim, churn):
        values = list(results.values())
        for i in range(len(values)):
            for j in range(i):
                assert not np.allclose(values[i], values[j])
    assert not np.allclose(other, churn[40.0])
    # the counter does see a new program: a new number of steps is one
    run(sampler="ddim", steps=11)
    assert samplers.compile_count() == before + 1


def test_churn_outside_its_window_is_algorithm_1():
    """s_churn > 0 but no grid level in [s_tmin, s_tmax]: every gamma_i = 0 and the churn code
    path must reproduce Algorithm 1 bit for bit (run op by op: two different compiled programs
    may round differently, and Heun's correction amplifies rounding by sigma_i / sigma_{i+1})."""
    grid = schedules.sampling_grid(EDM, 3, "karras")
    ctx = SamplerContext(lambda y, t, a: ORACLE(a * y, t), grid,
                         lambda i: jax.random.normal(jax.random.fold_in(KEY, i), (4, 2)), EDM,
                         dict(s_churn=10.0, s_tmin=100.0, s_tmax=200.0, s_noise=1.0))
    with jax.disable_jit():
        np.testing.assert_array_equal(heun.run(ctx, X_T[:4]), heun.run_sde(ctx, X_T[:4]))


def test_dpmpp_3m_equals_2m_on_three_steps():
    """With 3 steps the orders are (1, 2, 1) for both: the third-order branch never runs."""
    a = samplers.sample(ORACLE, KEY, (32, 2), sampler="dpmpp_2m", steps=3, x_T=X_T[:32]).x0
    b = samplers.sample(ORACLE, KEY, (32, 2), sampler="dpmpp_3m", steps=3, x_T=X_T[:32]).x0
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_evodiff_first_step_is_ddim_and_fixed_ratios_are_dpmpp_2m():
    """EVODiff's first step is DDIM (2 steps: DDIM, then the final D); with its ratios fixed
    (beta = 1, r_i = r, the probe as the output) and no special last step it is DPM-Solver++(2M)
    (different operation order: float32 rounding)."""
    run = functools.partial(samplers.sample, ORACLE, KEY, (64, 2), grid="karras", x_T=X_T[:64])
    np.testing.assert_allclose(run(sampler="evodiff", steps=2).x0,
                               run(sampler="ddim", steps=2).x0, rtol=0, atol=1e-6)
    for steps in (5, 25):
        fixed = run(sampler="evodiff", steps=steps, adaptive=False, lower_order_final=False).x0
        np.testing.assert_allclose(fixed, run(sampler="dpmpp_2m", steps=steps).x0,
                                   rtol=0, atol=5e-5)
    assert np.abs(np.asarray(run(sampler="evodiff", steps=25).x0)
                  - np.asarray(run(sampler="dpmpp_2m", steps=25).x0)).max() > 1e-3


def test_evodiff_error_falls_then_levels_off():
    """Measured on the mixture (median error to the exact ODE): the official form falls 5x from
    20 to 40 NFE and then levels off near 0.03-0.05 (its last step's weights are not
    consistent); without the special last step it keeps falling, slower than second order."""
    ref = reference()
    err = {(n, lo): np.median(np.linalg.norm(
        draw("evodiff", n, (("lower_order_final", lo),)) - ref, axis=-1))
        for n in (20, 40, 160) for lo in (True, False)}
    assert err[40, True] < 0.25 * err[20, True]
    assert 0.01 < err[160, True] < 0.1
    assert err[160, False] < 0.5 * err[40, False] < 0.5 * err[20, False]


@dataclasses.dataclass(frozen=True)
class _GaussianApply:
    """E[x0 | x_t] for x0 ~ N(mu, s^2) per coordinate (x0 parameterization), any shape."""

    schedule: schedules.Schedule

    def __call__(self, params, x, t, cond):
        mu, s = params
        alpha, sigma = self.schedule.alpha_sigma(t)
        alpha = alpha.reshape(alpha.shape + (1,) * (x.ndim - 1))
        sigma = sigma.reshape(alpha.shape)
        return mu + alpha * s**2 / (alpha**2 * s**2 + sigma**2) * (x - alpha * mu)


@pytest.mark.parametrize("key,tol", [   # measured max errors at 40 steps are about tol / 2
    ("euler", 0.12), ("ddim", 0.12), ("heun", 3e-2), ("dpmpp_2m", 1.2e-2), ("dpmpp_3m", 6e-3),
    ("dpmpp_3m form=taylor", 1.5e-3), ("unipc", 5e-3), ("ipndm", 1e-2),
])
def test_image_batches_follow_the_closed_form_gaussian_flow(key, tol):
    """Image-shaped (B, H, W, C) data x0 ~ N(mu, s^2 I) on VP-cosine: the probability-flow ODE
    keeps (y - mu) / sqrt(s^2 + sigma_ve^2) constant, so the sample is known exactly."""
    sched = schedules.VPCosine()
    mu, s = 0.3, 0.5
    den = Denoiser(_GaussianApply(sched), (jnp.float32(mu), jnp.float32(s)), sched,
                   P.Parameterization("x0"))
    grid = schedules.sampling_grid(sched, 40, "uniform_logsnr")
    x_t = grid.sigma_ve[0] * grid.alpha[0] * jax.random.normal(jax.random.key(4), (3, 4, 4, 2))
    name, options = _named(key)
    out = samplers.sample(den, KEY, x_t.shape, sampler=name, grid=grid, x_T=x_t,
                          **dict(options)).x0
    s0, s_last = float(grid.sigma_ve[0]), float(grid.sigma_ve[-2])
    y_t = np.asarray(x_t) / float(grid.alpha[0])
    # exact ODE to the last noisy point, then the final step's D
    want = mu + (y_t - mu) * s**2 / (math.sqrt(s**2 + s_last**2) * math.sqrt(s**2 + s0**2))
    assert out.shape == x_t.shape
    err = np.max(np.abs(np.asarray(out) - want)) / np.max(np.abs(want - mu))
    assert err < tol, err


# ------------------------------------------------------------------------------------------------
# partial solves (every sampler's segment equality is in test_sampler_conformance.py)
# ------------------------------------------------------------------------------------------------

def _gaussian_denoiser(sched, mu=0.3, s=0.5):
    return Denoiser(_GaussianApply(sched), (jnp.float32(mu), jnp.float32(s)), sched,
                    P.Parameterization("x0"))


def test_noisy_end_returns_the_x_space_state():
    """Gaussian data on VP-cosine (alpha != 1): solving 1 -> t_end returns x = alpha y at
    t_end, which the probability-flow ODE gives in closed form, y(s) - mu proportional to
    sqrt(s_data^2 + sigma_ve^2)."""
    sched = schedules.VPCosine()
    mu, s = 0.3, 0.5
    den = _gaussian_denoiser(sched, mu, s)
    t_end = 0.4
    x_t = jax.random.normal(jax.random.key(4), (3, 4, 4, 2))
    out = samplers.sample(den, KEY, x_t.shape, sampler="dpmpp_3m", steps=40,
                          grid="uniform_logsnr", t_end=t_end, x_start=x_t)
    g = schedules.sampling_grid(sched, 40, "uniform_logsnr", t_end=t_end)
    s0, s1, a1 = float(g.sigma_ve[0]), float(g.sigma_ve[-1]), float(g.alpha[-1])
    y_t = np.asarray(x_t) / float(g.alpha[0])
    want = a1 * (mu + (y_t - mu) * math.sqrt(s**2 + s1**2) / math.sqrt(s**2 + s0**2))
    assert not out.clean_end and out.nfe == 40 and a1 < 0.95
    assert out.x.shape == x_t.shape and out.x.dtype == jnp.float32
    np.testing.assert_allclose(out.x, want, rtol=2e-4, atol=2e-4)
    with pytest.raises(ValueError, match="noisy point"):
        out.x0


@pytest.mark.parametrize("name", ["heun_sde", "dpmpp_2m", "unipc"])
def test_split_solve_on_a_vp_schedule(name):
    """On VP-cosine the state handed between segments is x = alpha y (divided by alpha again on
    entry), so the split solve equals the joined one to float32 rounding, not bit for bit."""
    sched = schedules.VPCosine()
    den = G.oracle_denoiser(GMM, sched)
    grid = schedules.sampling_grid(sched, 8, "uniform_logsnr")
    first_grid, second_grid = grid.split(3)
    opts = dict(s_churn=2.0, s_noise=1.003) if name == "heun_sde" else {}   # gamma < cap
    cond = jnp.arange(6) % GMM.num_classes
    run = functools.partial(samplers.sample, den, KEY, (6, 2), sampler=name, cond=cond, **opts)
    whole = run(grid=grid)
    first = run(grid=first_grid, total_steps=8)
    second = run(grid=second_grid, x_start=first.x, carry=first.carry)
    np.testing.assert_allclose(second.x0, whole.x0, rtol=1e-5, atol=1e-5)
    assert first.nfe + second.nfe == whole.nfe
    if name == "heun_sde":   # the churn's gamma = s_churn / N needs the whole solve's N
        alone = run(grid=first_grid)      # gamma = 2 / 3 on the first segment, not 2 / 8
        rest = run(grid=second_grid, x_start=alone.x, carry=alone.carry)
        assert not np.allclose(rest.x0, whole.x0, atol=1e-3)


@dataclasses.dataclass(frozen=True)
class CountingDenoiser(DenoiserBase):
    """The oracle, stateful: its state (B,) counts the evaluations made so far, and its
    prediction is scaled by 1 + 1e-3 count, so a solve that lost or repeated the state would
    also sample differently."""

    inner: DenoiserBase

    @property
    def schedule(self):
        return self.inner.schedule

    @property
    def stateful(self):
        return True

    def init_state(self, shape):
        return jnp.zeros(shape[:1], jnp.float32)

    def x0(self, x, t, cond=None):
        raise ValueError("stateful: evaluate through the sampler")

    def x0_step(self, x, t, cond, state):
        scale = (1.0 + 1e-3 * state).reshape((-1,) + (1,) * (x.ndim - 1))
        return scale * self.inner(x, t, cond), state + 1.0


jax.tree_util.register_dataclass(CountingDenoiser, data_fields=["inner"], meta_fields=[])


@pytest.mark.parametrize("name,options", [(n, {}) for n in sorted(samplers.SAMPLERS)
                                          if n != "heun_sde"]
                         + [("heun_sde", CHURN), ("ddim", dict(resample=3))])
def test_stateful_denoiser_state_passes_through_every_evaluation(name, options):
    """Every registered sampler threads a stateful Denoiser's state through each of its
    evaluations (scans, Heun's churn branch, the resampling loop) and hands it across the
    segments of a split solve: the carried count equals the NFE of the segments so far."""
    den = CountingDenoiser(ORACLE)
    grid = schedules.sampling_grid(EDM, 6, "karras")
    first_grid, rest = grid.split(2)
    middle_grid, third_grid = rest.split(2)
    run = functools.partial(samplers.sample, den, KEY, (4, 2), sampler=name, **options)
    first = run(grid=first_grid, total_steps=6)
    middle = run(grid=middle_grid, x_start=first.x, carry=first.carry)
    np.testing.assert_array_equal(first.carry.denoiser_state, first.nfe)
    np.testing.assert_array_equal(middle.carry.denoiser_state, first.nfe + middle.nfe)
    last = run(grid=third_grid, x_start=middle.x, carry=middle.carry)
    assert np.all(np.isfinite(last.x0))
    if options.get("resample", 1) == 1:   # resampling restarts the segments' noise: not equal
        whole = run(grid=grid)
        np.testing.assert_allclose(last.x0, whole.x0, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="another kind"):
        samplers.sample(ORACLE, KEY, (4, 2), sampler=name, grid=middle_grid, x_start=first.x,
                        carry=first.carry, **options)


def test_named_grids_with_t_start_and_t_end_compose():
    """sample(t_end=t_m, total_steps=6) then sample(t_start=t_m) on uniform-t grids: the same
    times as one uniform-t grid through t_m, so the same solve up to the float32 rounding of the
    times."""
    t_min, t_m = 0.1, 0.46
    full = schedules.sampling_grid(EDM, 6, "uniform_t", t_min=t_min)
    np.testing.assert_allclose(full.t[3], t_m, rtol=1e-6)
    run = functools.partial(samplers.sample, ORACLE, KEY, (8, 2), sampler="dpmpp_3m",
                            grid="uniform_t")
    whole = run(steps=6, t_min=t_min, x_T=X_T[:8])
    first = run(steps=3, t_end=t_m, x_start=X_T[:8], total_steps=6)   # 3M lowers its last
    # orders by the steps left in the whole solve
    second = run(steps=3, t_start=t_m, t_min=t_min, x_start=first.x, carry=first.carry)
    np.testing.assert_allclose(second.x0, whole.x0, rtol=1e-4, atol=1e-4)


def test_partial_solve_errors():
    g1, g2 = schedules.sampling_grid(EDM, 4, "karras").split(2)
    run = functools.partial(samplers.sample, ORACLE, KEY, (4, 2))
    first = run(sampler="euler", grid=g1, x_start=X_T[:4])
    with pytest.raises(ValueError, match="x_start or x_T"):
        run(sampler="euler", x_T=X_T[:4], x_start=X_T[:4])
    with pytest.raises(ValueError, match="x_start"):
        run(sampler="euler", grid=g2, carry=first.carry)
    with pytest.raises(ValueError, match="continues sampler 'euler'"):
        run(sampler="heun", grid=g2, x_start=first.x, carry=first.carry)
    with pytest.raises(ValueError, match="step_offset"):
        run(sampler="euler", grid=g2, x_start=first.x, carry=first.carry, step_offset=2)
    with pytest.raises(ValueError, match="step_offset must be"):
        run(sampler="euler", grid=g2, x_start=first.x, step_offset=-1)
    with pytest.raises(ValueError, match="total_steps"):
        run(sampler="euler", grid=g2, x_start=first.x, step_offset=2, total_steps=3)
    with pytest.raises(ValueError, match="t_start / t_end"):
        run(sampler="euler", grid=g2, t_end=0.3)
    with pytest.raises(ValueError, match="t_start or t_max"):
        run(sampler="euler", t_start=0.9, t_max=0.8)
    with pytest.raises(ValueError, match="t_end"):
        run(sampler="euler", t_end=0.3, t_min=0.1)
    with pytest.raises(ValueError, match="clean_end"):   # noisy arrays labelled clean
        run(sampler="euler", grid=schedules.Grid(g1.t, g1.alpha, g1.sigma_ve))
    with pytest.raises(ValueError, match="clean_end"):
        run(sampler="euler", grid=schedules.Grid(g2.t, g2.alpha, g2.sigma_ve, clean_end=False))


# ------------------------------------------------------------------------------------------------
# per-example randomness
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,options", [
    ("ddpm", {}), ("heun_sde", CHURN), ("dpmpp_2m", {}),
])
def test_sample_does_not_depend_on_its_batch(name, options):
    cond = jnp.arange(64) % GMM.num_classes
    big = samplers.sample(ORACLE, KEY, (64, 2), sampler=name, steps=8, cond=cond,
                          **options).x0
    small = samplers.sample(ORACLE, KEY, (8, 2), sampler=name, steps=8, cond=cond[:8],
                            **options).x0
    np.testing.assert_array_equal(small, big[:8])
    shifted = samplers.sample(ORACLE, KEY, (8, 2), sampler=name, steps=8, cond=cond[8:16],
                              indices=jnp.arange(8, 16), **options).x0
    np.testing.assert_array_equal(shifted, big[8:16])
    other_key = samplers.sample(ORACLE, jax.random.key(9), (8, 2), sampler=name, steps=8,
                                cond=cond[:8], **options).x0
    assert not np.allclose(other_key, small)


# ------------------------------------------------------------------------------------------------
# DDPM
# ------------------------------------------------------------------------------------------------

def test_ddpm_step_is_ho_posterior():
    """On the full VP-linear grid (t_n = n / 1000) one ddpm step samples Ho et al. 2020, Eq. 7:
    mean = sqrt(abar_{n-1}) beta_n / (1 - abar_n) x0 + sqrt(alpha_n)(1 - abar_{n-1})/(1 - abar_n) x_n,
    variance = (1 - abar_{n-1}) / (1 - abar_n) beta_n, with x0 the denoiser's prediction."""
    sched = schedules.VPLinear()
    grid = schedules.sampling_grid(sched, 1000, "uniform_t")
    np.testing.assert_allclose(grid.t[:-1], np.arange(1000, 0, -1) / 1000, rtol=1e-6)
    abar = np.concatenate([[1.0], sched.discrete_alpha_bar()])      # abar[n], n = 0..T
    den = G.oracle_denoiser(GMM, sched)
    x_n = jax.random.normal(jax.random.key(5), (6, 2))

    @jax.jit
    def one_ddpm_step(one_step, z):
        """x_{n-1} from x_n with step noise z (ddim_run on a one-step grid, eta = 1)."""
        ctx = SamplerContext(lambda y, t, a: den(a * y, t), one_step, lambda i: z, sched,
                             {"eta": 1.0})
        return one_step.alpha[1] * ddim.ddim_run(ctx, x_n / one_step.alpha[0])

    for n in [1000, 500, 2, 1]:    # n = 1: abar_0 = 1, the step returns x0 with no noise
        i = 1000 - n
        one_step = schedules.Grid(t=grid.t[i:i + 2], alpha=grid.alpha[i:i + 2],
                                  sigma_ve=grid.sigma_ve[i:i + 2])
        mean = one_ddpm_step(one_step, jnp.zeros_like(x_n))
        std = one_ddpm_step(one_step, jnp.ones_like(x_n)) - mean
        x0 = np.asarray(den(x_n, jnp.float32(n / 1000)), np.float64)
        beta = 1.0 - abar[n] / abar[n - 1]
        want_mean = (np.sqrt(abar[n - 1]) * beta / (1 - abar[n]) * x0
                     + np.sqrt(1 - beta) * (1 - abar[n - 1]) / (1 - abar[n]) * np.asarray(x_n))
        want_var = (1 - abar[n - 1]) / (1 - abar[n]) * beta
        np.testing.assert_allclose(mean, want_mean, rtol=2e-4, atol=2e-5)
        np.testing.assert_allclose(std, np.sqrt(want_var), rtol=2e-4)


# ------------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------------

def test_clear_errors():
    with pytest.raises(ValueError, match="unknown sampler"):
        samplers.sample(ORACLE, KEY, (4, 2), sampler="rk45")
    with pytest.raises(ValueError, match="steps"):
        samplers.sample(ORACLE, KEY, (4, 2), sampler="heun", steps=0)
    with pytest.raises(ValueError, match="NFE"):
        samplers.steps_for_nfe("heun", 0)
    with pytest.raises(ValueError, match="decreasing"):
        samplers.sample(ORACLE, KEY, (4, 2), sampler="euler", grid=[0.5, 0.8, 0.0])
    with pytest.raises(ValueError, match="cond batch"):
        samplers.sample(ORACLE, KEY, (4, 2), sampler="euler", cond=jnp.zeros(3, jnp.int32))
    with pytest.raises(ValueError, match="no option"):
        samplers.sample(ORACLE, KEY, (4, 2), sampler="dpmpp_2m", eta=1.0)
    with pytest.raises(ValueError, match="order"):
        samplers.sample(ORACLE, KEY, (4, 2), sampler="unipc", steps=3, order=4)
    with pytest.raises(ValueError, match="max_order"):
        samplers.sample(ORACLE, KEY, (4, 2), sampler="ipndm", steps=3, max_order=5)
    with pytest.raises(ValueError, match="s_churn"):
        samplers.sample(ORACLE, KEY, (4, 2), sampler="heun_sde", steps=3, s_churn=-1.0)
    with pytest.raises(ValueError, match="s_tmin <= s_tmax"):
        samplers.sample(ORACLE, KEY, (4, 2), sampler="heun_sde", steps=3, s_tmin=2.0,
                        s_tmax=1.0)
    with pytest.raises(ValueError, match="eta must be in"):
        samplers.sample(ORACLE, KEY, (4, 2), sampler="ddim", steps=3, eta=1.5)
    with pytest.raises(ValueError, match="scalar"):
        samplers.sample(ORACLE, KEY, (4, 2), sampler="ddim", steps=3, eta=jnp.zeros(4))

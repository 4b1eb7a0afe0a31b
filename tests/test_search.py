"""Noise search (jaxdiff/search/) on the exact Gaussian-mixture oracle: N = 1 random search and
0 zero-order iterations are plain sampling bit for bit, the chosen sample is the best-scored
candidate, scores never fall with compute and rise with it, the zero-order neighbours keep the
norm at the stated angle, search over paths without forward noise is random search and its
forward noising is the forward process, the self-supervised verifier prefers likely samples and
its denoiser calls are counted, verifiers' outputs are checked, and bad input is one clear
error."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import samplers, schedules
from jaxdiff.search import (importance_resampling, path_search, random_search, smc,
                            zero_order_search)
from jaxdiff.search import verifiers as V
from jaxdiff.search.paths import noise_forward
from jaxdiff.search.zero_order import neighbours
from jaxdiff.toy import gmm as G

K = 3
MIX = G.toy_mixture_2d(num_classes=K)
SCHED = schedules.VPCosine()
DEN = G.oracle_denoiser(MIX, SCHED)
KEY = jax.random.key(0)
B = 32
Y = jnp.arange(B, dtype=jnp.int32) % K
VERIFIER = V.quadratic_reward(anchor=jnp.array([2.0, 0.0]), tau=1.0)
SOLVER = dict(sampler="dpmpp_2m", steps=8, grid="uniform_t")


def _plain():
    return samplers.sample(DEN, KEY, (B, 2), cond=Y, **SOLVER)


def test_one_candidate_and_zero_iterations_are_plain_sampling_bit_for_bit():
    plain = _plain()
    one = random_search(DEN, KEY, (B, 2), VERIFIER, candidates=1, cond=Y, **SOLVER)
    chex.assert_trees_all_equal(one.x0, plain.x0)
    assert one.nfe == plain.nfe
    none = zero_order_search(DEN, KEY, (B, 2), VERIFIER, neighbours_per_step=4, iterations=0,
                             cond=Y, **SOLVER)
    chex.assert_trees_all_equal(none.x0, plain.x0)
    assert none.nfe == plain.nfe


def test_ddim_at_eta_zero_is_a_deterministic_solver_for_the_search():
    ddim = dict(sampler="ddim", steps=8, grid="uniform_t")
    plain = samplers.sample(DEN, KEY, (B, 2), cond=Y, **ddim)
    one = random_search(DEN, KEY, (B, 2), VERIFIER, candidates=1, cond=Y, **ddim)
    chex.assert_trees_all_equal(one.x0, plain.x0)


def test_random_search_keeps_the_best_candidate_and_counts_nfe():
    n = 8
    res = random_search(DEN, KEY, (B, 2), VERIFIER, candidates=n, cond=Y, **SOLVER)
    per = int(_plain().nfe)
    assert res.nfe == n * per and [e for e, _ in res.trace] == [per * (k + 1) for k in range(n)]
    # every candidate, solved again one by one, scores at most the chosen sample
    cands = samplers.sample(DEN, KEY, (B * n, 2), cond=jnp.repeat(Y, n),
                            indices=jnp.arange(B * n), **SOLVER).x0
    scores = np.asarray(VERIFIER(cands, None)).reshape(B, n)
    np.testing.assert_allclose(np.asarray(res.scores), scores.max(1), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(VERIFIER(res.x0, None)), np.asarray(res.scores),
                               rtol=1e-6)
    chex.assert_shape(res.x0, (B, 2))


def test_scores_never_fall_and_rise_with_compute():
    rs = random_search(DEN, KEY, (B, 2), VERIFIER, candidates=16, cond=Y, **SOLVER)
    zo = zero_order_search(DEN, KEY, (B, 2), VERIFIER, neighbours_per_step=4, iterations=4,
                           cond=Y, **SOLVER)
    for res in (rs, zo):
        curve = [s for _, s in res.trace]
        assert all(b >= a for a, b in zip(curve, curve[1:])), curve
        assert curve[-1] > curve[0] + 1.0, curve        # measured: +2.7 (random), +2.6 (zo)
    assert zo.nfe == int(_plain().nfe) * (1 + 4 * 4)


def test_neighbours_keep_the_norm_at_the_stated_angle():
    pivot = jax.random.normal(jax.random.key(1), (5, 3, 4))
    g = jax.random.normal(jax.random.key(2), (5, 7, 3, 4))
    y = neighbours(pivot, g, 0.95)
    chex.assert_shape(y, (5, 7, 3, 4))
    pn = np.linalg.norm(np.asarray(pivot).reshape(5, -1), axis=1)
    yn = np.linalg.norm(np.asarray(y).reshape(5, 7, -1), axis=2)
    np.testing.assert_allclose(yn, np.repeat(pn[:, None], 7, 1), rtol=1e-5)
    cos = np.einsum("bnd,bd->bn", np.asarray(y).reshape(5, 7, -1),
                    np.asarray(pivot).reshape(5, -1)) / (yn * pn[:, None])
    np.testing.assert_allclose(cos, 0.95, atol=1e-5)


def test_verifiers():
    x = jax.random.normal(jax.random.key(3), (6, 2)) * 2.0
    y = jnp.arange(6, dtype=jnp.int32) % K
    got = V.gmm_class_log_prob(MIX)(x, y)
    want = jnp.take_along_axis(
        MIX.class_log_posterior(x, jnp.ones(6), jnp.zeros(6)), y[:, None], 1)[:, 0]
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(V.quadratic_reward([1.0, -1.0], 2.0)(x)),
                               -np.sum((np.asarray(x) - [1.0, -1.0]) ** 2, 1) / 8.0, rtol=1e-6)
    half = V.restricted(V.quadratic_reward([1.0, -1.0], 2.0), dims=[0])
    np.testing.assert_allclose(np.asarray(half(x)), -((np.asarray(x[:, 0]) - 1.0) ** 2 + 1.0)
                               / 8.0, rtol=1e-6)


@pytest.mark.parametrize("call, match", [
    (lambda: random_search(DEN, KEY, (B, 2), VERIFIER, candidates=0, cond=Y, **SOLVER),
     "candidates must be an integer >= 1"),
    (lambda: random_search(DEN, KEY, (B, 2), VERIFIER, candidates=2, cond=Y, sampler="ddpm",
                           steps=8), "must be deterministic"),
    (lambda: random_search(DEN, KEY, (B, 2), VERIFIER, candidates=2, cond=Y, sampler="ddim",
                           steps=8, eta=0.5), "must be deterministic"),
    (lambda: random_search(DEN, KEY, (B, 2), lambda x, c: jnp.zeros((3,)), candidates=2,
                           cond=Y, **SOLVER), r"scores of shape \(64,\), got \(3,\)"),
    (lambda: random_search(DEN, KEY, (B, 2), lambda x, c: jnp.full((x.shape[0],), jnp.nan),
                           candidates=2, cond=Y, **SOLVER), "64 of 64 scores are not finite"),
    (lambda: zero_order_search(DEN, KEY, (B, 2), VERIFIER, neighbours_per_step=2,
                               iterations=1, c=1.0, cond=Y, **SOLVER), r"c must lie in"),
    (lambda: smc(DEN, KEY, (B, 2), VERIFIER, lam=-1.0, particles=2, cond=Y),
     "lambda must be a finite number >= 0"),
    (lambda: smc(DEN, KEY, (B, 2), VERIFIER, lam=1.0, particles=2, eta=0.0, cond=Y),
     r"stochastic step, eta in \(0, 1\]"),
    (lambda: smc(DEN, KEY, (B, 2), lambda x, c: jnp.zeros((3,)), lam=1.0, particles=2,
                 cond=Y, steps=4), r"scores of shape \(64,\), got \(3,\)"),
    (lambda: smc(DEN, KEY, (B, 2), lambda x, c: jnp.where(x[:, 0] > 0, jnp.nan, 0.0),
                 lam=1.0, particles=2, cond=Y, steps=4), "of 64 scores are not finite"),
    (lambda: importance_resampling(DEN, KEY, (B, 2), VERIFIER, lam=1.0, candidates=0, cond=Y),
     "candidates must be an integer >= 1"),
    (lambda: path_search(DEN, KEY, (B, 2), VERIFIER, paths=2, branches=2, start=4, forward=2,
                         backward=2, cond=Y, **SOLVER), "backward must exceed forward"),
    (lambda: path_search(DEN, KEY, (B, 2), VERIFIER, paths=2, branches=2, start=9, forward=1,
                         backward=2, cond=Y, **SOLVER), r"start must be a grid point in \[1, 8\]"),
    (lambda: path_search(DEN, KEY, (B, 2), VERIFIER, paths=2, branches=0, start=4, forward=1,
                         backward=2, cond=Y, **SOLVER), "branches must be an integer >= 1"),
    (lambda: path_search(DEN, KEY, (B, 2), VERIFIER, paths=2, branches=2, start=4, forward=1,
                         backward=2, cond=Y, sampler="ddpm", steps=8), "must be deterministic"),
    (lambda: V.feature_similarity(lambda x: x, DEN, sigma=0.0), "noise level sigma > 0"),
])
def test_bad_input_is_one_clear_error(call, match):
    with pytest.raises(ValueError, match=match) as err:
        call()
    assert "\n" not in str(err.value)


def test_a_verifier_that_sees_part_of_the_data_is_hacked():
    """Ma et al.'s verifier hacking on the mixture: an unconditional model searched towards
    class 0 by the exact class posterior gets closer to p(x | c = 0) with N; by the posterior
    of the first coordinate alone (class 0's components sit at x1 = +-2, the others' at
    x1 = +-1) it first gets closer, then, as the search piles onto large |x1|, farther.
    Measured MMD^2 (bandwidth 1, 256 samples against 2,000 exact ones) at N = 1 / 4 / 128:
    full 0.347 / 0.034 / 0.016, partial 0.347 / 0.171 / 0.250."""
    from jaxdiff.metrics.two_sample import mmd2_rbf

    uncond = G.oracle_denoiser(MIX, SCHED, conditional=False)
    zeros = jnp.zeros(256, jnp.int32)
    ref = np.asarray(MIX.sample(jax.random.key(9), 2000, 0))
    full = V.gmm_class_log_prob(MIX)

    def mmd(verifier, n):
        res = random_search(uncond, KEY, (256, 2), verifier, candidates=n, cond=zeros,
                            **SOLVER)
        return mmd2_rbf(np.asarray(res.x0), ref, bandwidth=1.0)

    f1, f4, f128 = (mmd(full, n) for n in (1, 4, 128))
    p4, p128 = (mmd(V.restricted(full, dims=[0]), n) for n in (4, 128))
    assert f4 < 0.25 * f1 and f128 < f4, (f1, f4, f128)
    assert p4 < 0.75 * f1 and p128 > 1.25 * p4, (f1, p4, p128)


# ------------------------------------------------------------------------------------------------
# search over paths and the self-supervised verifier
# ------------------------------------------------------------------------------------------------

DDIM = dict(sampler="ddim", steps=8, grid="uniform_t")


def test_paths_without_forward_noise_are_random_search_in_segments():
    """f = 0, M = 1: nothing is noised or pruned, so N paths are random search's N candidates
    solved in segments (ddim has no history: equal to float32 rounding, measured 2.4e-7; with
    N = 1 random search is plain sampling, tested above); the NFE adds one x0-prediction per
    noisy segment end."""
    rs = random_search(DEN, KEY, (B, 2), VERIFIER, candidates=4, cond=Y, **DDIM)
    ps = path_search(DEN, KEY, (B, 2), VERIFIER, paths=4, branches=1, start=2, forward=0,
                     backward=3, cond=Y, **DDIM)
    np.testing.assert_allclose(np.asarray(ps.x0), np.asarray(rs.x0), rtol=0, atol=2e-6)
    np.testing.assert_allclose(np.asarray(ps.scores), np.asarray(rs.scores), rtol=1e-5)
    # segments 0-2, 2-5, 5-8: 8 solver steps and 2 predictions per path
    assert ps.nfe == 4 * (8 + 2) and [e for e, _ in ps.trace] == [12, 28, 40]


def test_forward_noising_is_the_forward_process():
    """x_p = alpha_p (x0 + sigma_p e1) noised from point p to q has x_q / alpha_q = x0 + sigma_q e
    in law: mean x0 and standard deviation sigma_q (20,000 draws: 1% of sigma_q)."""
    g = schedules.sampling_grid(SCHED, 8, "uniform_t")
    x0 = jnp.array([1.5, -0.5])
    k1, k2 = jax.random.split(jax.random.key(4))
    n, p, q = 20000, 6, 2
    xp = g.alpha[p] * (x0 + g.sigma_ve[p] * jax.random.normal(k1, (n, 2)))
    y = np.asarray(noise_forward(xp, g, p, q, jax.random.normal(k2, (n, 2))) / g.alpha[q])
    np.testing.assert_allclose(y.mean(0), np.asarray(x0), atol=0.03 * float(g.sigma_ve[q]))
    np.testing.assert_allclose(y.std(0), float(g.sigma_ve[q]), rtol=0.01)
    chex.assert_trees_all_equal(noise_forward(xp, g, p, p, jnp.ones((n, 2))), xp)


def test_path_search_scores_rise_with_compute():
    """Measured batch-mean reward (N paths, M noisings, start 4, f = 2, b = 4, dpmpp_2m-8) at
    (N, M) = (1, 1) / (2, 2) / (4, 4): -3.84 / -1.23 / -0.66 for 14 / 46 / 164 NFE (and -0.45
    at (8, 8), 616 NFE, against random search's -0.60 at 512)."""
    def run(n, m):
        return path_search(DEN, KEY, (B, 2), VERIFIER, paths=n, branches=m, start=4,
                           forward=2, backward=4, cond=Y, **SOLVER)

    r1, r2, r4 = run(1, 1), run(2, 2), run(4, 4)
    # segments 0-4, 2-6, 4-8 of 4 dpmpp_2m steps; the two noisy ends cost a prediction each
    assert (r1.nfe, r2.nfe, r4.nfe) == (14, 2 * 5 + 4 * (5 + 4), 4 * 5 + 16 * (5 + 4))
    means = [float(jnp.mean(r.scores)) for r in (r1, r2, r4)]
    assert means[0] + 2.0 < means[1] < means[2], means
    np.testing.assert_allclose(np.asarray(VERIFIER(r4.x0, None)), np.asarray(r4.scores),
                               rtol=1e-6)


def test_the_self_supervised_verifier():
    """cos(phi(D(alpha (x0 + sigma eps))), phi(x0)) computed by the verifier equals the mixture's
    exact posterior mean at that level; the searches count its one denoiser call per score; and,
    knowing no class, best-of-8 by it raises the class-conditional log density of the samples
    (measured -1.12 -> -0.61 nats with phi = identity)."""
    ver = V.feature_similarity(lambda x: x, DEN, sigma=2.0 / 3.0)
    x = jax.random.normal(jax.random.key(5), (6, 2)) * 2.0
    y = jnp.arange(6, dtype=jnp.int32) % K
    alpha = 1.0 / np.sqrt(1.0 + (2.0 / 3.0) ** 2)                   # VP: alpha^2 + sigma^2 = 1
    eps = jax.random.normal(jax.random.key(0), (2,))
    d = MIX.posterior_mean(alpha * (x + (2.0 / 3.0) * eps), jnp.full(6, alpha),
                           jnp.full(6, alpha * 2.0 / 3.0), y)
    want = np.sum(np.asarray(d) * np.asarray(x), 1) / (np.linalg.norm(d, axis=1) *
                                                        np.linalg.norm(x, axis=1))
    np.testing.assert_allclose(np.asarray(ver(x, y)), want, rtol=1e-4, atol=1e-5)
    assert V.denoiser_calls(ver) == 1 and V.denoiser_calls(VERIFIER) == 0
    assert V.denoiser_calls(V.restricted(ver, dims=[0])) == 1

    b = 512
    yb = jnp.arange(b, dtype=jnp.int32) % K
    plain = samplers.sample(DEN, KEY, (b, 2), cond=yb, **SOLVER)
    res = random_search(DEN, KEY, (b, 2), ver, candidates=8, cond=yb, **SOLVER)
    assert res.nfe == 8 * (int(plain.nfe) + 1)

    def logp(z):
        return float(jnp.mean(MIX.log_prob(z, jnp.ones(b), jnp.zeros(b), yb)))

    assert logp(res.x0) > logp(plain.x0) + 0.3, (logp(plain.x0), logp(res.x0))


# ------------------------------------------------------------------------------------------------
# towards the exact tilted mixture: importance resampling and SMC
# ------------------------------------------------------------------------------------------------

ANCHOR, TAU = jnp.array([2.0, 0.0]), 1.0
DDPM = dict(steps=20, grid="uniform_t")


def test_lambda_zero_and_one_particle_are_plain_sampling():
    plain = samplers.sample(DEN, KEY, (B, 2), sampler="ddpm", cond=Y, **DDPM).x0
    reward = V.quadratic_reward(ANCHOR, TAU)
    one = importance_resampling(DEN, KEY, (B, 2), reward, lam=0.0, candidates=1, cond=Y,
                                **DDPM)
    chex.assert_trees_all_equal(one.x0, plain)
    # SMC takes the same DDIM steps with the same noise one step at a time, outside the
    # sampler's scan: equal to float32 rounding (measured 3.6e-7)
    particle = smc(DEN, KEY, (B, 2), reward, lam=0.0, particles=1, cond=Y, **DDPM)
    np.testing.assert_allclose(np.asarray(particle.x0), np.asarray(plain), rtol=0, atol=2e-6)
    assert particle.nfe == one.nfe == 20


def test_both_reach_the_exact_tilted_mixture():
    """pi ∝ p(x) exp(r(x)), r = -||x - (2, 0)||^2 / 2, is GMM.tilt of the mixture.  MMD^2
    (bandwidth 1, 256 samples against 2,000 exact ones; two exact sets: about 0.005 at the 1%
    level) measured at N = 1 / 4 / 16: SMC 0.324 / 0.012 / 0.000, importance resampling
    0.324 / 0.074 / -0.000; at equal NFE (N = 4) SMC is the closer one."""
    from jaxdiff.metrics.two_sample import mmd2_rbf

    uncond = G.oracle_denoiser(MIX, SCHED, conditional=False)
    reward = V.quadratic_reward(ANCHOR, TAU)
    target = np.asarray(MIX.tilt(ANCHOR, TAU, 1.0).sample(jax.random.key(9), 2000))

    def mmd(method, n):
        kw = dict(particles=n) if method is smc else dict(candidates=n)
        res = method(uncond, KEY, (256, 2), reward, lam=1.0, **kw, **DDPM)
        assert res.nfe == 20 * n
        return mmd2_rbf(np.asarray(res.x0), target, bandwidth=1.0)

    s1, s4, s16 = (mmd(smc, n) for n in (1, 4, 16))
    i4, i16 = (mmd(importance_resampling, n) for n in (4, 16))
    assert s1 > 0.2 and s16 < 0.01 and i16 < 0.01, (s1, s16, i16)
    assert s4 < 0.5 * i4, (s4, i4)

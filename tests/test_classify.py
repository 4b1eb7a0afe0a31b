"""Diffusion Classifier (jaxdiff.classify) on an exact 2-D Gaussian-mixture oracle.

Reference: with the exact conditional eps and ELBO weighting, the score difference of two classes
estimates -(log p(x0 | c_j) - log p(x0 | c_k)) (up to a negligible t-range truncation, see the
module docstring), so the classifier must agree with the Bayes classifier of a mixture with equal
class priors.  The 8-device check runs this file as a script in a subprocess.
"""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import classify as C
from jaxdiff import schedules
from jaxdiff.toy import gmm as G

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES = 5
PER_CLASS = 100  # test points per class
N_FULL = 512     # bank size of the full evaluation


def _mixture() -> G.GMM:
    """5 classes x 2 components on a circle of radius 3, std 0.6, equal weights: overlapping
    classes with equal priors (Bayes accuracy ~0.88), so Bayes = argmax_c log p(x0 | c)."""
    k = 2 * NUM_CLASSES
    angles = 2 * np.pi * np.arange(k) / k
    means = 3.0 * np.stack([np.cos(angles), np.sin(angles)], -1)
    return G.make_gmm(means, 0.6, None, np.arange(k) % NUM_CLASSES, NUM_CLASSES)


def _log_lik(gmm, x0):
    """(B, C) exact log p(x0 | c) at t = 0 (alpha = 1, sigma = 0)."""
    return np.stack([np.asarray(gmm.log_prob(x0, 1.0, 0.0, cond=jnp.full((x0.shape[0],), c)))
                     for c in range(gmm.num_classes)], 1)


@pytest.fixture(scope="module")
def setup():
    gmm = _mixture()
    den = G.oracle_denoiser(gmm, schedules.VPCosine())
    x0 = jnp.concatenate([gmm.sample(jax.random.fold_in(jax.random.key(1), c), PER_CLASS, c)
                          for c in range(NUM_CLASSES)])
    labels = np.repeat(np.arange(NUM_CLASSES), PER_CLASS)
    log_lik = _log_lik(gmm, x0)
    bayes = log_lik.argmax(1)
    assert np.allclose(bayes, np.asarray(gmm.class_log_posterior(x0, 1.0, 0.0)).argmax(1))
    return dict(gmm=gmm, den=den, x0=x0, labels=labels, log_lik=log_lik, bayes=bayes)


def _classify(setup, **kw):
    kw = dict(dict(grid="random", weighting="elbo"), **kw)
    return C.diffusion_classify(setup["den"], setup["x0"], jnp.arange(NUM_CLASSES),
                                jax.random.key(0), num_classes=NUM_CLASSES, **kw)


@pytest.fixture(scope="module")
def full(setup):
    return _classify(setup, n_samples=N_FULL)


@pytest.fixture(scope="module")
def small(setup):
    return _classify(setup, n_samples=32)


def test_elbo_score_differences_estimate_log_likelihood_ratios(setup, full):
    """S_j - S_0 ≈ -(log p(x0|j) - log p(x0|0)): slope 1, and (random grid: unbiased estimator)
    the mean residual is zero within 4 standard errors."""
    s = np.asarray(full.scores)
    d_s = (s - s[:, :1])[:, 1:]
    d_ll = -(setup["log_lik"] - setup["log_lik"][:, :1])[:, 1:]
    slope, intercept = np.linalg.lstsq(np.stack([d_ll.ravel(), np.ones(d_ll.size)], 1),
                                       d_s.ravel(), rcond=None)[0]
    assert 0.95 < slope < 1.05, slope
    per_example = (d_s - d_ll).mean(1)
    se = per_example.std() / np.sqrt(per_example.size)
    assert abs(per_example.mean()) < 4 * se + 0.02, (per_example.mean(), se)


def test_agrees_with_bayes_classifier_as_bank_grows(setup, full, small):
    agree_small = np.mean(np.asarray(small.prediction) == setup["bayes"])
    agree_full = np.mean(np.asarray(full.prediction) == setup["bayes"])
    assert agree_full >= 0.95 and agree_full > agree_small + 0.03, (agree_small, agree_full)
    acc_bayes = np.mean(setup["bayes"] == setup["labels"])
    acc_full = np.mean(np.asarray(full.prediction) == setup["labels"])
    assert acc_bayes < 0.93  # overlapping classes: the test is not trivially at accuracy 1
    assert abs(acc_full - acc_bayes) <= 0.03, (acc_full, acc_bayes)
    assert full.nfe == N_FULL * NUM_CLASSES
    np.testing.assert_array_equal(np.asarray(full.num_evaluated), N_FULL)
    probs = np.asarray(full.probs)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(probs.argmax(1), np.asarray(full.prediction))


def test_shared_noise_needs_far_fewer_samples_than_independent(setup, small):
    """The paper's variance reduction: 8x fewer bank entries with shared (t, eps) still beat
    independent noise per class by a clear margin."""
    shared = small
    indep = _classify(setup, n_samples=256, shared_noise=False)
    agree = {name: np.mean(np.asarray(r.prediction) == setup["bayes"])
             for name, r in (("shared@32", shared), ("independent@256", indep))}
    assert agree["shared@32"] >= agree["independent@256"] + 0.05, agree


def test_adaptive_pruning_extends_the_bank_at_a_fraction_of_the_nfe(setup, full):
    """Stages (16, 512) keep (2, 1) on a random bank: classes pruned after stage 1 carry exactly
    the scores of a 16-entry evaluation, the two stage-2 classes exactly their full-bank scores
    (new entries only extend the bank), at ~42% of the NFE and the same accuracy."""
    first = _classify(setup, n_samples=16)
    pruned = _classify(setup, n_samples=[16, N_FULL], keep=[2, 1])
    assert pruned.nfe == 16 * NUM_CLASSES + (N_FULL - 16) * 2
    assert pruned.nfe < 0.45 * full.nfe
    counts = np.asarray(pruned.num_evaluated)
    np.testing.assert_array_equal(np.sort(counts, 1), np.tile([16, 16, 16, N_FULL, N_FULL],
                                                              (counts.shape[0], 1)))
    stage2 = counts == N_FULL
    s_pruned, s_first, s_full = (np.asarray(r.scores) for r in (pruned, first, full))
    np.testing.assert_allclose(s_pruned[stage2], s_full[stage2], rtol=2e-5, atol=1e-4)
    np.testing.assert_allclose(s_pruned[~stage2], s_first[~stage2], rtol=2e-5, atol=1e-4)
    # stage 2 runs on the two best classes of the 16-entry evaluation; the prediction is the
    # better of them on the whole bank
    top2 = np.sort(np.argsort(s_first, 1)[:, :2], 1)
    np.testing.assert_array_equal(np.nonzero(stage2)[1].reshape(-1, 2), top2)
    pred = np.asarray(pruned.prediction)
    np.testing.assert_array_equal(pred, np.where(stage2, s_full, np.inf).argmin(1))
    np.testing.assert_array_equal(np.asarray(pruned.probs)[~stage2], 0.0)
    acc = {name: np.mean(np.asarray(r.prediction) == setup["labels"])
           for name, r in (("pruned", pruned), ("full", full))}
    assert abs(acc["pruned"] - acc["full"]) <= 0.02, acc


@pytest.mark.parametrize("loss,weighting,grid,space", [("l1", "uniform", "stratified", "t"),
                                                       ("l2", "elbo", "random", "t")])
def test_scores_match_direct_formula(setup, loss, weighting, grid, space):
    """S_j = mean_i w(t_i) ||eps_i - eps(x_t_i, t_i, c_j)|| written out with loops, the ELBO
    weight from a finite difference of logsnr, the documented per-entry keys."""
    den, x0 = setup["den"], setup["x0"][:3]
    sched, n, key = den.schedule, 4, jax.random.key(7)
    idx = np.array([11, 3, 40])
    res = C.diffusion_classify(den, x0, jnp.array([4, 1]), key, num_classes=NUM_CLASSES,
                               n_samples=n, loss=loss, weighting=weighting, grid=grid,
                               time_space=space, indices=idx, temperature=0.5, chunk_size=3)
    lo, hi = sched.t_min, sched.t_max
    want = np.zeros((3, 2))
    for b in range(3):
        for j, c in enumerate([4, 1]):
            for i in range(n):
                entry = jax.random.fold_in(jax.random.fold_in(key, idx[b]), i)
                z = np.asarray(jax.random.normal(entry, (3 if grid == "random" else 2,)))
                u = (i + 0.5) / n if grid == "stratified" else float(jax.scipy.special.ndtr(z[0]))
                eps = z[-2:]
                t = lo + u * (hi - lo)
                a, s = float(sched.alpha(t)), float(sched.sigma(t))
                eps_hat = np.asarray(den.eps(jnp.asarray(a * x0[b] + s * eps)[None],
                                             jnp.float32(t), jnp.array([c])))[0]
                err = (np.sum(np.abs(eps - eps_hat)) if loss == "l1"
                       else np.sum((eps - eps_hat) ** 2))
                w = 1.0
                if weighting == "elbo":
                    h = 1e-3 * t
                    dlogsnr = float(sched.logsnr(t + h) - sched.logsnr(t - h)) / (2 * h)
                    w = -0.5 * dlogsnr * (hi - lo)
                want[b, j] += w * err / n
    np.testing.assert_allclose(np.asarray(res.scores), want, rtol=2e-3)
    np.testing.assert_allclose(np.asarray(res.probs), jax.nn.softmax(-want / 0.5, -1), rtol=5e-3)
    np.testing.assert_array_equal(np.asarray(res.prediction), np.array([4, 1])[want.argmin(1)])


def test_stage_plan():
    stages = C.plan_stages([50, 100, 500, 1000], [500, 50, 10, 1], 20)  # paper's ImageNet spec
    assert [(s.offset, s.n_new, s.classes, s.keep) for s in stages] == [
        (0, 50, 20, 20), (50, 50, 20, 20), (100, 400, 20, 10), (500, 500, 10, 1)]
    assert C.nfe_per_image(stages) == 50 * 20 + 50 * 20 + 400 * 20 + 500 * 10
    assert C.plan_stages(8, None, 3) == (C.Stage(0, 8, 3, 3),)


@pytest.mark.parametrize("kwargs,match", [
    (dict(candidates=[]), "non-empty"),
    (dict(candidates=[0, 5]), r"\[5\] are outside \[0, num_classes=5\)"),
    (dict(candidates=[-1]), "outside"),
    (dict(candidates=[1, 1]), "distinct"),
    (dict(candidates=[0.5]), "integer"),
    (dict(num_classes=0), "num_classes"),
    (dict(n_samples=0), "strictly increasing"),
    (dict(n_samples=[8, 8], keep=[2, 1]), "strictly increasing"),
    (dict(n_samples=[4, 8], keep=[1, 2]), "non-increasing"),
    (dict(n_samples=[4, 8], keep=[2, 0]), "non-increasing and >= 1"),
    (dict(n_samples=[4, 8], keep=[2]), "equal length"),
    (dict(n_samples=[4, 8]), "needs keep"),
    (dict(n_samples=8, keep=[1]), "keep is only used"),
    (dict(loss="l3"), "unknown loss"),
    (dict(weighting="snr"), "unknown weighting"),
    (dict(grid="sobol"), "unknown grid"),
    (dict(time_space="sigma"), "unknown time_space"),
    (dict(loss="l1", weighting="elbo"), "squared L2"),
    (dict(t_min=0.5, t_max=0.2), "t_min < t_max"),
    (dict(temperature=0.0), "temperature"),
    (dict(chunk_size=0), "chunk_size"),
    (dict(indices=np.arange(3)), "indices must have shape"),
])
def test_bad_inputs_raise(setup, kwargs, match):
    args = dict(candidates=[0, 1], num_classes=NUM_CLASSES, n_samples=8)
    args.update(kwargs)
    cand = args.pop("candidates")
    with pytest.raises(ValueError, match=match):
        C.diffusion_classify(setup["den"], setup["x0"][:4], cand, jax.random.key(0), **args)


def test_sharded_over_8_devices_equals_unsharded():
    env = dict(os.environ)
    flags = env.get("XLA_FLAGS", "")
    env.update(XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count=8".strip(),
               JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join([ROOT, env.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--sharded-worker"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["device_count"] == 8
    assert out["score_devices"] == 8
    assert out["max_score_diff"] < 1e-4
    assert out["same_prediction"] and out["same_counts"]
    assert out["nfe"] == 4 * NUM_CLASSES + 28 * 2
    assert "multiple of the mesh's 8 batch shards" in out["indivisible_error"]


def _sharded_worker() -> dict:
    """Same adaptive classification with and without an 8-device mesh (subprocess body)."""
    from ml_collections import ConfigDict

    from jaxdiff import parallel

    gmm = _mixture()
    den = G.oracle_denoiser(gmm, schedules.VPCosine())
    x0 = gmm.sample(jax.random.key(3), 16)
    kw = dict(num_classes=NUM_CLASSES, n_samples=[4, 32], keep=[2, 1], grid="random",
              weighting="elbo", chunk_size=16)
    mesh = parallel.make_mesh(ConfigDict(dict(data=-1)))
    ref = C.diffusion_classify(den, x0, jnp.arange(NUM_CLASSES), jax.random.key(0), **kw)
    shd = C.diffusion_classify(den, x0, jnp.arange(NUM_CLASSES), jax.random.key(0), mesh=mesh,
                               **kw)
    try:
        C.diffusion_classify(den, x0[:12], jnp.arange(NUM_CLASSES), jax.random.key(0),
                             mesh=mesh, **kw)
        indivisible = ""
    except ValueError as e:
        indivisible = str(e)
    return dict(device_count=jax.device_count(),
                score_devices=len({s.device for s in shd.scores.addressable_shards
                                   if s.data.shape[0] == 2}),
                max_score_diff=float(np.max(np.abs(np.asarray(ref.scores)
                                                   - np.asarray(shd.scores)))),
                same_prediction=bool(np.array_equal(ref.prediction, shd.prediction)),
                same_counts=bool(np.array_equal(ref.num_evaluated, shd.num_evaluated)),
                nfe=shd.nfe, indivisible_error=indivisible)


if __name__ == "__main__" and sys.argv[1:] == ["--sharded-worker"]:
    print(json.dumps(_sharded_worker()))

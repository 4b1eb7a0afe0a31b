"""Fréchet distance vs scipy, IS / KID / precision-recall closed forms, reference refusals."""
import dataclasses
import json

import numpy as np
import pytest
import scipy.linalg

from jaxdiff.metrics import frechet, reference, scores
from jaxdiff.metrics.features import FeatureNetwork


def _random_spd(rng, d, cond):
    """Random SPD matrix with eigenvalues log-spaced between 1 / cond and 1."""
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    return (q * np.logspace(-np.log10(cond), 0, d)) @ q.T


def _scipy_fd(mu1, s1, mu2, s2):
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2)
                 - 2 * np.trace(covmean.real))


@pytest.mark.parametrize("cond", [1e1, 1e6, 1e12])
def test_sqrtm_psd_product_matches_scipy(cond):
    rng = np.random.default_rng(int(np.log10(cond)))
    d = 24
    s1, s2 = _random_spd(rng, d, cond), _random_spd(rng, d, cond)
    ours = frechet.sqrtm_psd_product(s1, s2)
    np.testing.assert_allclose(ours @ ours, s1 @ s2, atol=1e-9 * cond ** 0.5)
    if cond <= 1e6:  # scipy's Schur result itself is only accurate for moderate conditioning
        np.testing.assert_allclose(ours, scipy.linalg.sqrtm(s1 @ s2).real, rtol=1e-6,
                                   atol=1e-9)
    np.testing.assert_allclose(frechet.trace_sqrtm_psd_product(s1, s2),
                               np.trace(scipy.linalg.sqrtm(s1 @ s2).real), rtol=1e-7)


@pytest.mark.parametrize("cond", [1e1, 1e8])
def test_frechet_distance_matches_scipy_formula(cond):
    rng = np.random.default_rng(7)
    d = 32
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = _random_spd(rng, d, cond), _random_spd(rng, d, cond)
    np.testing.assert_allclose(frechet.frechet_distance(mu1, s1, mu2, s2),
                               _scipy_fd(mu1, s1, mu2, s2), rtol=1e-8)


def test_frechet_distance_closed_forms():
    rng = np.random.default_rng(0)
    d = 10
    s = _random_spd(rng, d, 100.0)
    mu = rng.normal(size=d)
    assert frechet.frechet_distance(mu, s, mu, s) == pytest.approx(0.0, abs=1e-10)
    # W2^2 between N(0, a^2 I) and N(m, b^2 I) is |m|^2 + d (a - b)^2
    m = rng.normal(size=d)
    expect = m @ m + d * (2.0 - 0.5) ** 2
    got = frechet.frechet_distance(np.zeros(d), 4.0 * np.eye(d), m, 0.25 * np.eye(d))
    assert got == pytest.approx(expect, rel=1e-12)


def test_frechet_singular_covariances_from_few_samples():
    """n < d: rank-deficient covariances (eigenvalues ~ -1e-17 after rounding) stay finite and
    agree with the commuting closed form on a shared eigenbasis."""
    rng = np.random.default_rng(3)
    d = 40
    f1, f2 = rng.normal(size=(12, d)), rng.normal(size=(15, d))
    mu1, s1 = frechet.feature_statistics(f1)
    mu2, s2 = frechet.feature_statistics(f2)
    value = frechet.frechet_distance(mu1, s1, mu2, s2)
    assert np.isfinite(value) and value > 0
    # rank-deficient but commuting: S1 = Q diag(a) Q^T, S2 = Q diag(b) Q^T with zeros
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    a = np.where(np.arange(d) < 20, rng.uniform(0.5, 2, d), 0.0)
    b = np.where(np.arange(d) % 2 == 0, rng.uniform(0.5, 2, d), 0.0)
    expect = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = frechet.frechet_distance(np.zeros(d), (q * a) @ q.T, np.zeros(d), (q * b) @ q.T)
    assert got == pytest.approx(expect, rel=1e-7)


def test_feature_statistics_unbiased_and_errors():
    rng = np.random.default_rng(1)
    f = rng.normal(size=(50, 4)).astype(np.float32)
    mu, sigma = frechet.feature_statistics(f)
    assert mu.dtype == np.float64 and sigma.shape == (4, 4)
    np.testing.assert_allclose(sigma, np.cov(f.astype(np.float64), rowvar=False), rtol=1e-12)
    with pytest.raises(ValueError, match="features"):
        frechet.feature_statistics(f[:1])
    with pytest.raises(ValueError, match="positive semi-definite"):
        frechet.frechet_distance(mu, -np.eye(4), mu, np.eye(4))
    with pytest.raises(ValueError, match="mu2"):
        frechet.frechet_distance(mu, sigma, mu[:3], sigma)


def test_inception_score_closed_forms():
    k = 10
    assert scores.inception_score(np.zeros((100, k)), num_splits=5)[0] == pytest.approx(1.0)
    confident = 60.0 * np.eye(k)[np.arange(200) % k]  # one-hot, balanced in every split
    mean, std = scores.inception_score(confident, num_splits=4)
    assert mean == pytest.approx(k, rel=1e-6) and std < 1e-6
    # two equiprobable classes, each sample certain: IS = 2; a constant prediction: IS = 1
    assert scores.inception_score(confident[:, :2][np.arange(200) % k < 2],
                                  num_splits=1)[0] == pytest.approx(2.0, rel=1e-6)
    assert scores.inception_score(np.tile(confident[:1], (50, 1)),
                                  num_splits=1)[0] == pytest.approx(1.0, rel=1e-6)


def test_kid_same_vs_shifted():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(400, 16)), rng.normal(size=(400, 16))
    same, _ = scores.kernel_inception_distance(x, y, num_subsets=10, subset_size=200)
    shifted, _ = scores.kernel_inception_distance(x, y + 0.5, num_subsets=10, subset_size=200)
    assert abs(same) < 0.02
    assert shifted > 20 * max(abs(same), 1e-3)


def test_kid_polynomial_mmd_matches_explicit_sum():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(6, 3)), rng.normal(size=(6, 3)) + 1.0
    k = lambda a, b: (a @ b / 3 + 1) ** 3  # noqa: E731
    sxx = sum(k(x[i], x[j]) for i in range(6) for j in range(6) if i != j) / 30
    syy = sum(k(y[i], y[j]) for i in range(6) for j in range(6) if i != j) / 30
    sxy = sum(k(a, b) for a in x for b in y) / 36
    got, std = scores.kernel_inception_distance(x, y, num_subsets=3, subset_size=100)
    assert got == pytest.approx(sxx + syy - 2 * sxy, rel=1e-10) and std < 1e-12


def test_precision_recall_real_vs_real_and_far_noise():
    rng = np.random.default_rng(0)
    real_a, real_b = rng.normal(size=(800, 4)), rng.normal(size=(800, 4))
    p, r = scores.precision_recall(real_a, real_b, batch_size=300)
    assert p > 0.9 and r > 0.9
    p, r = scores.precision_recall(real_a, rng.normal(size=(800, 4)) + 50.0)
    assert p == 0.0 and r == 0.0
    # fake collapsed onto one real point: precision 1, recall tiny
    p, r = scores.precision_recall(real_a, np.repeat(real_a[:1], 10, axis=0))
    assert p == 1.0 and r < 0.05


def test_knn_radii_closed_form():
    pts = np.array([[0.0], [1.0], [3.0], [7.0]])
    # squared distance to the 2nd nearest other point
    np.testing.assert_allclose(scores.knn_radii(pts, k=2), [9.0, 4.0, 9.0, 36.0])


def _fake_network(checksum="a" * 64, dim=3):
    return FeatureNetwork(name="fake", checksum=checksum, feature_dim=dim, num_classes=2,
                          apply=lambda x: (x.reshape(len(x), -1)[:, :dim], x[:, 0, 0, :2]))


def test_reference_roundtrip_and_refusals(tmp_path):
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(40, 3))
    net = _fake_network()
    path = str(tmp_path / "ref.npz")
    reference.save_reference(path, feats, network=net, dataset="toy", split="heldout")
    ref = reference.load_reference(path, net.checksum)
    mu, sigma = frechet.feature_statistics(feats)
    np.testing.assert_allclose(ref.mu, mu)
    np.testing.assert_allclose(ref.sigma, sigma)
    assert ref.features.shape == (40, 3)
    assert ref.metadata["count"] == 40 and ref.metadata["feature_network"] == "fake"

    with pytest.raises(ValueError, match="computed with feature network 'fake'"):
        reference.load_reference(path, "b" * 64)

    # statistics edited after saving (same metadata, different mu) -> checksum refusal
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["mu"] = arrays["mu"] + 1.0
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match="SHA-256 .* does not match"):
        reference.load_reference(path, net.checksum)

    # consistent sidecar but metadata tampered inside the sidecar -> refused as well
    reference.save_reference(path, feats, network=net, dataset="toy", split="heldout")
    side = json.load(open(path + ".json"))
    side["feature_network_sha256"] = "b" * 64
    json.dump(side, open(path + ".json", "w"))
    with pytest.raises(ValueError, match="differs from its sidecar"):
        reference.load_reference(path, "b" * 64)
    with pytest.raises(FileNotFoundError, match="missing"):
        reference.load_reference(str(tmp_path / "nope.npz"), net.checksum)


def test_extract_features_batches_and_pads():
    class Source:
        name = "toy"

        def __len__(self):
            return 7

        def get(self, idx):
            return np.arange(7 * 4, dtype=np.float32).reshape(7, 2, 2, 1)[idx], idx

    net = dataclasses.replace(_fake_network(dim=4), batch_size=3)
    feats = reference.extract_features(net, Source(), chunk=5)
    np.testing.assert_array_equal(feats, np.arange(28, dtype=np.float32).reshape(7, 4))


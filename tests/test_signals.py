"""Signal metrics (jaxdiff.metrics.signals) on the embedded signals1d set: FD / MMD of raw values
and class accuracy under the spectral logistic-regression classifier."""
import numpy as np
import pytest

from jaxdiff.data import ArraySource, default_data_config, get_source
from jaxdiff.metrics import (SignalClassifier, feature_statistics, fit_signal_classifier,
                             frechet_distance, signal_features, signal_metrics)
from jaxdiff.metrics.two_sample import mmd2_noise_floor


@pytest.fixture(scope="module")
def splits():
    cfg = default_data_config("signals1d")
    return get_source(cfg, "train"), get_source(cfg, "heldout")


def _all(src):
    return src.get(np.arange(len(src)))


def test_identical_sets_give_zero_fd_and_mmd_within_the_estimator_bias(splits):
    train, heldout = splits
    x, y = _all(heldout)
    m = signal_metrics(x, y, x, train)
    assert m["fd"] < 1e-8
    # unbiased MMD^2 of a set against itself: -2 (1 - mean off-diagonal kernel) / n, in (-2/n, 0]
    assert -2.0 / len(x) < m["mmd2"] <= 0.0
    assert (m["num_samples"], m["num_reference"]) == (400, 400)
    assert m["class_accuracy"] == 1.0


def test_two_real_sets_are_close_and_a_shifted_set_is_far(splits):
    train, heldout = splits
    x, y = _all(heldout)
    real = signal_metrics(train.images[:400], train.labels[:400], heldout, train)
    shift = 0.3
    shifted = signal_metrics(x + shift, y, x, train)
    # a constant shift moves only the mean: FD = ||delta||^2 = L * C * shift^2 exactly
    np.testing.assert_allclose(shifted["fd"], 64 * 2 * shift ** 2, rtol=1e-6)
    assert shifted["fd"] > 10 * real["fd"]
    floor = mmd2_noise_floor(train.images[:400].reshape(400, -1), x.reshape(400, -1),
                             num_permutations=20)
    assert real["mmd2"] < floor < shifted["mmd2"]
    noise = np.random.default_rng(0).normal(0.0, x.std(), x.shape)
    assert signal_metrics(noise, y, x, train)["fd"] > 10 * real["fd"]


def test_classifier_recognises_held_out_signals_and_wrong_labels(splits):
    train, heldout = splits
    x, y = _all(heldout)
    m = signal_metrics(x, y, heldout, train)
    assert m["class_accuracy"] >= 0.95 and m["reference_class_accuracy"] >= 0.95
    assert signal_metrics(x, (y + 1) % 4, x, train)["class_accuracy"] <= 0.05
    assert "class_accuracy" not in signal_metrics(x, None, x, train)  # unconditional samples
    # white noise of the data's scale is classified near chance
    noise = np.random.default_rng(1).normal(0.0, x.std(), x.shape)
    assert signal_metrics(noise, y, x, train)["class_accuracy"] < 0.5


def test_metrics_are_deterministic_and_the_fit_is_memoised(splits):
    train, heldout = splits
    x, y = _all(heldout)
    assert fit_signal_classifier(train) is fit_signal_classifier(train)
    fresh = SignalClassifier.fit(*_all(train), train.num_classes)  # a second, independent fit
    np.testing.assert_array_equal(fresh.predict(x), fit_signal_classifier(train).predict(x))
    samples = x[::-1] * 0.9
    assert signal_metrics(samples, y[::-1], heldout, train) == signal_metrics(
        samples, y[::-1], heldout, train)


def test_fd_is_the_frechet_distance_of_the_flattened_values(splits):
    train, heldout = splits
    a, b = train.images[:300], heldout.images[:200]
    ours = signal_metrics(a, None, b, train, bandwidth=2.0)
    mu1, s1 = feature_statistics(a.reshape(300, -1))
    mu2, s2 = feature_statistics(b.reshape(200, -1))
    assert ours["fd"] == frechet_distance(mu1, s1, mu2, s2)
    assert ours["mmd_bandwidth"] == 2.0


def test_signal_features_are_phase_invariant():
    t = np.arange(64) / 64
    a = np.stack([np.sin(2 * np.pi * 3 * t), np.cos(2 * np.pi * 3 * t)], -1)[None]
    b = np.stack([np.sin(2 * np.pi * 3 * t + 1.0), np.cos(2 * np.pi * 3 * t + 1.0)], -1)[None]
    fa, fb = signal_features(a), signal_features(b)
    assert fa.shape == (1, 33 * 4)
    np.testing.assert_allclose(fa, fb, atol=1e-12)


def test_bad_inputs_raise(splits):
    train, heldout = splits
    x, y = _all(heldout)
    with pytest.raises(ValueError, match="samples: example shape"):
        signal_metrics(x[:, :32], y, x, train)
    with pytest.raises(ValueError, match="samples"):
        signal_metrics(x[:, :, 0], y, x, train)
    with pytest.raises(ValueError, match="labels"):
        signal_metrics(x, y + 4, x, train)
    with pytest.raises(ValueError, match="labels"):
        signal_metrics(x, y[:10], x, train)
    with pytest.raises(ValueError, match="samples: contains NaN"):
        signal_metrics(np.full_like(x, np.nan), y, x, train)
    other = ArraySource("short", np.zeros((8, 32, 2), np.float32),
                        np.arange(8, dtype=np.int32) % 2, 2)
    with pytest.raises(ValueError, match="train_source: example shape"):
        signal_metrics(x, y, x, other)

"""Sample-quality metrics for 1-D signal sets (N, L, C), e.g. samples of ``signals1d``.

  fd              squared Fréchet distance between Gaussians fitted to the flattened raw values
                  (L * C dimensions; ``frechet.feature_statistics`` / ``frechet_distance``,
                  float64), in squared signal units.
  mmd2            unbiased squared MMD with a Gaussian kernel on the flattened values
                  (``two_sample.mmd2_rbf``; bandwidth by the median heuristic on the pooled sets,
                  reported as ``mmd_bandwidth``).  Unbiased: about 0 (and possibly < 0) for two
                  sets from one distribution; for identical sets of n it is about -2 (1 - k) / n,
                  with k the mean off-diagonal kernel value.
  class_accuracy  fraction of samples that a classifier fitted on the training split assigns
                  their intended label (conditional samples; chance is 1 / K).

The classifier (``SignalClassifier``) is multinomial logistic regression (scikit-learn, lbfgs,
deterministic) on phase-invariant spectral features of each signal: per channel the magnitudes
|X_c(f)| of the real FFT along L, and per channel pair the real and imaginary parts of the
cross-spectrum X_a(f) conj(X_b(f)) (relative phase between channels), standardised with the
training split's mean and std.  A linear model on the raw values cannot see a waveform whose
phase is random; its spectrum can.
"""
from __future__ import annotations

import dataclasses
import functools
import warnings

import numpy as np

from jaxdiff.metrics.frechet import feature_statistics, frechet_distance
from jaxdiff.metrics.two_sample import median_bandwidth, mmd2_rbf


def _as_signals(name: str, x, example_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """``x`` as float64 (N, L, C) with N >= 2, finite, matching ``example_shape`` if given."""
    a = np.asarray(x, np.float64)
    if a.ndim != 3 or a.shape[0] < 2:
        raise ValueError(f"{name}: expected signals of shape (N, L, C) with N >= 2, got {a.shape}")
    if example_shape is not None and tuple(a.shape[1:]) != tuple(example_shape):
        raise ValueError(f"{name}: example shape {tuple(a.shape[1:])} differs from "
                         f"{tuple(example_shape)}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name}: contains NaN or inf")
    return a


def _all_examples(source) -> tuple[np.ndarray, np.ndarray]:
    """Every (example, label) of a source (``len`` and ``get(indices)``)."""
    return source.get(np.arange(len(source)))


def signal_features(x) -> np.ndarray:
    """Phase-invariant spectral features of signals.

    Args:
      x: (N, L, C) float signals.
    Returns:
      float64 (N, F) with F = (L // 2 + 1) * (C + C (C - 1)): per channel |rfft| and per channel
      pair a < b the real and imaginary parts of rfft_a * conj(rfft_b), each over the
      L // 2 + 1 frequencies, all divided by L.
    """
    a = np.asarray(x, np.float64)
    spec = np.fft.rfft(a, axis=1) / a.shape[1]             # (N, F0, C) complex
    parts = [np.abs(spec).reshape(a.shape[0], -1)]
    channels = a.shape[2]
    for i in range(channels):
        for j in range(i + 1, channels):
            cross = spec[:, :, i] * np.conj(spec[:, :, j])  # (N, F0)
            parts += [cross.real, cross.imag]
    return np.concatenate(parts, axis=1)


@dataclasses.dataclass(frozen=True, eq=False)
class SignalClassifier:
    """Logistic regression on standardised ``signal_features``.

    Fields:
      example_shape: (L, C) of the signals it was fitted on.
      num_classes: K.
      mean, std: float64 (F,) feature standardisation (std floored at 1e-12).
      model: the fitted ``sklearn.linear_model.LogisticRegression``.
    """

    example_shape: tuple[int, int]
    num_classes: int
    mean: np.ndarray
    std: np.ndarray
    model: object

    @classmethod
    def fit(cls, signals, labels, num_classes: int, *, c: float = 1.0) -> "SignalClassifier":
        """Fits on signals (N, L, C) with int labels (N,) in [0, num_classes); deterministic."""
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression

        x = _as_signals("signals", signals)
        y = np.asarray(labels)
        if y.shape != x.shape[:1] or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"labels: expected ints of shape ({x.shape[0]},), got {y.dtype} "
                             f"{y.shape}")
        if y.min() < 0 or y.max() >= num_classes or np.unique(y).size < 2:
            raise ValueError(f"labels: need values in [0, {num_classes}) and at least two "
                             f"classes, got {np.unique(y)[:10]}")
        f = signal_features(x)
        mean, std = f.mean(axis=0), np.maximum(f.std(axis=0), 1e-12)
        model = LogisticRegression(C=c, max_iter=5000)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit((f - mean) / std, y)
        return cls(tuple(int(d) for d in x.shape[1:]), int(num_classes), mean, std, model)

    def predict(self, signals) -> np.ndarray:
        """signals (N, L, C) -> int64 (N,) predicted classes."""
        x = _as_signals("signals", signals, self.example_shape)
        return np.asarray(self.model.predict((signal_features(x) - self.mean) / self.std),
                          np.int64)

    def accuracy(self, signals, labels) -> float:
        """Fraction of ``signals`` (N, L, C) predicted as ``labels`` (N,)."""
        labels = np.asarray(labels)
        predicted = self.predict(signals)
        if labels.shape != predicted.shape:
            raise ValueError(f"labels: expected shape {predicted.shape}, got {labels.shape}")
        return float(np.mean(predicted == labels))


@functools.lru_cache(maxsize=8)
def fit_signal_classifier(train_source) -> SignalClassifier:
    """The ``SignalClassifier`` of a source's examples and labels (memoised per source object)."""
    signals, labels = _all_examples(train_source)
    return SignalClassifier.fit(signals, labels, int(train_source.num_classes))


def signal_metrics(samples, labels, reference, train_source, *,
                   bandwidth: float | None = None) -> dict:
    """Distances of a signal sample set to a reference set, and the samples' class accuracy.

    Args:
      samples: (N, L, C) float signals, N >= 2 (e.g. generated).
      labels: (N,) int intended classes in [0, K), or None (unconditional: no accuracy).
      reference: (M, L, C) float signals, M >= 2, or a source (``len``, ``get``, e.g. the
        held-out split), whose examples are used (and whose labels give
        ``reference_class_accuracy``).
      train_source: the source the classifier is fitted on (its examples and labels, K =
        ``num_classes``); the fit is memoised per source object.
      bandwidth: RBF kernel bandwidth (signal units); None: median heuristic on the pooled sets.
    Returns:
      dict of Python floats / ints:
        fd                        squared Fréchet distance of the flattened values.
        mmd2                      unbiased RBF MMD^2 of the flattened values.
        mmd_bandwidth             the kernel bandwidth used.
        class_accuracy            fraction of samples classified as their label (if labels).
        reference_class_accuracy  the same for a reference source's own labels (the ceiling).
        num_samples, num_reference.
    Memory: the MMD kernel is (N + M)^2 float64; subsample for N + M beyond ~10^4.
    """
    ref_labels = None
    if hasattr(reference, "get") and hasattr(reference, "__len__"):
        reference, ref_labels = _all_examples(reference)
    ref = _as_signals("reference", reference)
    x = _as_signals("samples", samples, ref.shape[1:])
    flat_x, flat_ref = x.reshape(len(x), -1), ref.reshape(len(ref), -1)
    mu_x, sigma_x = feature_statistics(flat_x)
    mu_r, sigma_r = feature_statistics(flat_ref)
    h = median_bandwidth(flat_x, flat_ref) if bandwidth is None else float(bandwidth)
    out = dict(fd=frechet_distance(mu_x, sigma_x, mu_r, sigma_r),
               mmd2=mmd2_rbf(flat_x, flat_ref, bandwidth=h), mmd_bandwidth=h,
               num_samples=int(len(x)), num_reference=int(len(ref)))
    if labels is not None or ref_labels is not None:
        train_shape = tuple(train_source.example_shape)
        if train_shape != tuple(ref.shape[1:]):
            raise ValueError(f"train_source: example shape {train_shape} differs from the "
                             f"samples' {tuple(ref.shape[1:])}")
        classifier = fit_signal_classifier(train_source)
    if labels is not None:
        y = np.asarray(labels)
        if (y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer)
                or y.min() < 0 or y.max() >= classifier.num_classes):
            raise ValueError(f"labels: expected ints of shape ({len(x)},) in "
                             f"[0, {classifier.num_classes}), got {y.dtype} {y.shape}")
        out["class_accuracy"] = classifier.accuracy(x, y)
    if ref_labels is not None:
        out["reference_class_accuracy"] = classifier.accuracy(ref, ref_labels)
    return out

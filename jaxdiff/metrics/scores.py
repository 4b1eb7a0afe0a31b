"""Sample-quality scores on features and logits: Inception Score, KID, precision / recall.

  inception_score      exp(E_x KL(p(y|x) || p(y))) per split (Salimans et al. 2016, Sec. 4).
  kernel_inception_distance
                       unbiased MMD^2 with the cubic polynomial kernel
                       k(a, b) = (a.b / d + 1)^3, averaged over random subsets
                       (Bińkowski et al. 2018, Sec. 4 / App. D).
  precision_recall     improved precision and recall with k-NN hyperspheres, k = 3
                       (Kynkäänniemi et al. 2019, Eq. 1-2).

Inputs are NumPy-convertible arrays; everything is computed in float64 NumPy and returned as
Python floats.
"""
from __future__ import annotations

import numpy as np


def _as2d(name: str, a) -> np.ndarray:
    a = np.asarray(a, np.float64)
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{name}: expected a non-empty (n, d) array, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name}: contains NaN or inf")
    return a


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def inception_score(logits, num_splits: int = 10) -> tuple[float, float]:
    """Inception Score of classifier logits (Salimans et al. 2016).

    For each of ``num_splits`` consecutive, equal-as-possible chunks of the samples,
    IS = exp(mean_x KL(p(y|x) || p(y))) with p(y) the chunk's mean of p(y|x) = softmax(logits);
    1 <= IS <= K.  (The Inception protocol uses the 1008 logits of the FID Inception network,
    50,000 samples and 10 splits.)

    Args:
      logits: (n, K) unnormalised class scores, n >= num_splits.
      num_splits: number of chunks.
    Returns:
      (mean, standard deviation) of the per-split scores (std with ddof=0, as the reference
      implementation).
    """
    logits = _as2d("logits", logits)
    n = logits.shape[0]
    if not 1 <= num_splits <= n:
        raise ValueError(f"num_splits: need 1 <= num_splits <= n = {n}, got {num_splits}")
    log_p = _log_softmax(logits)
    scores = []
    for chunk in np.array_split(log_p, num_splits):
        p = np.exp(chunk)
        log_py = np.log(p.mean(axis=0))
        kl = (p * (chunk - log_py)).sum(axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


def _polynomial_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 (Gretton et al. 2012, Eq. 3) with k(a, b) = (a.b / d + 1)^3."""
    d = x.shape[1]
    kxx = (x @ x.T / d + 1.0) ** 3
    kyy = (y @ y.T / d + 1.0) ** 3
    kxy = (x @ y.T / d + 1.0) ** 3
    m, n = len(x), len(y)
    sxx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    syy = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(sxx + syy - 2.0 * kxy.mean())


def kernel_inception_distance(real, fake, *, num_subsets: int = 100, subset_size: int = 1000,
                              seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance (Bińkowski et al. 2018): unbiased polynomial-kernel MMD^2.

    Each of ``num_subsets`` rounds draws min(subset_size, n_real, n_fake) rows without
    replacement from each set (NumPy ``default_rng(seed)``) and computes the unbiased MMD^2;
    the estimate is unbiased, so it can be slightly negative when the sets match.

    Args:
      real: (n, d) features.  fake: (m, d) features.
    Returns:
      (mean, standard deviation) of the subset MMD^2 values, in squared feature units.
    """
    real, fake = _as2d("real", real), _as2d("fake", fake)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"real and fake features differ in width: {real.shape[1]} vs "
                         f"{fake.shape[1]}")
    size = min(int(subset_size), len(real), len(fake))
    if size < 2:
        raise ValueError(f"kernel_inception_distance needs subsets of >= 2 rows, got {size} "
                         f"(subset_size={subset_size}, n_real={len(real)}, n_fake={len(fake)})")
    if num_subsets < 1:
        raise ValueError(f"num_subsets: must be >= 1, got {num_subsets}")
    rng = np.random.default_rng(seed)
    values = [_polynomial_mmd2(real[rng.choice(len(real), size, replace=False)],
                               fake[rng.choice(len(fake), size, replace=False)])
              for _ in range(num_subsets)]
    return float(np.mean(values)), float(np.std(values))


def _sqdist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d, 0.0)


def knn_radii(features, k: int = 3, batch_size: int = 1024) -> np.ndarray:
    """Squared distance from each row to its k-th nearest other row, float64 (n,).

    These are the squared radii of the hyperspheres whose union estimates the manifold of the
    set (Kynkäänniemi et al. 2019, Sec. 2); distances are computed in row batches.
    """
    f = _as2d("features", features)
    if not 1 <= k < len(f):
        raise ValueError(f"k: need 1 <= k < n = {len(f)}, got {k}")
    radii = np.empty(len(f))
    for start in range(0, len(f), batch_size):
        d = _sqdist(f[start:start + batch_size], f)
        # index 0 of the partition is the row itself (distance 0), so the k-th neighbour is k
        radii[start:start + batch_size] = np.partition(d, k, axis=1)[:, k]
    return radii


def _coverage(manifold: np.ndarray, radii: np.ndarray, queries: np.ndarray,
              batch_size: int) -> float:
    """Fraction of ``queries`` inside at least one ball B(manifold_i, sqrt(radii_i))."""
    inside = 0
    for start in range(0, len(queries), batch_size):
        d = _sqdist(queries[start:start + batch_size], manifold)
        inside += int(np.any(d <= radii[None, :], axis=1).sum())
    return inside / len(queries)


def precision_recall(real, fake, *, k: int = 3, batch_size: int = 1024) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019, Eq. 1-2).

    precision = fraction of fake samples inside the real manifold (union over real r_i of balls
    of radius ||r_i - NN_k(r_i)||); recall = fraction of real samples inside the fake manifold.

    Args:
      real: (n, d) features.  fake: (m, d) features.  k: neighbour rank for the radii (3 in the
        paper).
    Returns:
      (precision, recall), each in [0, 1].
    """
    real, fake = _as2d("real", real), _as2d("fake", fake)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"real and fake features differ in width: {real.shape[1]} vs "
                         f"{fake.shape[1]}")
    precision = _coverage(real, knn_radii(real, k, batch_size), fake, batch_size)
    recall = _coverage(fake, knn_radii(fake, k, batch_size), real, batch_size)
    return precision, recall

"""Two-sample distances for low-dimensional samples (toy tests and benchmarks).

  mmd2_rbf           unbiased squared MMD with a Gaussian kernel (Gretton et al. 2012, Eq. 3);
                     bandwidth by the median heuristic on the pooled sample.
  mmd2_noise_floor   the (1 - level) quantile of mmd2 under the null, by permutation of the
                     pooled sample: a sampler whose MMD^2 to exact samples is below it cannot be
                     told apart from exact sampling at this sample size.
  energy_distance    2 E|X-Y| - E|X-X'| - E|Y-Y'| (Szekely & Rizzo 2013), V-statistic.
  sliced_w2          sliced 2-Wasserstein distance over random unit directions (sorted 1-D
                     couplings; equal sample sizes).

All take x: (n, d), y: (m, d) arrays and return Python floats; computed in float64 numpy.
"""
from __future__ import annotations

import numpy as np


def _as2d(a) -> np.ndarray:
    a = np.asarray(a, np.float64)
    if a.ndim != 2:
        raise ValueError(f"samples must have shape (n, d), got {a.shape}")
    return a


def _sqdist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d, 0.0)


def median_bandwidth(x, y) -> float:
    """Median pairwise distance of the pooled sample (the median heuristic)."""
    z = np.concatenate([_as2d(x), _as2d(y)])
    d = np.sqrt(_sqdist(z, z))
    return float(np.median(d[np.triu_indices(len(z), 1)]))


def _mmd2_from_kernel(k: np.ndarray, n: int) -> float:
    kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
    m = k.shape[0] - n
    sxx = (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
    syy = (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(sxx + syy - 2.0 * kxy.mean())


def mmd2_rbf(x, y, bandwidth: float | None = None) -> float:
    """Unbiased MMD^2 with k(a, b) = exp(-||a - b||^2 / (2 h^2)); h from the median heuristic."""
    x, y = _as2d(x), _as2d(y)
    h = median_bandwidth(x, y) if bandwidth is None else float(bandwidth)
    z = np.concatenate([x, y])
    return _mmd2_from_kernel(np.exp(-_sqdist(z, z) / (2 * h * h)), len(x))


def mmd2_noise_floor(x, y, *, num_permutations: int = 100, level: float = 0.01,
                     seed: int = 0, bandwidth: float | None = None) -> float:
    """(1 - level) quantile of MMD^2 over random relabellings of the pooled sample."""
    x, y = _as2d(x), _as2d(y)
    h = median_bandwidth(x, y) if bandwidth is None else float(bandwidth)
    z = np.concatenate([x, y])
    k = np.exp(-_sqdist(z, z) / (2 * h * h))
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(num_permutations):
        p = rng.permutation(len(z))
        stats.append(_mmd2_from_kernel(k[np.ix_(p, p)], len(x)))
    return float(np.quantile(stats, 1.0 - level))


def energy_distance(x, y) -> float:
    x, y = _as2d(x), _as2d(y)
    dxy = np.sqrt(_sqdist(x, y)).mean()
    dxx = np.sqrt(_sqdist(x, x)).mean()
    dyy = np.sqrt(_sqdist(y, y)).mean()
    return float(2 * dxy - dxx - dyy)


def sliced_w2(x, y, *, num_directions: int = 256, seed: int = 0) -> float:
    x, y = _as2d(x), _as2d(y)
    if len(x) != len(y):
        raise ValueError("sliced_w2 needs equal sample sizes")
    rng = np.random.default_rng(seed)
    dirs = rng.normal(size=(num_directions, x.shape[1]))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    px, py = np.sort(x @ dirs.T, axis=0), np.sort(y @ dirs.T, axis=0)
    return float(np.sqrt(np.mean((px - py) ** 2)))

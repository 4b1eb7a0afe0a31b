"""Fréchet distance between Gaussians fitted to feature sets (FID: Heusel et al. 2017, Eq. 6).

  d^2((mu1, S1), (mu2, S2)) = ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^{1/2})

Everything is computed in float64 NumPy: with 2048-d Inception features the three traces are
each ~10^2-10^3 while FIDs of good models are ~1, so float32 loses the answer to cancellation.

The matrix square root is the principal root of S1 S2 (what ``scipy.linalg.sqrtm`` returns, and
what pytorch-fid / EDM use), obtained from symmetric eigendecompositions instead of a Schur
decomposition of the non-symmetric product:

  R = S1^{1/2}            (eigh of S1; eigenvalues clipped at 0)
  M = R S2 R              (symmetric PSD)
  (S1 S2)^{1/2} = R M^{1/2} R^{-1},   tr((S1 S2)^{1/2}) = tr(M^{1/2}) = sum_i sqrt(lambda_i(M)).

Why this is scipy's answer: S1 S2 = R (R S2 R) R^{-1} = R M R^{-1} is similar to M, so its
eigenvalues are those of M, real and >= 0. X = R M^{1/2} R^{-1} satisfies X^2 = R M R^{-1} = S1 S2
and its eigenvalues sqrt(lambda_i(M)) lie in the closed right half-plane, which makes X the
principal square root -- the unique root with that spectrum, which the Schur method of
``scipy.linalg.sqrtm`` (Deadman, Higham & Ralha 2013) computes.  The trace form needs no inverse,
so it stays exact when S1 is singular (fewer samples than dimensions), where scipy returns a
nearly-singular complex result that pytorch-fid patches with an eps * I offset.
"""
from __future__ import annotations

import numpy as np


def _as_square(name: str, a) -> np.ndarray:
    a = np.asarray(a, np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"{name}: expected a square (d, d) matrix, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name}: contains NaN or inf")
    return a


def _psd_eigh(name: str, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decomposition of the symmetric part of PSD ``a``; eigenvalues clipped at 0.

    Rounding makes the smallest eigenvalues of a singular covariance come out slightly
    negative (~ -1e-16 * ||a||); they are set to 0.  Clearly negative eigenvalues (below
    -1e-8 * the largest) mean the input is not a covariance and raise a ValueError.
    """
    lam, vec = np.linalg.eigh(0.5 * (a + a.T))
    scale = max(float(np.abs(lam).max(initial=0.0)), np.finfo(np.float64).tiny)
    if lam.min(initial=0.0) < -1e-8 * scale:
        raise ValueError(f"{name}: not positive semi-definite (smallest eigenvalue "
                         f"{lam.min():.3e}, largest {lam.max():.3e})")
    return np.clip(lam, 0.0, None), vec


def sqrtm_psd(a, name: str = "a") -> np.ndarray:
    """Symmetric PSD square root of a (d, d) PSD matrix, float64 (d, d)."""
    lam, vec = _psd_eigh(name, _as_square(name, a))
    return (vec * np.sqrt(lam)) @ vec.T


def _inner_product(s1: np.ndarray, s2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(R, M) with R = S1^{1/2} and M = R S2 R symmetrised (see the module docstring)."""
    r = sqrtm_psd(s1, "sigma1")
    _psd_eigh("sigma2", s2)
    m = r @ s2 @ r
    return r, 0.5 * (m + m.T)


def sqrtm_psd_product(sigma1, sigma2) -> np.ndarray:
    """Principal square root of S1 S2 for PSD S1 (invertible) and S2, float64 (d, d).

    Computed as R M^{1/2} R^{-1} with R = S1^{1/2}, M = R S2 R; equals ``scipy.linalg.sqrtm(S1
    @ S2)`` up to rounding (module docstring).  R^{-1} needs S1 positive definite; for the
    Fréchet distance use ``trace_sqrtm_psd_product``, which has no inverse.
    """
    s1, s2 = _as_square("sigma1", sigma1), _as_square("sigma2", sigma2)
    if s1.shape != s2.shape:
        raise ValueError(f"sigma1 {s1.shape} and sigma2 {s2.shape} differ in shape")
    r, m = _inner_product(s1, s2)
    lam, vec = _psd_eigh("sigma1^1/2 sigma2 sigma1^1/2", m)
    sqrt_m = (vec * np.sqrt(lam)) @ vec.T
    return np.linalg.solve(r.T, (r @ sqrt_m).T).T


def trace_sqrtm_psd_product(sigma1, sigma2) -> float:
    """tr((S1 S2)^{1/2}) = sum_i sqrt(lambda_i(S1^{1/2} S2 S1^{1/2})) for PSD S1, S2 (d, d)."""
    s1, s2 = _as_square("sigma1", sigma1), _as_square("sigma2", sigma2)
    if s1.shape != s2.shape:
        raise ValueError(f"sigma1 {s1.shape} and sigma2 {s2.shape} differ in shape")
    _, m = _inner_product(s1, s2)
    lam, _ = _psd_eigh("sigma1^1/2 sigma2 sigma1^1/2", m)
    return float(np.sqrt(lam).sum())


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance of a feature set.

    Args:
      features: (n, d) array, n >= 2, any float dtype.
    Returns:
      (mu float64 (d,), sigma float64 (d, d)) with sigma = sum_i (f_i - mu)(f_i - mu)^T / (n - 1).
    """
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features: expected shape (n, d) with n >= 2, got {f.shape}")
    if not np.all(np.isfinite(f)):
        raise ValueError("features: contains NaN or inf")
    mu = f.mean(axis=0)
    centred = f - mu
    return mu, centred.T @ centred / (f.shape[0] - 1)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Squared Fréchet (2-Wasserstein) distance between N(mu1, S1) and N(mu2, S2), float.

    Args:
      mu1, mu2: (d,) means.  sigma1, sigma2: (d, d) covariances (PSD).
    Returns:
      ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^{1/2})  (Heusel et al. 2017, Eq. 6),
      in the squared units of the features; clipped at 0 against rounding.
    """
    m1, m2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = _as_square("sigma1", sigma1), _as_square("sigma2", sigma2)
    d = s1.shape[0]
    for name, v in (("mu1", m1), ("mu2", m2)):
        if v.shape != (d,):
            raise ValueError(f"{name}: expected shape ({d},) to match the covariances, got "
                             f"{v.shape}")
    if s2.shape != s1.shape:
        raise ValueError(f"sigma1 {s1.shape} and sigma2 {s2.shape} differ in shape")
    diff = m1 - m2
    value = (diff @ diff + np.trace(s1) + np.trace(s2)
             - 2.0 * trace_sqrtm_psd_product(s1, s2))
    return float(max(value, 0.0))

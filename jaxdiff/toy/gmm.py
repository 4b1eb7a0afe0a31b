"""Analytic Gaussian-mixture oracle: exact scores, denoisers, posteriors and tilts.

Data: x0 ~ sum_k pi_k N(mu_k, s_k^2 I) in d dimensions; each component k belongs to a class
c_k in {0, ..., C-1}.  Under any forward process x_t = alpha x0 + sigma eps everything is exact:

  p_t(x)          = sum_k pi_k N(x; alpha mu_k, v_k I),      v_k = alpha^2 s_k^2 + sigma^2
  r_k(x)          = pi_k N(x; alpha mu_k, v_k I) / p_t(x)    (responsibilities)
  score(x)        = -sum_k r_k (x - alpha mu_k) / v_k
  E[x0 | x_t = x] = sum_k r_k [mu_k + (alpha s_k^2 / v_k)(x - alpha mu_k)]
  p(c | x_t)      = sum_{k in c} r_k

Class-conditional quantities restrict the sums to the components of class c.  A reward tilt
p0(x) exp(lambda r(x)) with r(x) = -||x - a||^2 / (2 tau^2) is again a Gaussian mixture (see
``GMM.tilt``), which gives exact targets for search, tree sampling and fine-tuning tests.
A linear Gaussian observation y = A x0 + n, n ~ N(0, s_y^2 I), gives an exact posterior
p(x0 | y) that is again a mixture, but with full covariances (``GMM.condition_on`` returns a
``FullGMM``): the exact target for inpainting, super-resolution and steering tests.

The oracle is a pytree (means, stds, log-weights are leaves; component classes are leaves too,
the number of classes is static), and ``oracle_denoiser`` wraps it as a ``Denoiser`` with the
x0 parameterization.
"""
from __future__ import annotations

import dataclasses
import jax
import jax.scipy.linalg  # noqa: F401  (FullGMM: triangular solves)
import jax.numpy as jnp
import numpy as np

from jaxdiff import parameterization as P
from jaxdiff.denoiser import Denoiser, batch_times
from jaxdiff.schedules import Schedule

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class GMM:
    """An isotropic Gaussian mixture.

    Fields:
      means:       (K, d) component means.
      stds:        (K,) per-component standard deviations s_k.
      log_weights: (K,) log pi_k (normalised).
      classes:     (K,) int32 class of each component, in [0, num_classes).
      num_classes: number of classes C (static); index C is the unconditional token.
    """

    means: Array
    stds: Array
    log_weights: Array
    classes: Array
    num_classes: int

    @property
    def dim(self) -> int:
        return int(self.means.shape[-1])

    @property
    def num_components(self) -> int:
        return int(self.means.shape[0])

    # --- exact densities -------------------------------------------------------------------
    def _class_mask(self, cond: Array | None, batch: int) -> Array:
        """(B, K) bool: components allowed for each example (all for None / the null token)."""
        if cond is None:
            return jnp.ones((batch, self.num_components), bool)
        cond = jnp.asarray(cond, jnp.int32)
        cond = jnp.broadcast_to(cond, (batch,))
        null = cond[:, None] >= self.num_classes
        return null | (self.classes[None, :] == cond[:, None])

    def log_joint(self, x: Array, alpha: Array, sigma: Array) -> Array:
        """(B, K): log pi_k + log N(x; alpha mu_k, v_k I).  x: (B, d); alpha, sigma: (B,)."""
        alpha = jnp.broadcast_to(jnp.asarray(alpha, jnp.float32), x.shape[:1])[:, None]
        sigma = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), x.shape[:1])[:, None]
        v = alpha**2 * self.stds[None, :] ** 2 + sigma**2                        # (B, K)
        sq = jnp.sum((x[:, None, :] - alpha[..., None] * self.means[None]) ** 2, -1)  # (B, K)
        return self.log_weights[None] - 0.5 * sq / v - 0.5 * self.dim * jnp.log(2 * jnp.pi * v)

    def log_responsibilities(self, x, alpha, sigma, cond=None) -> Array:
        """(B, K) log r_k(x), restricted and renormalised to the class of ``cond``."""
        lj = jnp.where(self._class_mask(cond, x.shape[0]), self.log_joint(x, alpha, sigma),
                       -jnp.inf)
        return lj - jax.nn.logsumexp(lj, axis=-1, keepdims=True)

    def log_prob(self, x, alpha, sigma, cond=None) -> Array:
        """(B,) log p_t(x | cond)."""
        lj = jnp.where(self._class_mask(cond, x.shape[0]), self.log_joint(x, alpha, sigma),
                       -jnp.inf)
        lp = jax.nn.logsumexp(lj, axis=-1)
        if cond is None:
            return lp
        # p(x | c) = p(x, c) / pi(c)
        return lp - self._log_class_prior(cond, x.shape[0])

    def _log_class_prior(self, cond, batch) -> Array:
        mask = self._class_mask(cond, batch)
        return jax.nn.logsumexp(jnp.where(mask, self.log_weights[None], -jnp.inf), axis=-1)

    def class_log_posterior(self, x, alpha, sigma) -> Array:
        """(B, C) exact log p(c | x_t)."""
        lr = self.log_responsibilities(x, alpha, sigma)
        onehot = self.classes[:, None] == jnp.arange(self.num_classes)[None, :]      # (K, C)
        return jax.nn.logsumexp(jnp.where(onehot[None], lr[:, :, None], -jnp.inf), axis=1)

    def posterior_mean(self, x, alpha, sigma, cond=None) -> Array:
        """(B, d) E[x0 | x_t = x, cond]."""
        r = jnp.exp(self.log_responsibilities(x, alpha, sigma, cond))             # (B, K)
        alpha = jnp.broadcast_to(jnp.asarray(alpha, jnp.float32), x.shape[:1])[:, None, None]
        sigma = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), x.shape[:1])[:, None, None]
        s2 = self.stds[None, :, None] ** 2
        v = alpha**2 * s2 + sigma**2
        comp = self.means[None] + (alpha * s2 / v) * (x[:, None, :] - alpha * self.means[None])
        return jnp.sum(r[..., None] * comp, axis=1)

    def score(self, x, alpha, sigma, cond=None) -> Array:
        """(B, d) grad_x log p_t(x | cond)."""
        return P.score_from_x0(x, self.posterior_mean(x, alpha, sigma, cond), alpha, sigma)

    # --- exact samples ---------------------------------------------------------------------
    def sample(self, key: Array, n: int, cond: Array | int | None = None) -> Array:
        """(n, d) exact samples of p0 (or of p0(. | c))."""
        return self.sample_noisy(key, n, 1.0, 0.0, cond)

    def sample_noisy(self, key, n, alpha, sigma, cond=None) -> Array:
        """(n, d) exact samples of p_t(. | c): x0 ~ p0(. | c), then alpha x0 + sigma eps."""
        k_comp, k_x0, k_eps = jax.random.split(key, 3)
        mask = self._class_mask(None if cond is None else jnp.broadcast_to(cond, (n,)), n)
        logits = jnp.where(mask, self.log_weights[None], -jnp.inf)
        comp = jax.random.categorical(k_comp, logits, axis=-1)
        x0 = self.means[comp] + self.stds[comp, None] * jax.random.normal(k_x0, (n, self.dim))
        return alpha * x0 + sigma * jax.random.normal(k_eps, (n, self.dim))

    # --- reward tilt -----------------------------------------------------------------------
    def tilt(self, anchor: Array, tau: float, lam: float) -> "GMM":
        """The exact mixture proportional to p0(x) exp(lam r(x)), r(x) = -||x - a||^2 / (2 tau^2).

        Per component (Gaussian product): precision 1/s^2 + lam/tau^2, mean
        (mu/s^2 + lam a/tau^2) / precision, weight ∝ pi_k N(mu_k; a, (s_k^2 + tau^2/lam) I).
        lam = 0 returns the mixture unchanged.
        """
        if lam < 0 or tau <= 0:
            raise ValueError(f"tilt needs lam >= 0 and tau > 0, got lam={lam}, tau={tau}")
        if lam == 0:
            return self
        a = jnp.asarray(anchor, jnp.float32)
        s2 = self.stds**2
        prec = 1.0 / s2 + lam / tau**2
        means = (self.means / s2[:, None] + lam * a[None] / tau**2) / prec[:, None]
        var_a = s2 + tau**2 / lam
        logw = (self.log_weights - 0.5 * jnp.sum((self.means - a) ** 2, -1) / var_a
                - 0.5 * self.dim * jnp.log(var_a))
        logw = logw - jax.nn.logsumexp(logw)
        return GMM(means=means, stds=jnp.sqrt(1.0 / prec), log_weights=logw,
                   classes=self.classes, num_classes=self.num_classes)

    # --- linear-observation posterior ------------------------------------------------------
    def to_full(self) -> "FullGMM":
        """The same mixture with its covariances written out: s_k^2 I, shape (K, d, d)."""
        eye = jnp.eye(self.dim, dtype=jnp.float32)
        return FullGMM(means=self.means, covs=self.stds[:, None, None] ** 2 * eye[None],
                       log_weights=self.log_weights)

    def condition_on(self, A, y, noise_std) -> "FullGMM":
        """The exact posterior p(x0 | y) for y = A x0 + n, n ~ N(0, noise_std^2 I).

        A: (m, d); y: (m,); noise_std >= 0 (0 needs A of full row rank).  Under a general A the
        posterior components are not isotropic (observing one coordinate shrinks only that
        coordinate's variance), which ``GMM`` cannot hold, so a ``FullGMM`` is returned; see
        ``FullGMM.condition_on`` for the formulas.
        """
        return self.to_full().condition_on(A, y, noise_std)


jax.tree_util.register_dataclass(
    GMM, data_fields=["means", "stds", "log_weights", "classes"], meta_fields=["num_classes"])


@dataclasses.dataclass(frozen=True)
class FullGMM:
    """A Gaussian mixture with full covariances, sum_k pi_k N(mu_k, S_k), on clean data only
    (what a linear-observation posterior of a ``GMM`` is).

    Fields:
      means:       (K, d) component means mu_k.
      covs:        (K, d, d) symmetric positive definite covariances S_k.
      log_weights: (K,) log pi_k (normalised).
    """

    means: Array
    covs: Array
    log_weights: Array

    @property
    def dim(self) -> int:
        return int(self.means.shape[-1])

    def log_prob(self, x: Array) -> Array:
        """(B,) log p(x) for x (B, d)."""
        prec = jnp.linalg.inv(self.covs)                                         # (K, d, d)
        _, logdet = jnp.linalg.slogdet(self.covs)                                # (K,)
        diff = x[:, None, :] - self.means[None]                                  # (B, K, d)
        maha = jnp.einsum("bki,kij,bkj->bk", diff, prec, diff)
        lj = (self.log_weights[None] - 0.5 * maha - 0.5 * logdet[None]
              - 0.5 * self.dim * jnp.log(2 * jnp.pi))
        return jax.nn.logsumexp(lj, axis=-1)

    def sample(self, key: Array, n: int) -> Array:
        """(n, d) exact samples: a component k ~ pi, then mu_k + L_k z with L_k L_k^T = S_k."""
        k_comp, k_z = jax.random.split(key)
        comp = jax.random.categorical(k_comp, jnp.broadcast_to(self.log_weights, (n,) +
                                                               self.log_weights.shape))
        chol = jnp.linalg.cholesky(self.covs)
        z = jax.random.normal(k_z, (n, self.dim))
        return self.means[comp] + jnp.einsum("nij,nj->ni", chol[comp], z)

    def mean(self) -> Array:
        """(d,) E[x] = sum_k pi_k mu_k."""
        return jnp.sum(jnp.exp(self.log_weights)[:, None] * self.means, 0)

    def covariance(self) -> Array:
        """(d, d) Cov[x] = sum_k pi_k (S_k + mu_k mu_k^T) - E[x] E[x]^T."""
        w = jnp.exp(self.log_weights)
        m = self.mean()
        second = jnp.sum(w[:, None, None] * (self.covs + self.means[:, :, None]
                                              * self.means[:, None, :]), 0)
        return second - m[:, None] * m[None, :]

    def condition_on(self, A, y, noise_std) -> "FullGMM":
        """The exact posterior p(x | y) for y = A x + n, n ~ N(0, s_y^2 I), s_y = noise_std.

        Per component (the Gaussian conditioning formulas, e.g. Bishop 2006, Eqs. 2.113-2.117):
            C_k   = A S_k A^T + s_y^2 I                 (m, m)  the evidence covariance
            G_k   = S_k A^T C_k^{-1}                    (d, m)  the gain
            mu_k' = mu_k + G_k (y - A mu_k),    S_k' = S_k - G_k A S_k
            pi_k' ∝ pi_k N(y; A mu_k, C_k)              (the component's evidence)
        A: (m, d); y: (m,); noise_std >= 0 (0 needs C_k invertible, i.e. A of full row rank).
        """
        A = jnp.asarray(A, jnp.float32)
        y = jnp.asarray(y, jnp.float32)
        if A.ndim != 2 or A.shape[1] != self.dim:
            raise ValueError(f"condition_on: A must have shape (m, {self.dim}), got {A.shape}")
        if y.shape != (A.shape[0],):
            raise ValueError(f"condition_on: y must have shape ({A.shape[0]},) for A of shape "
                             f"{A.shape}, got {y.shape}")
        s_y = float(noise_std)
        if not s_y >= 0:
            raise ValueError(f"condition_on: noise_std must be >= 0, got {noise_std!r}")
        m = A.shape[0]
        sa = jnp.einsum("kij,mj->kim", self.covs, A)                             # S_k A^T
        c = jnp.einsum("mi,kin->kmn", A, sa) + s_y**2 * jnp.eye(m)[None]         # (K, m, m)
        c = 0.5 * (c + jnp.swapaxes(c, -1, -2))
        resid = y[None] - self.means @ A.T                                       # (K, m)
        c_chol = jnp.linalg.cholesky(c)
        # G_k^T = C_k^{-1} A S_k  (C_k, S_k symmetric)
        gain_t = jax.scipy.linalg.cho_solve((c_chol, True), jnp.swapaxes(sa, -1, -2))
        gain = jnp.swapaxes(gain_t, -1, -2)                                      # (K, d, m)
        means = self.means + jnp.einsum("kdm,km->kd", gain, resid)
        covs = self.covs - jnp.einsum("kdm,kme->kde", gain, jnp.swapaxes(sa, -1, -2))
        covs = 0.5 * (covs + jnp.swapaxes(covs, -1, -2))
        sol = jax.scipy.linalg.solve_triangular(c_chol, resid[..., None], lower=True)[..., 0]
        logdet = 2.0 * jnp.sum(jnp.log(jnp.diagonal(c_chol, axis1=-2, axis2=-1)), -1)
        logw = (self.log_weights - 0.5 * jnp.sum(sol**2, -1) - 0.5 * logdet
                - 0.5 * m * jnp.log(2 * jnp.pi))
        return FullGMM(means=means, covs=covs, log_weights=logw - jax.nn.logsumexp(logw))


jax.tree_util.register_dataclass(
    FullGMM, data_fields=["means", "covs", "log_weights"], meta_fields=[])


def make_gmm(means, stds, weights=None, classes=None, num_classes: int | None = None) -> GMM:
    """Builds a validated GMM from array-likes (stds: scalar or (K,); weights normalised)."""
    means = np.asarray(means, np.float32)
    if means.ndim != 2:
        raise ValueError(f"means must have shape (K, d), got {means.shape}")
    k = means.shape[0]
    stds = np.broadcast_to(np.asarray(stds, np.float32), (k,)).copy()
    if np.any(stds <= 0):
        raise ValueError("component standard deviations must be > 0")
    weights = np.full(k, 1.0 / k) if weights is None else np.asarray(weights, np.float64)
    if weights.shape != (k,) or np.any(weights <= 0):
        raise ValueError(f"weights must be {k} positive numbers")
    classes = np.zeros(k, np.int32) if classes is None else np.asarray(classes, np.int32)
    num_classes = int(classes.max()) + 1 if num_classes is None else int(num_classes)
    if classes.shape != (k,) or classes.min() < 0 or classes.max() >= num_classes:
        raise ValueError(f"classes must be {k} integers in [0, {num_classes})")
    return GMM(means=jnp.asarray(means), stds=jnp.asarray(stds),
               log_weights=jnp.asarray(np.log(weights / weights.sum()), jnp.float32),
               classes=jnp.asarray(classes), num_classes=num_classes)


def toy_mixture_2d(num_classes: int = 3, per_class: int = 2, radius: float = 2.0,
                   std: float = 0.25, seed: int = 0) -> GMM:
    """A reproducible 2-D test mixture: components on a circle, unequal weights, ``num_classes``
    classes of ``per_class`` components each (neighbouring components in different classes)."""
    k = num_classes * per_class
    angles = 2 * np.pi * np.arange(k) / k
    means = radius * np.stack([np.cos(angles), np.sin(angles)], -1)
    rng = np.random.default_rng(seed)
    weights = rng.uniform(0.5, 1.5, size=k)
    classes = np.arange(k) % num_classes
    return make_gmm(means, std, weights, classes, num_classes)


# ------------------------------------------------------------------------------------------------
# the oracle as a Denoiser
# ------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _OracleApply:
    """apply_fn(params=GMM, x, t, cond) -> E[x0 | x_t] for the x0 parameterization."""

    schedule: Schedule
    conditional: bool = True

    def __call__(self, gmm: GMM, x, t, cond):
        alpha, sigma = self.schedule.alpha_sigma(t)
        return gmm.posterior_mean(x, alpha, sigma, cond if self.conditional else None)


def oracle_denoiser(gmm: GMM, schedule: Schedule, conditional: bool = True) -> Denoiser:
    """The exact denoiser of ``gmm`` under ``schedule`` (x0 parameterization).

    With ``conditional=False`` the condition is ignored (the unconditional model); otherwise
    cond = None or the null index ``num_classes`` give the unconditional mixture.
    """
    return Denoiser(apply_fn=_OracleApply(schedule, conditional), params=gmm,
                    schedule_=schedule, param=P.Parameterization("x0"))


@dataclasses.dataclass(frozen=True)
class _ClassWeightsApply:
    """apply_fn(params=dict(gmm, logits), x, t, cond): the exact denoiser of ``gmm`` with the
    component log-weights log_softmax(logits[c]) of each example's class c."""

    schedule: Schedule

    def __call__(self, params, x, t, cond):
        gmm, logits = params["gmm"], params["logits"]
        alpha, sigma = self.schedule.alpha_sigma(batch_times(t, x))
        c = jnp.full(x.shape[:1], gmm.num_classes, jnp.int32) if cond is None else cond

        def one(xb, ab, sb, cb):
            mix = dataclasses.replace(gmm, log_weights=jax.nn.log_softmax(logits[cb]))
            return mix.posterior_mean(xb[None], ab, sb)[0]

        return jax.vmap(one)(x, alpha, sigma, jnp.asarray(c, jnp.int32))


def class_weights_denoiser(gmm: GMM, schedule: Schedule, logits: Array | None = None) -> Denoiser:
    """A trainable mixture model: D(x, t, c) is the exact denoiser of ``gmm``'s components
    with the weights softmax(logits[c]), one row of logits (C + 1, K) per class and row C for
    the null token.  ``logits=None`` starts every row at gmm's own log-weights (every class is
    the unconditional mixture).  The class-conditional mixtures lie in this family (logits
    log pi_k on the class's components, -inf elsewhere): the exact optimum of CTRL's alpha = 1
    fine-tuning of the unconditional mixture with its clean classifier.  Parameters:
    dict(gmm=gmm, logits=logits); differentiate with respect to ``logits``."""
    if logits is None:
        logits = jnp.tile(gmm.log_weights[None], (gmm.num_classes + 1, 1))
    return Denoiser(apply_fn=_ClassWeightsApply(schedule), params=dict(gmm=gmm, logits=logits),
                    schedule_=schedule, param=P.Parameterization("x0"))


@dataclasses.dataclass(frozen=True)
class OracleClassifier:
    """The exact noisy classifier ``f(gmm, x, t, y) -> (B,) log p(y | x_t)`` under ``schedule``.

    Differentiable in x; usable as ``log_prob_fn`` of ``ClassifierGuidance`` with params=gmm.
    """

    schedule: Schedule

    def __call__(self, gmm: GMM, x: Array, t: Array, y: Array) -> Array:
        t = batch_times(t, x)
        alpha, sigma = self.schedule.alpha_sigma(t)
        lp = gmm.class_log_posterior(x, alpha, sigma)
        return jnp.take_along_axis(lp, jnp.asarray(y, jnp.int32)[:, None], axis=1)[:, 0]


@dataclasses.dataclass(frozen=True)
class CleanClassifier:
    """The exact clean-data classifier ``f(gmm, x0) -> (B, C) log p(c | x0)`` (no noise: alpha = 1,
    sigma = 0), usable as ``logits_fn`` of the off-the-shelf classifier guidances (params=gmm)."""

    def __call__(self, gmm: GMM, x0: Array) -> Array:
        ones = jnp.ones(x0.shape[:1], jnp.float32)
        return gmm.class_log_posterior(x0, ones, 0.0 * ones)

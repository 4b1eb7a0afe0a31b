"""What the network predicts, and how its output becomes a clean-data estimate.

Notation: x = alpha x0 + sigma eps; snr = alpha^2 / sigma^2; sigma_ve = sigma / alpha.

Every parameterization is written as a preconditioning of the network F (Karras et al. 2022,
"EDM", Eq. 7 and Table 1), generalised to any (alpha, sigma) by running it on the scaled state
x / alpha whose noise level is sigma_ve:

    x0_hat = c_skip * (x / alpha) + c_out * F(c_in * (x / alpha), c_noise, cond)

  kind   c_in                      c_skip                       c_out                     F's target
  eps    alpha                     1                            -sigma_ve                 eps
  x0     alpha                     0                            1                         x0
  v      alpha/sqrt(a^2+s^2)       a^2/(a^2+s^2)                -s/sqrt(a^2+s^2)          alpha eps - sigma x0
  edm    1/sqrt(sve^2+sd^2)        sd^2/(sve^2+sd^2)            sve sd/sqrt(sve^2+sd^2)   (x0 - c_skip y)/c_out

(for eps / x0 / v, c_in * (x / alpha) = x: the network sees the unscaled state, as in DDPM;
v-prediction is Salimans & Ho 2022, Eq. 11-12 generalised to non-VP processes).  The noise input
``c_noise`` is the time t for eps / x0 / v, and log(sigma_ve) / 4 for EDM (EDM Table 1).

Loss weightings are expressed as weights on the x0-space error ||x0_hat - x0||^2, a function of
logsnr (Kingma et al. 2021/2023 "Understanding diffusion objectives"):

  native            1 / c_out^2: plain MSE on the network's own target (the "simple" loss)
  eps / snr         snr                       (Ho et al. 2020's L_simple for eps prediction)
  x0 / uniform      1
  v                 snr + 1                   (for VP: the v-MSE)
  min_snr           min(snr, gamma)           (Hang et al. 2023, Min-SNR-gamma, gamma = 5)
  truncated_snr     max(snr, 1)               (Salimans & Ho 2022, Sec. 4)
  edm               (sve^2 + sd^2)/(sve sd)^2 (EDM Eq. 8, lambda(sigma)); = 1/c_out^2 for edm
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

Array = jax.Array

KINDS = ("eps", "x0", "v", "edm")
WEIGHTINGS = ("native", "eps", "snr", "x0", "uniform", "v", "min_snr", "truncated_snr", "edm")


def _expand(c: Array, like: Array) -> Array:
    """Broadcasts a per-example coefficient of shape (B,) or () against x of shape (B, ...)."""
    c = jnp.asarray(c, like.dtype if jnp.issubdtype(like.dtype, jnp.floating) else jnp.float32)
    return c.reshape(c.shape + (1,) * (like.ndim - c.ndim))


@dataclasses.dataclass(frozen=True)
class Parameterization:
    """A network-output parameterization. Hashable; static under jit.

    Args:
      kind: one of 'eps', 'x0', 'v', 'edm'.
      sigma_data: the data standard deviation used by 'edm' (EDM uses 0.5 for images in [-1, 1]).
    """

    kind: str = "eps"
    sigma_data: float = 0.5

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown parameterization {self.kind!r}; choose one of {KINDS}")
        if not self.sigma_data > 0:
            raise ValueError(f"sigma_data must be > 0, got {self.sigma_data}")

    def coefficients(self, alpha: Array, sigma: Array) -> tuple[Array, Array, Array]:
        """(c_in, c_skip, c_out) acting on the scaled state y = x / alpha; shapes as alpha."""
        alpha = jnp.asarray(alpha, jnp.float32)
        sigma = jnp.asarray(sigma, jnp.float32)
        sve = sigma / alpha
        one = jnp.ones_like(sve)
        if self.kind == "eps":
            return alpha * one, one, -sve
        if self.kind == "x0":
            return alpha * one, 0.0 * one, one
        if self.kind == "v":
            norm = jnp.sqrt(alpha**2 + sigma**2)
            return alpha / norm, alpha**2 / norm**2, -sigma / norm
        sd = self.sigma_data
        denom = jnp.sqrt(sve**2 + sd**2)
        return 1.0 / denom, sd**2 / denom**2, sve * sd / denom

    def noise_input(self, t: Array, alpha: Array, sigma: Array) -> Array:
        """c_noise: the scalar noise conditioning fed to the network, shape as t."""
        if self.kind == "edm":
            return 0.25 * jnp.log(jnp.asarray(sigma, jnp.float32) / alpha)
        return jnp.asarray(t, jnp.float32) * jnp.ones_like(jnp.asarray(alpha, jnp.float32))

    def network_input(self, x: Array, alpha: Array, sigma: Array) -> Array:
        """c_in * x / alpha, broadcast over x of shape (B, ...)."""
        c_in, _, _ = self.coefficients(alpha, sigma)
        return x * _expand(c_in / alpha, x)

    def to_x0(self, output: Array, x: Array, alpha: Array, sigma: Array) -> Array:
        """x0_hat = c_skip (x / alpha) + c_out F.  output, x: (B, ...); alpha, sigma: (B,)."""
        _, c_skip, c_out = self.coefficients(alpha, sigma)
        return _expand(c_skip / alpha, x) * x + _expand(c_out, x) * output

    def target(self, x0: Array, eps: Array, alpha: Array, sigma: Array) -> Array:
        """The value of F for which x0_hat == x0 exactly (the regression target)."""
        _, c_skip, c_out = self.coefficients(alpha, sigma)
        y = x0 + _expand(sigma / alpha, x0) * eps
        return (x0 - _expand(c_skip, x0) * y) / _expand(c_out, x0)


# ------------------------------------------------------------------------------------------------
# conversions between predictions (any x = alpha x0 + sigma eps)
# ------------------------------------------------------------------------------------------------

def eps_from_x0(x: Array, x0: Array, alpha: Array, sigma: Array) -> Array:
    """eps = (x - alpha x0) / sigma."""
    return (x - _expand(alpha, x) * x0) / _expand(sigma, x)


def x0_from_eps(x: Array, eps: Array, alpha: Array, sigma: Array) -> Array:
    """x0 = (x - sigma eps) / alpha."""
    return (x - _expand(sigma, x) * eps) / _expand(alpha, x)


def v_from_x0_eps(x0: Array, eps: Array, alpha: Array, sigma: Array) -> Array:
    """v = alpha eps - sigma x0 (Salimans & Ho 2022)."""
    return _expand(alpha, x0) * eps - _expand(sigma, x0) * x0


def x0_from_v(x: Array, v: Array, alpha: Array, sigma: Array) -> Array:
    """x0 = (alpha x - sigma v) / (alpha^2 + sigma^2)."""
    a, s = _expand(alpha, x), _expand(sigma, x)
    return (a * x - s * v) / (a**2 + s**2)


def score_from_x0(x: Array, x0: Array, alpha: Array, sigma: Array) -> Array:
    """grad_x log p_t(x) = -(x - alpha x0) / sigma^2 (Tweedie)."""
    return -(x - _expand(alpha, x) * x0) / _expand(sigma, x) ** 2


def x0_from_score(x: Array, score: Array, alpha: Array, sigma: Array) -> Array:
    """x0 = (x + sigma^2 score) / alpha."""
    return (x + _expand(sigma, x) ** 2 * score) / _expand(alpha, x)


# ------------------------------------------------------------------------------------------------
# loss weightings
# ------------------------------------------------------------------------------------------------

def loss_weight(weighting: str, logsnr: Array, param: Parameterization, *,
                gamma: float = 5.0) -> Array:
    """Weight w(logsnr) multiplying the x0-space squared error; shape as logsnr."""
    snr = jnp.exp(logsnr)
    if weighting == "native":
        alpha = jnp.sqrt(jax.nn.sigmoid(logsnr))
        sigma = jnp.sqrt(jax.nn.sigmoid(-logsnr))
        _, _, c_out = param.coefficients(alpha, sigma)
        return 1.0 / c_out**2
    if weighting in ("eps", "snr"):
        return snr
    if weighting in ("x0", "uniform"):
        return jnp.ones_like(snr)
    if weighting == "v":
        return snr + 1.0
    if weighting == "min_snr":
        return jnp.minimum(snr, gamma)
    if weighting == "truncated_snr":
        return jnp.maximum(snr, 1.0)
    if weighting == "edm":
        sve2 = jnp.exp(-logsnr)
        sd2 = param.sigma_data**2
        return (sve2 + sd2) / (sve2 * sd2)
    raise ValueError(f"unknown loss weighting {weighting!r}; choose one of {WEIGHTINGS}")

"""EVODiff: Entropy-aware Variance Optimized Diffusion Inference (Li et al., NeurIPS 2025).

A data-prediction multistep solver whose extrapolation coefficients are chosen per sample and
per channel by variance-optimising projections of the current and previous data predictions,
written here after the official code's update (ShiguiLi/EVODiff, ``code_demo/edm_cifar10/
samplers/evodiff.py``, order 2), in jaxdiff's scaled coordinates: y = x / alpha and the noise
level s = sigma_ve (the official code's kappa = sigma / alpha).  The official code is written
for a general schedule and keeps two noise levels apart: kappa for the step sizes and the ratio
r, the marginal std sigma (of x) for the ratios inside the balance, the last step and the
consistency weight.  On its EDM demo (alpha = 1) the two are equal; on a VP schedule they are
not, and taking kappa ratios there (as an earlier version of this file did) makes the balance
explode on grids that start at a large kappa (the VP cosine uniform-t grid: kappa 1808 -> 6 in
one step).  Below, q = sigma_{j+1} / sigma_j is that std ratio (rho on EDM grids).

Step j -> j + 1 with s = s_j, t = s_{j+1}, rho = t / s, a = 1 - rho, data predictions m0 (at
point j), m1 (at j - 1), and <u, v> a sum over every axis but the batch and the last (channel)
one, so every coefficient below is per sample and channel (shape (B, 1, ..., 1, C)); for (B, d)
data per sample.  proj(u, v) = clip(<u, v> / <v, v>, -2, 2) (0 where <v, v> = 0).

  first step (no previous prediction): DDIM, y' = rho y + a m0.
  middle steps:
      y_E = rho y + a m0
      r = log(s_{j-1} / s) / log(s / t)                   (DPM-Solver's step ratio h_0 / h)
      w = (1 - tau^2) / 2, tau = (sigma_{j+1} + sigma_lo) / (sigma_hi + sigma_lo);
      b = sqrt(q / q_1), q_1 = sigma_j / sigma_{j-1}
      beta1 = (1 - w) b + w proj(m0, m1),  D1 = m0 - beta1 m1
      r_i = clip(sigmoid(|beta1| / 4) r, r / 4, 3 r / 2)
      probe y_p = y_E + a D1 / (2 r_i);  the step's one evaluation m_t = D(y_p) at t (kept as the
      prediction at point j + 1, as UniPC keeps its predictor's)
      beta2 = (1 - w) b + w proj(m_t, m0),  D2 = m_t - beta2 m0
      with h = 1/t - 1/s: Bp = D1 / (r h), Bn = r D2 / h,
      eta = sigmoid(|proj(Bn + Bp, Bn - Bp)| / 2) / 2
      B = -(eta / r) D1 + r (1 - eta) D2
      zeta* = proj(y_p - y_E - a B / (2 r_i), D1) / a
      zeta = sigmoid(|zeta*| - 1/2) for solves of <= 21 steps (the official code's 20 steps
      and its final denoising); otherwise, with
      c = sigmoid(proj(m0, (m0 - m1) / h) (2 - q^2)), zeta = sigmoid(-(|zeta*| - 1/2) c)
      y' = y_E + a B / (2 zeta)
  the step onto the solve's last noisy point, with ``lower_order_final`` (default, as the
  official code; False takes a middle step there):
      y' = g (rho y + a m0) + (a / 2)(m0 - r_f m1), g = 1 - sqrt(sigma_j sigma_{j+1}),
      r_f = 1 - sqrt(q) / 2 if q < 1/2 else 1 - sqrt(q - 1/2) / 2; then D(y') is evaluated
      at that point, and the final step to zero noise returns it (the official
      ``denoise_to_zero``).

tau is the official code's normalised time label, which on its EDM grids is sigma; jaxdiff uses
the std on every schedule, and (sigma_lo, sigma_hi) are the schedule's stds at t_min and t_max
(the official code uses its grid's ends, those of the EDM grids it runs; fixed levels keep a
split solve equal to the joined one).  ``tests/test_sampler_official_rules.py`` checks this
file against a float64 x-space transliteration of the official loop on a VP schedule.

1 NFE per step: D(y_0) at the start, one evaluation in every step but the final one.  The
official code divides by <v, v> unguarded; here a zero <v, v> gives a zero projection.
``adaptive=False`` fixes beta1 = 1, r_i = r and y' = y_p: with ``lower_order_final=False`` that
is DPM-Solver++(2M), the solver whose coefficients EVODiff adapts (equal to float32 rounding;
tests/test_samplers.py).

The official last step's weights on y and the predictions do not sum to one (g a + a/2 - a r_f
/ 2 != a), so on the 2-D mixture with its exact denoiser the official form's error stops
falling near 0.03 (the final denoising does not remove it); ``lower_order_final=False``
converges (docs/samplers.md).

Partial solves carry the predictions at the last two points, the noise level of the one before
the last, and how many points have a prediction; the rule for the last noisy step counts steps
in the whole solve (``total_steps``), assuming a split solve ends at zero noise.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdiff.samplers.base import SamplerContext, lookahead_segment_nfe, register

Array = jax.Array
SHORT_SOLVE = 20   # solves of at most this many steps + 1 use the short-solve zeta rule


def _dot(u: Array, v: Array) -> Array:
    """<u, v> over every axis but the batch and the channel (last) axis, kept for broadcasting;
    over the feature axis for (B, d) arrays."""
    axes = tuple(range(1, u.ndim - 1)) if u.ndim >= 3 else tuple(range(1, u.ndim))
    return jnp.sum(u * v, axis=axes, keepdims=True)


def _proj(u: Array, v: Array) -> Array:
    """clip(<u, v> / <v, v>, -2, 2), 0 where <v, v> = 0."""
    vv = _dot(v, v)
    ratio = _dot(u, v) / jnp.where(vv > 0, vv, 1.0)
    return jnp.clip(jnp.where(vv > 0, ratio, 0.0), -2.0, 2.0)


def _middle(y_e, m0, m1, d1, m_t, s, t, q, a, r_i, r, w, b, short):
    """The middle step's output y' from the probe's balanced difference d1 = m0 - beta1 m1 and
    its evaluation m_t (module docstring)."""
    h = 1.0 / t - 1.0 / s
    beta2 = (1.0 - w) * b + w * _proj(m_t, m0)
    d2 = m_t - beta2 * m0
    bp, bn = d1 / (r * h), r * d2 / h
    eta = 0.5 * jax.nn.sigmoid(jnp.abs(0.5 * _proj(bn + bp, bn - bp)))
    big_b = -(eta / r) * d1 + r * (1.0 - eta) * d2
    y_p = y_e + 0.5 * a * d1 / r_i
    zeta_star = _proj(y_p - y_e - 0.5 * a * big_b / r_i, d1) / a
    c = jax.nn.sigmoid(_proj(m0, (m0 - m1) / h) * (2.0 - q**2))
    zeta = jnp.where(short, jax.nn.sigmoid(jnp.abs(zeta_star) - 0.5),
                     jax.nn.sigmoid(-(jnp.abs(zeta_star) - 0.5) * c))
    return y_e + 0.5 * a * big_b / zeta


def check(options: dict) -> None:
    """adaptive and lower_order_final bools (static: they fix the program)."""
    for name in ("adaptive", "lower_order_final"):
        if not isinstance(options[name], bool):
            raise ValueError(f"evodiff: {name} must be True or False, got {options[name]!r}")


def solve(ctx: SamplerContext, y: Array) -> tuple[Array, dict | None]:
    """EVODiff over ctx.grid.  y: (B, ...) scaled state at grid point 0.

    Returns (y at the last grid point, history {d: (D at the last point, D at the point
    before), s_prev: () noise level of the point before the last, known: int32 number of points
    before the last with a prediction}), or None for a clean end.
    """
    adaptive, lower_final = ctx.options["adaptive"], ctx.options["lower_order_final"]
    sig = ctx.grid.sigma_ve
    std = ctx.grid.alpha * sig          # the x-space marginal std (sigma_ve on EDM grids)
    n = ctx.grid.steps
    sched = ctx.schedule
    std_hi = sched.sigma(jnp.float32(sched.t_max))
    std_lo = sched.sigma(jnp.float32(sched.t_min))
    total = jnp.asarray(ctx.steps_in_solve, jnp.int32)
    offset = jnp.asarray(ctx.step_offset, jnp.int32)
    short = total - 1 <= SHORT_SOLVE   # the official code counts steps - 1 (then denoises)
    # global index of the step landing on the solve's last noisy point
    ends_here_noisy = (not ctx.grid.clean_end) & (offset + n == total)
    last_noisy = jnp.where(ends_here_noisy, total - 1, total - 2)
    if ctx.history is None:
        m0 = ctx.denoise_at(y, 0)
        carry0 = (y, m0, jnp.zeros_like(y), sig[0], std[0])
        known = 0
    else:
        (m0, m1), known = ctx.history["d"], ctx.history["known"]
        carry0 = (y, m0, m1, ctx.history["s_prev"], ctx.history["std_prev"])

    def step(carry, j):
        y, m0, m1, s_prev, std_prev = carry
        s, t = sig[j], sig[j + 1]
        rho = t / s
        a = 1.0 - rho
        y_e = rho * y + a * m0
        first = (known + j) == 0
        # previous step's size h_0 and ratio r = h_0 / h (1 where there is no previous point)
        s_back = jnp.where(first, s * s / t, s_prev)
        r = jnp.log(s_back / s) / jnp.log(s / t)
        # the x-space std ratios of this step and the previous one (the official sigma ratios)
        q = std[j + 1] / std[j]
        q_back = std[j] / jnp.where(first, std[j] * std[j] / std[j + 1], std_prev)
        if adaptive:
            tau = (std[j + 1] + std_lo) / (std_hi + std_lo)
            w = 0.5 * (1.0 - tau**2)
            b = jnp.sqrt(q / q_back)
            beta1 = (1.0 - w) * b + w * _proj(m0, m1)
            r_i = jnp.clip(jax.nn.sigmoid(0.25 * jnp.abs(beta1)) * r, 0.25 * r, 1.5 * r)
        else:
            beta1, r_i = 1.0, r
        d1 = m0 - beta1 * m1
        y_p = y_e + 0.5 * a * d1 / r_i
        if lower_final:
            last = ((offset + j) == last_noisy) & ~first
            r_f = jnp.where(q < 0.5, 1.0 - 0.5 * jnp.sqrt(q),
                            1.0 - 0.5 * jnp.sqrt(jnp.maximum(q - 0.5, 0.0)))
            y_last = (1.0 - jnp.sqrt(std[j] * std[j + 1])) * y_e + 0.5 * a * (m0 - r_f * m1)
            y_pre = jnp.where(first, y_e, jnp.where(last, y_last, y_p))
        else:
            last = jnp.zeros((), bool)
            y_pre = jnp.where(first, y_e, y_p)
        m_next = ctx.denoise_at(y_pre, j + 1)
        if adaptive:
            y_mid = _middle(y_e, m0, m1, d1, m_next, s, t, q, a, r_i, r, w, b, short)
            y_new = jnp.where(first | last, y_pre, y_mid)
        else:
            y_new = y_pre
        return (y_new, m_next, m0, s, std[j]), None

    if ctx.grid.clean_end:
        (_, m_last, *_), _ = ctx.scan(step, carry0, jnp.arange(n - 1))
        return m_last, None   # the final step to sigma = 0 lands on D(y_{N-1})
    (y, m0, m1, s_prev, std_prev), _ = ctx.scan(step, carry0, jnp.arange(n))
    return y, {"d": (m0, m1), "s_prev": s_prev, "std_prev": std_prev,
               "known": jnp.asarray(known + n, jnp.int32)}


@register("evodiff", nfe=lambda n: n, check=check, solve=solve,
          segment_nfe=lookahead_segment_nfe, adaptive=True, lower_order_final=True)
def run(ctx: SamplerContext, y: Array) -> Array:
    """EVODiff.  Options adaptive, lower_order_final (bools).  y: (B, ...) scaled state at
    grid point 0 -> (B, ...) state at the last grid point."""
    return solve(ctx, y)[0]

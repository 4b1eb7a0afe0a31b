"""EDM's deterministic and stochastic Heun samplers (Karras et al. 2022, "EDM", Algorithms 1-2).

In scaled coordinates (y = x / alpha, sigma = sigma_ve; EDM Eq. 4 with s(t) = alpha(t)) the
probability-flow ODE is dy/dsigma = d(y, sigma) = (y - D(y, sigma)) / sigma.

``heun`` (Algorithm 1): an Euler step to sigma_{i+1} and the trapezoidal correction
    y_{i+1} = y_i + (sigma_{i+1} - sigma_i) (d(y_i, sigma_i) + d(y'_{i+1}, sigma_{i+1})) / 2,
except on a clean end's last step to sigma = 0, which is a plain Euler step and lands on
D(y_{N-1}).  NFE = 2N - 1; a grid with a noisy end takes N full Heun steps, NFE = 2N.

``heun_sde`` (Algorithm 2): before step i, "churn" noise raises the level to
    sigma_hat = (1 + gamma_i) sigma_i,  gamma_i = min(s_churn / N, sqrt(2) - 1)
    if s_tmin <= sigma_i <= s_tmax else 0,
    y_hat = y_i + sqrt(sigma_hat^2 - sigma_i^2) * s_noise * z_i,
then takes the Heun step from (y_hat, sigma_hat).  sigma_hat is off the grid, so the denoiser is
evaluated there through the schedule's inverse (``SamplerContext.denoise_at_sigma``).  EDM leaves
sigma_hat unbounded; here it is capped at the solve's largest noise level, max(sigma_ve(t_max),
sigma_0) (a VP schedule cannot represent more noise than that).  N is the number of steps of
the whole solve (``ctx.steps_in_solve``: a segment of a split solve uses the total, and its
carry keeps the cap), so the segments of ``Grid.split`` reproduce the joined solve.

The options are traced, so changing them does not recompile.  Each step picks, with a
``lax.cond`` on its traced gamma_i, either the churned step or, for gamma_i = 0, Algorithm 1's
step itself (the very code of ``heun``), so s_churn = 0, or a window [s_tmin, s_tmax] holding no
grid level, runs heun's arithmetic and draws no step noise (tests/test_samplers.py asserts bit
equality with heun, compiled and op by op).  (A branch-free form that
selects y_hat = y, sigma_hat = sigma_i with ``jnp.where`` feeds the same values to the same
arithmetic, but it is a different program, and XLA rounds it differently: measured up to 7e-7 on
the toy mixture after 9 steps, which Heun's correction amplifies on shorter grids.)  NFE as for
heun.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxdiff.samplers.base import SamplerContext, concrete_number, register

Array = jax.Array


def _heun_step(ctx: SamplerContext, y: Array, s: Array, d: Array, i: Array) -> Array:
    """From state y at level s with slope d, to grid point i + 1 (EDM Alg. 1 lines 5-8)."""
    s_next = ctx.grid.sigma_ve[i + 1]
    y_euler = y + (s_next - s) * d
    d_next = (y_euler - ctx.denoise_at(y_euler, i + 1)) / s_next
    return y + (s_next - s) * (0.5 * d + 0.5 * d_next)


def _heun_nfe(n: int, clean_end: bool, resumed: bool) -> int:
    return 2 * n - 1 if clean_end else 2 * n


def _plain_step(ctx: SamplerContext, y: Array, i: Array) -> Array:
    """EDM Alg. 1 lines 4-8: the Heun step from grid point i to i + 1."""
    s = ctx.grid.sigma_ve[i]
    return _heun_step(ctx, y, s, (y - ctx.denoise_at(y, i)) / s, i)


@register("heun", nfe=lambda n: 2 * n - 1, segment_nfe=_heun_nfe)
def run(ctx: SamplerContext, y: Array) -> Array:
    """EDM Algorithm 1.  y: (B, ...) scaled state at grid point 0 -> (B, ...) state at the last
    grid point (the sample for a clean end)."""
    n = ctx.grid.steps

    def step(y, i):
        return _plain_step(ctx, y, i), None

    if not ctx.grid.clean_end:
        return ctx.scan(step, y, jnp.arange(n))[0]
    y, _ = ctx.scan(step, y, jnp.arange(n - 1))
    # last step: Euler to sigma = 0, y + (0 - s)(y - D)/s = D
    return ctx.denoise_at(y, n - 1)


def _gamma(ctx: SamplerContext, i: Array) -> Array:
    """EDM Alg. 2 line 3: gamma_i = min(S_churn / N, sqrt(2) - 1) inside [S_tmin, S_tmax]."""
    opts = ctx.options
    s = ctx.grid.sigma_ve[i]
    in_range = (s >= opts["s_tmin"]) & (s <= opts["s_tmax"])
    n_total = jnp.asarray(ctx.steps_in_solve, jnp.float32)
    return jnp.where(in_range, jnp.minimum(opts["s_churn"] / n_total, math.sqrt(2.0) - 1.0), 0.0)


def _churn(ctx: SamplerContext, y: Array, i: Array, s_cap: Array) -> tuple[Array, Array, Array]:
    """EDM Alg. 2 lines 4-7: (y_hat, sigma_hat, D(y_hat, sigma_hat)) before step i."""
    s = ctx.grid.sigma_ve[i]
    gamma = _gamma(ctx, i)
    churned = gamma > 0
    # unchurned steps stay exactly on the grid (level, state and time)
    s_hat = jnp.where(churned, jnp.minimum(s * (1.0 + gamma), jnp.maximum(s_cap, s)), s)
    kick = jnp.sqrt(jnp.maximum(s_hat**2 - s**2, 0.0)) * ctx.options["s_noise"] * ctx.noise(i)
    y_hat = jnp.where(churned, y + kick, y)
    t_hat = jnp.where(churned, ctx.schedule.t_from_sigma_ve(s_hat), ctx.grid.t[i])
    alpha_hat = jnp.where(churned, ctx.schedule.alpha(t_hat), ctx.grid.alpha[i])
    return y_hat, s_hat, ctx.denoise(y_hat, t_hat, alpha_hat)


def check_sde(options: dict) -> None:
    """s_churn >= 0, 0 <= s_tmin <= s_tmax, s_noise >= 0 (those that are concrete numbers)."""
    c, lo, hi, sn = (concrete_number(options[k]) for k in ("s_churn", "s_tmin", "s_tmax",
                                                           "s_noise"))
    if c is not None and not (c >= 0 and math.isfinite(c)):
        raise ValueError(f"heun_sde: s_churn must be a finite number >= 0, got {c}")
    if lo is not None and not lo >= 0:
        raise ValueError(f"heun_sde: s_tmin must be >= 0 (a noise level sigma_ve), got {lo}")
    if lo is not None and hi is not None and not lo <= hi:
        raise ValueError(f"heun_sde: need s_tmin <= s_tmax, got {lo}, {hi}")
    if sn is not None and not (sn >= 0 and math.isfinite(sn)):
        raise ValueError(f"heun_sde: s_noise must be a finite number >= 0, got {sn}")


def solve_sde(ctx: SamplerContext, y: Array) -> tuple[Array, dict]:
    """EDM Algorithm 2 over ctx.grid.  y: (B, ...) scaled state at grid point 0.

    A step whose gamma_i is 0 runs Algorithm 1's step (``lax.cond`` on the traced gamma_i).
    Returns (y at the last grid point, history {s_cap: the solve's noise cap}).
    """
    n = ctx.grid.steps
    if ctx.history is None:
        s_cap = jnp.maximum(ctx.schedule.sigma_ve(jnp.float32(ctx.schedule.t_max)),
                            ctx.grid.sigma_ve[0])
    else:
        s_cap = ctx.history["s_cap"]

    def churned_step(y, i):
        y_hat, s_hat, d0 = _churn(ctx, y, i, s_cap)
        return _heun_step(ctx, y_hat, s_hat, (y_hat - d0) / s_hat, i)

    def step(y, i):
        return ctx.cond(_gamma(ctx, i) > 0, churned_step,
                        lambda y, i: _plain_step(ctx, y, i), y, i), None

    if not ctx.grid.clean_end:
        y, _ = ctx.scan(step, y, jnp.arange(n))
    else:
        y, _ = ctx.scan(step, y, jnp.arange(n - 1))
        # last step: churn, then Euler from sigma_hat to 0, which lands on D(y_hat, sigma_hat)
        last = jnp.asarray(n - 1)
        y = ctx.cond(_gamma(ctx, last) > 0, lambda y: _churn(ctx, y, last, s_cap)[2],
                     lambda y: ctx.denoise_at(y, last), y)
    return y, {"s_cap": s_cap}


@register("heun_sde", nfe=lambda n: 2 * n - 1, stochastic=True, check=check_sde,
          solve=solve_sde, segment_nfe=_heun_nfe,
          s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0)
def run_sde(ctx: SamplerContext, y: Array) -> Array:
    """EDM Algorithm 2.  Options (traced): s_churn >= 0, s_tmin <= s_tmax (sigma_ve units),
    s_noise.  y: (B, ...) scaled state at grid point 0 -> (B, ...) state at the last point."""
    return solve_sde(ctx, y)[0]

"""EDM's deterministic and stochastic Heun samplers (Karras et al. 2022, "EDM", Algorithms 1-2).

In scaled coordinates (y = x / alpha, sigma = sigma_ve; EDM Eq. 4 with s(t) = alpha(t)) the
probability-flow ODE is dy/dsigma = d(y, sigma) = (y - D(y, sigma)) / sigma.

``heun`` (Algorithm 1): an Euler step to sigma_{i+1} and the trapezoidal correction
    y_{i+1} = y_i + (sigma_{i+1} - sigma_i) (d(y_i, sigma_i) + d(y'_{i+1}, sigma_{i+1})) / 2,
except on the last step to sigma = 0, which is a plain Euler step and lands on D(y_{N-1}).
NFE = 2N - 1.

``heun_sde`` (Algorithm 2): before step i, "churn" noise raises the level to
    sigma_hat = (1 + gamma_i) sigma_i,  gamma_i = min(s_churn / N, sqrt(2) - 1)
    if s_tmin <= sigma_i <= s_tmax else 0,
    y_hat = y_i + sqrt(sigma_hat^2 - sigma_i^2) * s_noise * z_i,
then takes the Heun step from (y_hat, sigma_hat).  sigma_hat is off the grid, so the denoiser is
evaluated there through the schedule's inverse (``SamplerContext.denoise_at_sigma``).  EDM leaves
sigma_hat unbounded; here it is capped at the schedule's largest noise level sigma_ve(t_max)
(a VP schedule cannot represent more noise than that).  A step with gamma_i = 0 stays on the
grid and is Algorithm 1's step; s_churn = 0 runs ``heun`` itself, so it is bit-identical to it.
NFE = 2N - 1.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxdiff.samplers.base import SamplerContext, register

Array = jax.Array


def _heun_step(ctx: SamplerContext, y: Array, s: Array, d: Array, i: Array) -> Array:
    """From state y at level s with slope d, to grid point i + 1 (EDM Alg. 1 lines 5-8)."""
    s_next = ctx.grid.sigma_ve[i + 1]
    y_euler = y + (s_next - s) * d
    d_next = (y_euler - ctx.denoise_at(y_euler, i + 1)) / s_next
    return y + (s_next - s) * (0.5 * d + 0.5 * d_next)


@register("heun", nfe=lambda n: 2 * n - 1)
def run(ctx: SamplerContext, y: Array) -> Array:
    """EDM Algorithm 1.  y: (B, ...) scaled state at grid point 0 -> (B, ...) sample."""
    sig = ctx.grid.sigma_ve
    n = ctx.grid.steps

    def step(y, i):
        d = (y - ctx.denoise_at(y, i)) / sig[i]
        return _heun_step(ctx, y, sig[i], d, i), None

    y, _ = jax.lax.scan(step, y, jnp.arange(n - 1))
    # last step: Euler to sigma = 0, y + (0 - s)(y - D)/s = D
    return ctx.denoise_at(y, n - 1)


def _churn(ctx: SamplerContext, y: Array, i: Array) -> tuple[Array, Array, Array]:
    """EDM Alg. 2 lines 4-7: (y_hat, sigma_hat, D(y_hat, sigma_hat)) before step i."""
    opts = ctx.options
    s = ctx.grid.sigma_ve[i]
    s_cap = jnp.maximum(ctx.schedule.sigma_ve(jnp.float32(ctx.schedule.t_max)),
                        ctx.grid.sigma_ve[0])
    in_range = (s >= opts["s_tmin"]) & (s <= opts["s_tmax"])
    gamma = jnp.where(in_range, min(opts["s_churn"] / ctx.grid.steps, math.sqrt(2.0) - 1.0), 0.0)
    churned = gamma > 0
    # unchurned steps stay exactly on the grid (level and time), so s_churn = 0 is exactly heun
    s_hat = jnp.where(churned, jnp.minimum(s * (1.0 + gamma), jnp.maximum(s_cap, s)), s)
    y_hat = y + jnp.sqrt(jnp.maximum(s_hat**2 - s**2, 0.0)) * opts["s_noise"] * ctx.noise(i)
    t_hat = jnp.where(churned, ctx.schedule.t_from_sigma_ve(s_hat), ctx.grid.t[i])
    alpha_hat = jnp.where(churned, ctx.schedule.alpha(t_hat), ctx.grid.alpha[i])
    return y_hat, s_hat, ctx.denoise(y_hat, t_hat, alpha_hat)


@register("heun_sde", nfe=lambda n: 2 * n - 1, stochastic=True,
          s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0)
def run_sde(ctx: SamplerContext, y: Array) -> Array:
    """EDM Algorithm 2.  Options: s_churn >= 0, s_tmin <= s_tmax (sigma_ve units), s_noise."""
    opts = ctx.options
    if not opts["s_churn"] >= 0:
        raise ValueError(f"heun_sde: s_churn must be >= 0, got {opts['s_churn']}")
    if not opts["s_tmin"] <= opts["s_tmax"]:
        raise ValueError(f"heun_sde: need s_tmin <= s_tmax, got {opts['s_tmin']}, "
                         f"{opts['s_tmax']}")
    if opts["s_churn"] == 0:
        return run(ctx, y)   # Algorithm 2 without churn is Algorithm 1: run the same program
    n = ctx.grid.steps

    def step(y, i):
        y_hat, s_hat, d0 = _churn(ctx, y, i)
        return _heun_step(ctx, y_hat, s_hat, (y_hat - d0) / s_hat, i), None

    y, _ = jax.lax.scan(step, y, jnp.arange(n - 1))
    # last step: churn, then Euler from sigma_hat to 0, which lands on D(y_hat, sigma_hat)
    return _churn(ctx, y, jnp.asarray(n - 1))[2]

"""DDIM (Song et al. 2021, Eq. 12) with stochasticity eta, and DDPM ancestral sampling.

In scaled coordinates (y = x / alpha, s = sigma_ve) one step from s to s' reads

    y' = D + sqrt(s'^2 - c^2) (y - D) / s + c z,
    c  = eta * s' sqrt(1 - s'^2 / s^2)                     (DDIM's sigma_t(eta) / alpha_{t'})

eta = 0 is deterministic DDIM (= Euler on the probability-flow ODE in s); eta = 1 samples the
exact DDPM posterior q(x_{t'} | x_t, x0 = D) (Ho et al. 2020, Eq. 7), which on the full discrete
VP-linear grid is DDPM's ancestral sampler.  With a clean end the last step (s' = 0) returns D
(c = 0 there); a noisy end (s' > 0) is an ordinary step.  eta is a traced option, checked to lie
in [0, 1] when concrete (above 1 the deterministic part's coefficient would be imaginary).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdiff.samplers.base import SamplerContext, concrete_number, register


def check(options: dict) -> None:
    """eta in [0, 1] (when it is a concrete number)."""
    eta = concrete_number(options["eta"])
    if eta is not None and not 0.0 <= eta <= 1.0:
        raise ValueError(f"ddim/ddpm: eta must be in [0, 1], got {eta}")


def ddim_step(y: jax.Array, d: jax.Array, s, s_next, eta, z: jax.Array) -> jax.Array:
    """One DDIM step (module docstring) of the scaled state y (B, ...) from noise level s to
    s_next, given the denoiser's prediction d at (y, s) and the step's noise z (B, ...)."""
    c = eta * s_next * jnp.sqrt(jnp.clip(1.0 - (s_next / s) ** 2, 0.0, 1.0))
    y_next = d + jnp.sqrt(jnp.maximum(s_next**2 - c**2, 0.0)) * (y - d) / s
    return y_next + c * z


def ddim_run(ctx: SamplerContext, y: jax.Array) -> jax.Array:
    """DDIM.  Option eta.  y: (B, ...) scaled state at grid point 0 -> (B, ...) state at the last
    grid point; step i's noise is ctx.noise(i)."""
    eta = jnp.asarray(ctx.options["eta"], jnp.float32)
    sig = ctx.grid.sigma_ve

    def step(y, i):
        d = ctx.denoise_at(y, i)
        return ddim_step(y, d, sig[i], sig[i + 1], eta, ctx.noise(i)), None

    y, _ = ctx.scan(step, y, jnp.arange(ctx.grid.steps))
    return y


register("ddim", nfe=lambda n: n, stochastic=True, check=check, eta=0.0)(ddim_run)
register("ddpm", nfe=lambda n: n, stochastic=True, check=check, eta=1.0)(ddim_run)

"""Euler's method on the probability-flow ODE in sigma_ve (Karras et al. 2022, "EDM", Eq. 4 and
Sec. 3, with s(t) = alpha(t)):

    dy/dsigma = (y - D(y, sigma)) / sigma,      y_{i+1} = y_i + (sigma_{i+1} - sigma_i) d_i.

Algebraically this is deterministic DDIM (Song et al. 2021, Eq. 12 with eta = 0):
y + (s' - s)(y - D)/s = D + (s'/s)(y - D).  With a clean end the final step to sigma = 0 lands on
D(y) (up to rounding); a noisy end is one more ordinary step.  No state is carried between
steps, so a split solve needs no carry.  1 NFE per step.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdiff.samplers.base import SamplerContext, register


@register("euler", nfe=lambda n: n)
def run(ctx: SamplerContext, y: jax.Array) -> jax.Array:
    """y: (B, ...) scaled state at grid point 0 -> (B, ...) state at the last grid point."""
    sig = ctx.grid.sigma_ve

    def step(y, i):
        d = (y - ctx.denoise_at(y, i)) / sig[i]
        return y + (sig[i + 1] - sig[i]) * d, None

    y, _ = ctx.scan(step, y, jnp.arange(ctx.grid.steps))
    return y

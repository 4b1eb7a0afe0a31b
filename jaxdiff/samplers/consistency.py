"""Multistep consistency sampling (Song et al., "Consistency Models", ICML 2023, Algorithm 1).

The denoiser is a consistency function f (``jaxdiff.distill.consistency``: with
``guidance.name = 'consistency'`` the sampling job wraps the model in it): one evaluation maps
any point of a trajectory to its clean end.  On the grid sigma_0 > sigma_1 > ... (scaled
coordinates, ``samplers.base``):

    x0_i   = f(y_i, sigma_i)
    y_i+1  = x0_i + sqrt(sigma_i+1^2 - sigma_min^2) z_i,      z_i ~ N(0, I)

and the clean end takes x0 itself.  sigma_min is the schedule's noise level at ``t_min``, the
consistency function's boundary (Algorithm 1 re-noises to sqrt(tau^2 - eps^2)).  One step is
one-step generation; every further point trades one more evaluation for a sample closer to the
data.  The grid to use is ``uniform_t_to_zero``: Karras's spacing jumps from its last noisy
point to zero, while ``karras`` and ``uniform_t`` end at t_min, where f is the identity, so
their last evaluation would be wasted (2 steps on them equal 1).  Partial solves end with the
re-noised state at the grid's last point.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdiff.samplers.base import SamplerContext, register


def consistency_run(ctx: SamplerContext, y: jax.Array) -> jax.Array:
    """y: (B, ...) scaled state at grid point 0 -> (B, ...) at the last grid point."""
    sig = ctx.grid.sigma_ve
    s_min = ctx.schedule.sigma_ve(jnp.float32(ctx.schedule.t_min))

    def step(y, i):
        x0 = ctx.denoise_at(y, i)
        s_next = sig[i + 1]
        spread = jnp.sqrt(jnp.maximum(s_next**2 - s_min**2, 0.0))
        return jnp.where(s_next > 0, x0 + spread * ctx.noise(i), x0), None

    y, _ = ctx.scan(step, y, jnp.arange(ctx.grid.steps))
    return y


register("consistency", nfe=lambda n: n, stochastic=True)(consistency_run)

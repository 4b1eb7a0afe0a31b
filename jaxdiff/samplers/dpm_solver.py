"""DPM-Solver++ multistep samplers, data prediction (Lu et al. 2022b, "DPM-Solver++: Fast Solver
for Guided Sampling of Diffusion Probabilistic Models").

Time is lambda = -log sigma_ve and the state the scaled y = x / alpha, so the exact solution over a
step of size h = lambda_{i+1} - lambda_i is Eq. (*) of ``expint`` (Lu et al. 2022b, Sec. 4, divided
by alpha).  With D_0 = D(y_i), D_1, D_2 the data predictions at the previous two grid points,
h_0 = lambda_i - lambda_{i-1}, h_1 = lambda_{i-1} - lambda_{i-2}, and e^{-h} = sigma_{i+1}/sigma_i:

  order 1 (first-order DPM-Solver++ = DDIM):
      y_{i+1} = e^{-h} y_i + (1 - e^{-h}) D_0
  order 2 (DPM-Solver++(2M), Lu et al. 2022b Algorithm 2, r = h_0 / h):
      y_{i+1} = e^{-h} y_i + (1 - e^{-h}) [(1 + 1/(2r)) D_0 - 1/(2r) D_1]
  order 3 (3M): D is replaced in (*) by the quadratic through (lambda_{i-2..i}, D_{2..0}), whose
      derivatives at lambda_i are D' = d_0 + h_0 d_01 and D'' = 2 d_01 with divided differences
      d_0 = (D_0 - D_1)/h_0, d_1 = (D_1 - D_2)/h_1, d_01 = (d_0 - d_1)/(h_0 + h_1):
      form "taylor":
          y_{i+1} = e^{-h} y_i + (1 - e^{-h}) D_0 + h^2 phi_2(-h) D' + h^3 phi_3(-h) D''
      form "official": the same with h^3 phi_3(-h) D'' / 2 = h^3 phi_3(-h) d_01, the weight of the
      official DPM-Solver code's multistep third-order update (``dpm_solver_pytorch.py``,
      ``multistep_dpm_solver_third_update``) and of diffusers' DPMSolverMultistepScheduler.
      The official weight is the default (it is what users compare against); its local error
      keeps an O(h^3) term, so it measures second order at high NFE while being the more
      accurate one at 10-50 steps on DDPM grids.  "taylor" is the Taylor-consistent weight,
      third order (tests/test_samplers.py measures both).

Order min(order, i + 1) on step i (the first steps have fewer points), and order 1 on the final
step to sigma = 0 (lambda = inf), which returns D(y_{N-1}) exactly.  With ``lower_order_final``
(default, as the official codes) a solve of fewer than 15 steps also takes its last steps at
order min(order, steps left): 3M's second-to-last step is second order, and a noisy end's last
step first order.  Longer solves and ``lower_order_final=False`` keep the full order up to a
noisy end.  1 NFE per step.

Partial solves carry the history: the data predictions D at the last two points and their
lambdas, and how many points have a prediction, so a segment continued from the carry takes the
same steps, at the same orders, as one solve over the joined grid.  Without a carry a segment
restarts at first order.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxdiff.samplers.base import SamplerContext, register
from jaxdiff.samplers.expint import (extended_log_snr, log_snr_steps, multistep_order, phi,
                                     steps_remaining)

Array = jax.Array
FORMS = ("official", "taylor")     # the 3M weight of the second difference (module docstring)
LOWER_ORDER_BELOW = 15             # solves shorter than this lower their final orders


def _weights(sig: Array, lam: Array, i: Array, p: Array,
             form: str = "official") -> tuple[Array, ...]:
    """Scalars (e^{-h}, 1 - e^{-h}, c1, c2) of y' = e^{-h} y + (1 - e^{-h}) D_0
    + c1 (D_0 - D_1) + c2 (D_1 - D_2) for step i at order p.

    sig: (steps + 1,) grid noise levels; lam: (steps + 3,) ``extended_log_snr``, whose entry
    i + 2 is grid point i (and i + 1, i the two points before it); form: the 3M weight."""
    ratio = sig[i + 1] / sig[i]
    h = lam[i + 3] - lam[i + 2]
    psi0 = -jnp.expm1(-h)
    # the previous step sizes exist only where p >= 2 (h_0) or p >= 3 (h_1); 1.0 elsewhere
    h = jnp.where(p >= 2, h, 1.0)
    h0 = jnp.where(p >= 2, lam[i + 2] - lam[i + 1], 1.0)
    h1 = jnp.where(p >= 3, lam[i + 1] - lam[i], 1.0)
    c1_second = psi0 * h / (2.0 * h0)
    psi1, psi2 = h**2 * phi(2, h), h**3 * phi(3, h)
    second = 2.0 if form == "taylor" else 1.0  # weight of h^3 phi_3 d_01 (module docstring)
    q = (psi1 * h0 + second * psi2) / (h0 + h1)   # weight of d_01
    c1_third = (psi1 + q) / h0
    c2_third = -q / h1
    c1 = jnp.select([p == 2, p == 3], [c1_second, c1_third], 0.0)
    c2 = jnp.where(p == 3, c2_third, 0.0)
    return ratio, psi0, c1, c2


def solve(ctx: SamplerContext, y: Array, order: int) -> tuple[Array, dict]:
    """DPM-Solver++(order M) over ctx.grid.  y: (B, ...) scaled state at grid point 0.

    Returns (y at the last grid point (B, ...), history {d: (D at the last two points before
    the end), lam: (2,) their lambdas, known: int32 count of points with a prediction}).
    """
    sig = ctx.grid.sigma_ve
    n = ctx.grid.steps
    hist = ctx.history
    if hist is None:
        zeros = jnp.zeros_like(y)
        d1, d2, known, lam = zeros, zeros, 0, extended_log_snr(log_snr_steps(sig), None)
    else:
        (d1, d2), known = hist["d"], hist["known"]
        lam = extended_log_snr(log_snr_steps(sig), hist["lam"])

    def remaining(i):
        left = steps_remaining(ctx, i)
        lower = ctx.options["lower_order_final"] & (ctx.steps_in_solve < LOWER_ORDER_BELOW)
        return jnp.where(lower, left, order)

    def step(carry, i):
        y, d1, d2 = carry   # d1, d2: data predictions at grid points i - 1, i - 2
        d0 = ctx.denoise_at(y, i)
        p = multistep_order(i, n, order, ctx.grid.clean_end, known, remaining(i))
        ratio, psi0, c1, c2 = _weights(sig, lam, i, p, ctx.options.get("form", "official"))
        y = ratio * y + psi0 * d0 + c1 * (d0 - d1) + c2 * (d1 - d2)
        return (y, d0, d1), None

    (y, d1, d2), _ = ctx.scan(step, (y, d1, d2), jnp.arange(n))
    history = {"d": (d1, d2), "lam": jnp.stack([lam[n], lam[n + 1]]),
               "known": jnp.asarray(known + n, jnp.int32)}
    return y, history


def run(ctx: SamplerContext, y: Array, order: int) -> Array:
    """DPM-Solver++(order M).  y: (B, ...) scaled state at grid point 0 -> (B, ...) state at the
    last grid point (the sample for a clean end)."""
    return solve(ctx, y, order)[0]


def check(options: dict) -> None:
    """form in FORMS; lower_order_final a bool (both static: they fix the program)."""
    if options.get("form", "official") not in FORMS:
        raise ValueError(f"dpmpp_3m: form must be one of {FORMS}, got {options['form']!r}")
    if not isinstance(options["lower_order_final"], bool):
        raise ValueError(f"dpm-solver++: lower_order_final must be True or False, got "
                         f"{options['lower_order_final']!r}")


register("dpmpp_2m", nfe=lambda n: n, check=check, solve=functools.partial(solve, order=2),
         lower_order_final=True)(functools.partial(run, order=2))
register("dpmpp_3m", nfe=lambda n: n, check=check, solve=functools.partial(solve, order=3),
         form="official", lower_order_final=True)(functools.partial(run, order=3))

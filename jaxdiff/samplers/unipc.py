"""UniPC, data prediction with B(h) = bh2 (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector
Framework for Fast Sampling of Diffusion Models", Sec. 3: UniC, UniP and the B(h) choices).

Scaled state y = x / alpha, lambda = -log sigma_ve, step i -> i + 1 of size h, e^{-h} =
sigma_{i+1}/sigma_i, psi0 = 1 - e^{-h} (= -B(h) for bh2).  With D_0 the data prediction at point i
and D_k at the k-th previous point, r_k = (lambda_{i-k} - lambda_i) / h and
Delta_k = (D_k - D_0) / r_k:

  UniP-p (predictor, order p):
      y~ = e^{-h} y_i + psi0 (D_0 + sum_{k<p} a_k Delta_k)
  UniC-p (corrector, order p + 1), with D~ = D(y~) at point i + 1 (node r = 1):
      y_{i+1} = e^{-h} y_i + psi0 (D_0 + sum_{k<p} c_k Delta_k + c_p (D~ - D_0))

where the weights solve the order conditions sum_k w_k r_k^(j-1) = b_j, j = 1..(number of weights),
b_j = j! phi_{j+1}(-h) / phi_1(-h) (the bh2 case of UniPC's g_j(h) / B(h)).  As in the official
implementation the 1-weight systems use the value 1/2 (a_1 for UniP-2, c_1 for UniC-1), which
b_1 = 1/2 + O(h) approximates.  D~ is reused as D_0 of the next step, so UniC costs no evaluation:
1 NFE per step.  Step i uses order min(order, i + 1, steps left in the solve) (the last bound is
``lower_order_final``, on by default as in the official UniPC code and diffusers'
UniPCMultistepScheduler: order 3 takes its second-to-last step at order 2, and a noisy end's
last step is first order; ``lower_order_final=False`` keeps the full order there); the final
step to sigma = 0 is order 1 (y = D_0, lambda = inf) and has no corrector.

A grid with a noisy end (lambda_N finite) takes all N steps with predictor and corrector, which
evaluates D~ at the last point too: N + 1 evaluations.  Partial solves carry that D~ (the next
step's D_0), the predictions at the two points before and their lambdas, and how many points
have a prediction; a segment continued from the carry evaluates nothing at its first point and
takes the steps of one solve over the joined grid (so the two segments of a split cost N
evaluations together, as the joined solve).  Without a carry a segment restarts at first order.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxdiff.samplers.base import SamplerContext, lookahead_segment_nfe, register
from jaxdiff.samplers.expint import (extended_log_snr, log_snr_steps, multistep_order, phi,
                                     steps_remaining)

Array = jax.Array
MAX_ORDER = 3


def _solve_vandermonde(nodes: Array, b: Array, n: Array) -> Array:
    """Weights w (3,) with sum_k w_k nodes_k^j = b_j for j < n, and w_k = 0 for k >= n.

    nodes, b: (3,); n: traced int in [0, 3].  The unused rows and columns are set to the identity
    so the 3x3 system is always regular.
    """
    j = jnp.arange(MAX_ORDER)
    active = (j[:, None] < n) & (j[None, :] < n)
    safe_nodes = jnp.where(j < n, nodes, 0.0)
    vander = safe_nodes[None, :] ** j[:, None]
    mat = jnp.where(active, vander, jnp.eye(MAX_ORDER))
    return jnp.linalg.solve(mat, jnp.where(j < n, b, 0.0))


def _step_weights(lam: Array, i: Array, p: Array) -> tuple[Array, Array, Array, Array]:
    """(h, r (2,), predictor weights a (2,), corrector weights c (3,) ordered [D~, Delta_1,
    Delta_2]) for the step from lam[i] to lam[i + 1] at order p (1 <= p <= 3, lambda finite);
    lam[i - 1], lam[i - 2] are the previous points (i >= 2: see ``extended_log_snr``)."""
    h = lam[i + 1] - lam[i]
    r = (lam[jnp.maximum(i - jnp.arange(1, MAX_ORDER), 0)] - lam[i]) / h   # r_1, r_2
    b = jnp.stack([math.factorial(k) * phi(k + 1, h) for k in range(1, MAX_ORDER + 1)])
    b = b / phi(1, h)
    a = _solve_vandermonde(jnp.append(r, 0.0), b, p - 1)[:2]
    a = jnp.where(p == 2, jnp.array([0.5, 0.0]), a)
    c = _solve_vandermonde(jnp.concatenate([jnp.ones(1), r]), b, p)
    c = jnp.where(p == 1, jnp.array([0.5, 0.0, 0.0]), c)
    return h, r, a, c


def check(options: dict) -> None:
    """order in {1, 2, 3}; lower_order_final a bool (static: they fix the program)."""
    order = options["order"]
    if isinstance(order, bool) or order not in range(1, MAX_ORDER + 1):
        raise ValueError(f"unipc: order must be 1, 2 or 3, got {order!r}")
    if not isinstance(options["lower_order_final"], bool):
        raise ValueError(f"unipc: lower_order_final must be True or False, got "
                         f"{options['lower_order_final']!r}")


def solve(ctx: SamplerContext, y: Array) -> tuple[Array, dict]:
    """UniPC-bh2 over ctx.grid.  y: (B, ...) scaled state at grid point 0.

    Returns (y at the last grid point, history {d: (D~ at the last point, D at the two points
    before it), lam: (2,) lambdas of those two, known: int32 number of points before the last
    with a prediction}).
    """
    order = int(ctx.options["order"])
    sig = ctx.grid.sigma_ve
    n = ctx.grid.steps
    if ctx.history is None:
        zeros = jnp.zeros_like(y)
        preds, known = (ctx.denoise_at(y, 0), zeros, zeros), 0
        lam = extended_log_snr(log_snr_steps(sig), None)
    else:
        preds, known = ctx.history["d"], ctx.history["known"]
        lam = extended_log_snr(log_snr_steps(sig), ctx.history["lam"])

    def step(carry, i):
        y, d0, d1, d2 = carry   # data predictions at points i, i - 1, i - 2
        # the final step to sigma = 0 is taken after the scan, so no clean-end rule here
        p = multistep_order(i, n, order, False, known,
                            steps_remaining(ctx, i) if ctx.options["lower_order_final"] else None)
        h, r, a, c = _step_weights(lam, i + 2, p)
        ratio = sig[i + 1] / sig[i]
        psi0 = -jnp.expm1(-h)
        r_safe = jnp.where(jnp.arange(2) < p - 1, r, 1.0)
        delta1, delta2 = (d1 - d0) / r_safe[0], (d2 - d0) / r_safe[1]
        base = ratio * y + psi0 * d0
        y_pred = base + psi0 * (a[0] * delta1 + a[1] * delta2)
        d_new = ctx.denoise_at(y_pred, i + 1)
        y_corr = base + psi0 * (c[0] * (d_new - d0) + c[1] * delta1 + c[2] * delta2)
        return (y_corr, d_new, d0, d1), None

    if ctx.grid.clean_end:
        (_, d_last, _, _), _ = ctx.scan(step, (y, *preds), jnp.arange(n - 1))
        # final step to sigma = 0: order 1, e^{-h} = 0, y_N = D(y_{N-1}); no corrector
        return d_last, None
    (y, *preds), _ = ctx.scan(step, (y, *preds), jnp.arange(n))
    history = {"d": tuple(preds), "lam": jnp.stack([lam[n], lam[n + 1]]),
               "known": jnp.asarray(known + n, jnp.int32)}
    return y, history


@register("unipc", nfe=lambda n: n, check=check, solve=solve,
          segment_nfe=lookahead_segment_nfe, order=2, lower_order_final=True)
def run(ctx: SamplerContext, y: Array) -> Array:
    """UniPC-bh2.  Options order in {1, 2, 3}, lower_order_final (bool).  y: (B, ...) scaled
    state at grid point 0 -> (B, ...) state at the last grid point."""
    return solve(ctx, y)[0]

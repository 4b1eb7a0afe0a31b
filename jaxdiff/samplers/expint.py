"""Helpers shared by the exponential-integrator samplers (DPM-Solver++, UniPC).

In scaled coordinates (y = x / alpha) and log-SNR time lambda = -log sigma_ve the probability-flow
ODE is linear in y with the data prediction as forcing (Lu et al. 2022b, "DPM-Solver++", Sec. 4:
the exact solution of the data-prediction ODE, divided by alpha):

    dy/dlambda = D(y, lambda) - y,
    y(lambda + h) = e^{-h} y(lambda) + int_0^h e^{-(h - u)} D(lambda + u) du.          (*)

Taylor-expanding D around lambda turns (*) into weights on D and its derivatives,

    int_0^h e^{-(h - u)} u^k / k! du = h^{k+1} phi_{k+1}(-h),
    phi_j(z) = sum_{m >= 0} z^m / (m + j)!      (phi_1(z) = (e^z - 1) / z, ...),

the phi functions of exponential integrators (Hochbruck & Ostermann 2010, "Exponential
integrators", Acta Numerica, Sec. 2).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

Array = jax.Array

_SERIES_BELOW = 1.0   # |z| below which phi_j is summed as a series (recursion cancels there)
_SERIES_TERMS = 16    # 1 / (16 + j)! < 1e-13: exact in float32


def log_snr_steps(sigma_ve: Array) -> Array:
    """lambda_i = -log sigma_ve_i, shape (steps + 1,); the final sigma_ve = 0 gives +inf."""
    return -jnp.log(sigma_ve)


def phi(j: int, h: Array) -> Array:
    """phi_j(-h) for h >= 0 (any shape), j >= 1, accurate in float32 for all h including +inf.

    Series for h < 1; above, the recursion phi_{k+1}(z) = (phi_k(z) - 1/k!) / z from
    phi_0(z) = e^z, which loses at most a few bits there.
    """
    if j < 1:
        raise ValueError(f"phi_j needs j >= 1, got {j}")
    h = jnp.asarray(h, jnp.float32)
    z_small = -jnp.minimum(h, _SERIES_BELOW)
    series = jnp.zeros_like(h)
    for m in reversed(range(_SERIES_TERMS)):  # Horner
        series = series * z_small + 1.0 / float(math.factorial(m + j))
    z = -jnp.maximum(h, _SERIES_BELOW)
    rec = jnp.exp(z)
    for k in range(j):
        rec = (rec - 1.0 / float(math.factorial(k))) / z
    return jnp.where(h < _SERIES_BELOW, series, rec)


def multistep_order(i: Array, steps: int, order: int, clean_end: bool = True,
                    known: Array | int = 0, remaining: Array | None = None) -> Array:
    """Order of step i -> i + 1 of a grid of ``steps`` steps: min(order, known + i + 1), as many
    points as have data predictions (``known``: points before this grid whose predictions a
    carry brings from a previous segment), and 1 on a clean end's final step to sigma_ve = 0,
    where lambda = +inf and only the first-order update, y = D, is defined.  A noisy end has
    finite lambda and keeps the full order on its last step.

    ``remaining``: steps left in the whole solve from this step on (1 on its last step), given
    where the sampler lowers its order at the end of a solve (the ``lower_order_final`` of the
    official DPM-Solver and UniPC codes): the order is at most ``remaining``."""
    p = jnp.minimum(order, known + i + 1)
    if remaining is not None:
        p = jnp.minimum(p, jnp.maximum(remaining, 1))
    return jnp.where(i == steps - 1, 1, p) if clean_end else p


def steps_remaining(ctx, i: Array) -> Array:
    """Steps left in the whole solve from step i of ``ctx.grid`` on (1 on the solve's last
    step): a segment of a split solve counts to the end of the joined one."""
    return jnp.asarray(ctx.steps_in_solve, jnp.int32) - (
        jnp.asarray(ctx.step_offset, jnp.int32) + i)


def extended_log_snr(lam: Array, previous: Array | None) -> Array:
    """(steps + 3,) lambdas with the two points before the grid in front: index k + 2 is grid
    point k.  ``previous``: (2,) [lambda_{-2}, lambda_{-1}] from a carry, or None for a fresh
    start, where they are filled with lambda_0 (never used: the order is 1 there)."""
    if previous is None:
        previous = jnp.stack([lam[0], lam[0]])
    return jnp.concatenate([previous, lam])

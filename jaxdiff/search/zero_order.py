"""Zero-order search (Ma et al., arXiv 2501.09732, Sec. 3.2): a pivot noise per example, and in
each of K iterations N neighbours on the pivot's sphere,

    y = ||n|| (c u + sqrt(1 - c^2) w),   u = n / ||n||,  w a random unit vector orthogonal to u,

(the norm is kept, the angle to the pivot is arccos c; c = 0.95 by default), each solved by a
deterministic solver and scored by the verifier; the pivot moves to the best neighbour when it
scores above the pivot (so the pivot's score never falls).  The first pivot is the example's
own initial noise: its solve is plain sampling of the example.  NFE per example:
(1 + K N) times the solver's.
"""
from __future__ import annotations

from typing import Any

import jax
import ml_collections
import jax.numpy as jnp

from jaxdiff import samplers
from jaxdiff.denoiser import DenoiserBase
from jaxdiff.rng import example_keys, normal_per_example
from jaxdiff.search.base import (SearchResult, candidate_indices, check_count,
                                 check_deterministic, make_grid, pick_best, repeat_cond)
from jaxdiff.search.verifiers import Verifier, denoiser_calls, scores_of
from jaxdiff.search.config import (check_deterministic_sampler, check_fields, register_search,
                                   sample_solver)

Array = jax.Array


def _flat_dot(a: Array, b: Array) -> Array:
    return jnp.sum((a * b).reshape(a.shape[0], -1), axis=-1)


def neighbours(pivot: Array, g: Array, c: float) -> Array:
    """Norm-preserving neighbours of ``pivot`` (B, ...) along the directions g (B, N, ...): the
    part of g orthogonal to the pivot, normalised, mixed with the pivot's direction at cos c.
    Returns (B, N, ...) with every neighbour's norm equal to its pivot's."""
    b, n = g.shape[:2]
    norm = jnp.sqrt(_flat_dot(pivot, pivot)).reshape((b, 1) + (1,) * (pivot.ndim - 1))
    u = pivot[:, None] / norm                                            # (B, 1, ...)
    gf = g.reshape((b * n,) + g.shape[2:])
    uf = jnp.repeat(u, n, axis=1).reshape(gf.shape)
    w = gf - _flat_dot(gf, uf).reshape((-1,) + (1,) * (gf.ndim - 1)) * uf
    w = w / jnp.sqrt(_flat_dot(w, w)).reshape((-1,) + (1,) * (gf.ndim - 1))
    y = c * uf + jnp.sqrt(1.0 - c * c) * w
    return norm * y.reshape(g.shape)


def zero_order_search(den: DenoiserBase, key: Array, shape: tuple[int, ...],
                      verifier: Verifier, *, neighbours_per_step: int, iterations: int,
                      c: float = 0.95, sampler: str = "dpmpp_2m", steps: int = 10,
                      grid: Any = "uniform_t", cond: Any = None, indices: Array | None = None,
                      **options) -> SearchResult:
    """K ``iterations`` of N ``neighbours_per_step`` around a pivot noise per example.

    Arguments as ``random_search``; c in (0, 1) is the cosine between a neighbour and its pivot.
    Returns SearchResult(x0, scores, nfe = (1 + K N) x solver NFE, trace after each iteration,
    the first entry the pivot's own solve).
    """
    n = check_count(neighbours_per_step, "neighbours_per_step")
    k_iter = check_count(iterations, "iterations", low=0)
    if not 0.0 < float(c) < 1.0:
        raise ValueError(f"search: c must lie in (0, 1), got {c!r}")
    check_deterministic(sampler, options)
    b, rest = int(shape[0]), tuple(shape[1:])
    g = make_grid(den.schedule, steps, grid)
    idx = jnp.arange(b) if indices is None else jnp.asarray(indices)
    scale = g.alpha[0] * g.sigma_ve[0]          # unit noise -> the x-space start
    first = samplers.sample(den, key, shape, sampler=sampler, grid=g, cond=cond, indices=idx,
                            **options)
    per = int(first.nfe) + denoiser_calls(verifier)
    x0, score = first.x0, scores_of(verifier, first.x0, cond)
    pivot = normal_per_example(example_keys(key, idx), 0, rest)  # the noise of that solve
    conds = repeat_cond(cond, n)
    trace = [(per, float(jnp.mean(score)))]
    for it in range(k_iter):
        k = jax.random.fold_in(key, it + 1)
        cand = candidate_indices(idx, n)
        dirs = normal_per_example(example_keys(k, cand), 0, rest).reshape((b, n) + rest)
        ys = neighbours(pivot, dirs, float(c))
        out = samplers.sample(den, k, (b * n,) + rest, sampler=sampler, grid=g, cond=conds,
                              indices=cand, x_start=scale * ys.reshape((b * n,) + rest),
                              **options)
        s = scores_of(verifier, out.x0, conds).reshape(b, n)
        best_x, best_s = pick_best(out.x0.reshape((b, n) + rest), s)
        best_y, _ = pick_best(ys, s)
        better = best_s > score
        mask = better.reshape((b,) + (1,) * len(rest))
        x0, pivot = jnp.where(mask, best_x, x0), jnp.where(mask, best_y, pivot)
        score = jnp.where(better, best_s, score)
        trace.append((per * (1 + (it + 1) * n), float(jnp.mean(score))))
    return SearchResult(x0=x0, scores=score, nfe=per * (1 + k_iter * n), trace=trace)


def _check(section, config) -> None:
    check_fields(section, neighbours_per_step=dict(low=1, integer=True),
                 iterations=dict(low=0, integer=True), c=dict(low=0.0, high=1.0, low_open=True))
    check_deterministic_sampler(config)


@register_search("zero_order", defaults=lambda: ml_collections.ConfigDict(dict(
    neighbours_per_step=2, iterations=3, c=0.95)), check=_check)
def _run(den, key, shape, verifier, sample, section, cond, indices):
    return zero_order_search(den, key, shape, verifier,
                             neighbours_per_step=int(section.neighbours_per_step),
                             iterations=int(section.iterations), c=float(section.c), cond=cond,
                             indices=indices, **sample_solver(sample))

"""Search over paths (Ma et al., "Inference-time scaling for diffusion models beyond scaling
denoising steps", arXiv 2501.09732, Sec. 3.2): N paths per example are solved part of the way,
then repeatedly noised forward a little, solved back further, and pruned to the N the verifier
likes best, until they reach zero noise.

On a clean-ended grid of ``steps`` steps with points 0 (pure noise) .. steps (clean), in grid
indices (the paper states its levels as noise levels; a grid index is the level of that point):

  1. N initial noises per example, solved by a deterministic solver from point 0 to ``start``.
  2. Each of the N states at point p is noised forward M times (``branches``) to q = p - f by
     the exact transition of the forward process (f = ``forward``),
         x_q = (alpha_q / alpha_p) x_p + alpha_q sqrt(sigma_q^2 - sigma_p^2) eps,
     sigma = sigma/alpha of the point, eps ~ N(0, I).
  3. The N M states are solved from q to r = q + b (b = ``backward`` > f, capped at the clean
     end); each is scored by the verifier on its x0-prediction D(x_r) (one more denoiser call,
     as the paper does, since verifiers take clean images) or, at the clean end, on the sample;
     the N best of the N M are kept.  Steps 2-3 repeat from r until the clean end.
  4. The example returns the best of its N clean samples (the paper's final random search).

Every round moves the paths b - f points towards the clean end.  Path j of example b has the
global index indices[b] N + j, so its first solve is random search's candidate j, and with
f = 0 and M = 1 nothing is noised or pruned: the search is random search over N noises, solved
in segments (equal to float32 rounding for a one-step solver: ddim, euler, heun).  NFE per
example: N (solver NFE to ``start``) + per round N M (solver NFE of the segment, plus one for the
x0-prediction of a noisy end), plus the verifier's own calls per score.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from jaxdiff import samplers
from jaxdiff.denoiser import DenoiserBase
from jaxdiff.errors import ConfigError
from jaxdiff.rng import example_keys, normal_per_example
from jaxdiff.schedules import Grid
from jaxdiff.search.base import (SearchResult, candidate_indices, check_count,
                                 check_deterministic, make_grid, pick_best, repeat_cond)
from jaxdiff.search.config import (check_deterministic_sampler, check_fields, register_search,
                                   sample_solver)
from jaxdiff.search.verifiers import Verifier, denoiser_calls, scores_of

Array = jax.Array


def segment(g: Grid, first: int, last: int) -> Grid:
    """Points first..last of ``g`` as a grid (clean-ended only when it reaches g's clean end)."""
    return Grid(g.t[first:last + 1], g.alpha[first:last + 1], g.sigma_ve[first:last + 1],
                clean_end=g.clean_end and last == g.steps)


def noise_forward(x: Array, g: Grid, p: int, q: int, eps: Array) -> Array:
    """x at grid point p (x-space, (B, ...)) noised forward to the noisier point q <= p by the
    forward process with the unit noises ``eps`` (B, ...); q = p returns x."""
    a_p, a_q = g.alpha[p], g.alpha[q]
    spread = jnp.sqrt(jnp.maximum(g.sigma_ve[q] ** 2 - g.sigma_ve[p] ** 2, 0.0))
    return (a_q / a_p) * x + a_q * spread * eps


def path_search(den: DenoiserBase, key: Array, shape: tuple[int, ...], verifier: Verifier, *,
                paths: int, branches: int, start: int, forward: int, backward: int,
                sampler: str = "dpmpp_2m", steps: int = 10, grid: Any = "uniform_t",
                cond: Any = None, indices: Array | None = None, **options) -> SearchResult:
    """Search over ``paths`` N per example with ``branches`` M forward noisings each.

    Args:
      den, key, shape, verifier, cond, indices, sampler, steps, grid, **options: as
        ``random_search`` (a deterministic solver on a clean-ended grid).
      paths: N >= 1 paths kept per example; branches: M >= 1 noisings per path and round.
      start: the grid point (1..steps) the first solve stops at.
      forward: f >= 0 points of forward noising per round; backward: b > f points solved
        back per round (f = 0 only as the degenerate check: no noise, random search).
    Returns:
      SearchResult(x0 (B, ...), scores (B,) of the chosen clean samples, nfe per example, trace:
      after the first solve and each round the NFE so far and the batch-mean best score of the
      kept paths; before the clean end that score is of x0-predictions).
    """
    n = check_count(paths, "paths")
    m = check_count(branches, "branches")
    f = check_count(forward, "forward", low=0)
    bwd = check_count(backward, "backward", low=1)
    check_deterministic(sampler, options)
    g = make_grid(den.schedule, steps, grid)
    if not g.clean_end:
        raise ValueError("search: path search needs a grid that ends at zero noise")
    s = check_count(start, "start")
    if s > g.steps:
        raise ValueError(f"search: start must be a grid point in [1, {g.steps}], got {start!r}")
    if bwd <= f:
        raise ValueError(f"search: backward must exceed forward (each round has to move towards "
                         f"the clean end), got forward={f}, backward={bwd}")
    b, rest = int(shape[0]), tuple(shape[1:])
    idx = jnp.arange(b) if indices is None else jnp.asarray(indices)
    path_idx = candidate_indices(idx, n)                                   # (B N,)
    cost = denoiser_calls(verifier)

    def solve(x_start, first, last, count, conds, ids):
        return samplers.sample(den, key, (count,) + rest, sampler=sampler,
                               grid=segment(g, first, last), cond=conds, indices=ids,
                               x_start=x_start, step_offset=first, total_steps=g.steps,
                               **options)

    def score(x, point, conds):
        """Scores of states at ``point`` (their x0-prediction's unless clean) and the calls."""
        if point == g.steps:
            return scores_of(verifier, x, conds), 0
        return scores_of(verifier, den(x, g.t[point], conds), conds), 1

    conds_n = repeat_cond(cond, n)
    first = solve(None, 0, s, b * n, conds_n, path_idx)
    x = first.x                                                          # (B N, ...) at s
    sc, extra = score(x, s, conds_n)
    sc = sc.reshape(b, n)
    nfe = n * (int(first.nfe) + extra + cost)
    trace = [(nfe, float(jnp.mean(jnp.max(sc, axis=1))))]
    p, rnd = s, 0
    conds_nm = repeat_cond(cond, n * m)
    branch_idx = candidate_indices(path_idx, m)                            # (B N M,)
    while p < g.steps:
        q = max(p - f, 0)
        r = min(q + bwd, g.steps)
        eps = normal_per_example(example_keys(jax.random.fold_in(key, 0x9A7 + rnd), branch_idx),
                                 0, rest)
        xq = noise_forward(jnp.repeat(x, m, axis=0), g, p, q, eps)
        out = solve(xq, q, r, b * n * m, conds_nm, branch_idx)
        sc_all, extra = score(out.x, r, conds_nm)
        sc_all = sc_all.reshape(b, n * m)
        top, keep = jax.lax.top_k(sc_all, n)                               # (B, N)
        xs = out.x.reshape((b, n * m) + rest)
        x = jnp.take_along_axis(xs, keep.reshape((b, n) + (1,) * len(rest)), axis=1)
        x = x.reshape((b * n,) + rest)
        sc = top
        nfe += n * m * (int(out.nfe) + extra + cost)
        trace.append((nfe, float(jnp.mean(sc[:, 0]))))
        p, rnd = r, rnd + 1
    x0, best = pick_best(x.reshape((b, n) + rest), sc)
    return SearchResult(x0=x0, scores=best, nfe=nfe, trace=trace)


def _check(section, config) -> None:
    check_fields(section, paths=dict(low=1, integer=True), branches=dict(low=1, integer=True),
                 start=dict(low=1, integer=True), forward=dict(low=0, integer=True),
                 backward=dict(low=1, integer=True))
    if int(section.start) > int(config.sample.steps):
        raise ConfigError(f"config.search.start: a grid point in [1, config.sample.steps = "
                          f"{int(config.sample.steps)}], got {section.start!r}")
    if int(section.backward) <= int(section.forward):
        raise ConfigError(f"config.search.backward: must exceed search.forward = "
                          f"{section.forward!r}, got {section.backward!r}")
    check_deterministic_sampler(config)


@register_search("paths", defaults=lambda: ml_collections.ConfigDict(dict(
    paths=2, branches=2, start=4, forward=2, backward=4)), check=_check)
def _run(den, key, shape, verifier, sample, section, cond, indices):
    return path_search(den, key, shape, verifier, paths=int(section.paths),
                       branches=int(section.branches), start=int(section.start),
                       forward=int(section.forward), backward=int(section.backward), cond=cond,
                       indices=indices, **sample_solver(sample))

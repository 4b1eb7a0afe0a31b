"""Importance resampling towards a reward-tilted target pi(x0) ∝ p(x0) exp(lambda r(x0)): N
base samples per example, self-normalised weights w_j ∝ exp(lambda r(x0_j)), and one of them
drawn with those weights (the baseline Diffusion Tree Sampling compares against, Jain et al.,
arXiv 2506.20701).  As N grows the draw's law tends to pi; lambda = 0 draws uniformly among base
samples, so its samples are the base sampler's.  NFE per example: N times the sampler's.
"""
from __future__ import annotations

from typing import Any

import jax
import ml_collections
import jax.numpy as jnp

from jaxdiff import samplers
from jaxdiff.denoiser import DenoiserBase
from jaxdiff.search.base import (SearchResult, candidate_indices, check_count, check_lambda,
                                 make_grid, repeat_cond)
from jaxdiff.search.verifiers import Verifier, denoiser_calls, scores_of
from jaxdiff.search.config import check_fields, register_search, sample_solver

Array = jax.Array


def importance_resampling(den: DenoiserBase, key: Array, shape: tuple[int, ...],
                          reward: Verifier, *, lam: float, candidates: int,
                          sampler: str = "ddpm", steps: int = 20, grid: Any = "uniform_t",
                          cond: Any = None, indices: Array | None = None,
                          **options) -> SearchResult:
    """One draw per example from N base samples weighted by exp(lam r).

    Arguments as ``random_search`` (any sampler, stochastic ones included), plus lam >= 0 (the
    tilt) and ``reward`` (a verifier).  Returns SearchResult(x0, scores = the drawn samples'
    rewards, nfe, trace = [(nfe, batch-mean reward of the draw)]).
    """
    n = check_count(candidates, "candidates")
    lam = check_lambda(lam)
    b, rest = int(shape[0]), tuple(shape[1:])
    g = make_grid(den.schedule, steps, grid)
    idx = jnp.arange(b) if indices is None else jnp.asarray(indices)
    conds = repeat_cond(cond, n)
    out = samplers.sample(den, key, (b * n,) + rest, sampler=sampler, grid=g, cond=conds,
                          indices=candidate_indices(idx, n), **options)
    r = scores_of(reward, out.x0, conds).reshape(b, n)
    pick = jax.random.categorical(jax.random.fold_in(key, 0x1D5), lam * r, axis=1)
    rows = jnp.arange(b)
    x0 = out.x0.reshape((b, n) + rest)[rows, pick]
    nfe = n * (int(out.nfe) + denoiser_calls(reward))
    return SearchResult(x0=x0, scores=r[rows, pick], nfe=nfe,
                        trace=[(nfe, float(jnp.mean(r[rows, pick])))])


@register_search("importance", defaults=lambda: ml_collections.ConfigDict(dict(
    candidates=4, lam=1.0)), check=lambda section, config: check_fields(
        section, candidates=dict(low=1, integer=True), lam=dict(low=0.0)))
def _run(den, key, shape, verifier, sample, section, cond, indices):
    return importance_resampling(den, key, shape, verifier, lam=float(section.lam),
                                 candidates=int(section.candidates), cond=cond,
                                 indices=indices, **sample_solver(sample))

"""Random search (Ma et al., "Inference-time scaling for diffusion models beyond scaling denoising
steps", arXiv 2501.09732, Sec. 3.2): best-of-N over the initial noise with a deterministic
solver, scored by a verifier.

Each of the B examples gets N candidate noises; all B N solves run as one batch (global index
indices[b] N + j, so N = 1 is plain sampling of the same examples, bit for bit), the verifier
scores the B N samples, and each example keeps its best.  NFE per example: N times the solver's.
"""
from __future__ import annotations

from typing import Any

import jax
import ml_collections
import jax.numpy as jnp

from jaxdiff import samplers
from jaxdiff.denoiser import DenoiserBase
from jaxdiff.search.base import (SearchResult, candidate_indices, check_count,
                                 check_deterministic, make_grid, pick_best, repeat_cond)
from jaxdiff.search.verifiers import Verifier, denoiser_calls, scores_of
from jaxdiff.search.config import (check_deterministic_sampler, check_fields, register_search,
                                   sample_solver)

Array = jax.Array


def random_search(den: DenoiserBase, key: Array, shape: tuple[int, ...], verifier: Verifier, *,
                  candidates: int, sampler: str = "dpmpp_2m", steps: int = 10,
                  grid: Any = "uniform_t", cond: Any = None, indices: Array | None = None,
                  **options) -> SearchResult:
    """Best of ``candidates`` initial noises per example.

    Args:
      den: the (possibly guided) Denoiser; key: PRNG key; shape: (B, ...) of the output.
      verifier: (x0, cond) -> (B,) scores (``jaxdiff.search.verifiers``); higher is better.
      candidates: N >= 1 noises per example.
      sampler, steps, grid, **options: a deterministic solver and its grid (as
        ``samplers.sample``).
      cond: condition pytree with leading dimension B (or None); indices: (B,) global example
        indices (default arange(B)).
    Returns:
      SearchResult(x0 (B, ...), scores (B,), nfe = N x (solver NFE + the verifier's calls),
      trace: the batch-mean best score after the first k candidates, k = 1..N, with its NFE).
    """
    n = check_count(candidates, "candidates")
    check_deterministic(sampler, options)
    b = int(shape[0])
    g = make_grid(den.schedule, steps, grid)
    idx = jnp.arange(b) if indices is None else jnp.asarray(indices)
    conds = repeat_cond(cond, n)
    out = samplers.sample(den, key, (b * n,) + tuple(shape[1:]), sampler=sampler, grid=g,
                          cond=conds, indices=candidate_indices(idx, n), **options)
    scores = scores_of(verifier, out.x0, conds).reshape(b, n)
    x0, best = pick_best(out.x0.reshape((b, n) + tuple(shape[1:])), scores)
    running = jnp.mean(jax.lax.cummax(scores, axis=1), axis=0)
    per = int(out.nfe) + denoiser_calls(verifier)
    trace = [((k + 1) * per, float(running[k])) for k in range(n)]
    return SearchResult(x0=x0, scores=best, nfe=n * per, trace=trace)


def _check(section, config) -> None:
    check_fields(section, candidates=dict(low=1, integer=True))
    check_deterministic_sampler(config)


@register_search("random", defaults=lambda: ml_collections.ConfigDict(dict(candidates=4)),
                 check=_check)
def _run(den, key, shape, verifier, sample, section, cond, indices):
    return random_search(den, key, shape, verifier, candidates=int(section.candidates),
                         cond=cond, indices=indices, **sample_solver(sample))

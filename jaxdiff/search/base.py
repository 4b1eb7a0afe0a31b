"""What the noise searches share: the result record, the checks, the candidates' batch.

A search spends extra sampler solves on one batch of B examples and returns, per example, the
sample its verifier scores highest.  Compute is counted in network evaluations of the Denoiser
(NFE, per example): a search that solves m candidates with a sampler of n NFE costs m n.  A
verifier that calls the denoiser itself (``verifiers.feature_similarity``) adds its calls per
scored sample (``verifiers.denoiser_calls``) to every count below.

``SearchResult`` holds x0 (B, ...), its scores (B,), the NFE per example, and ``trace``: the
batch-mean best score after each round together with the NFE spent so far (the curve "score
against compute" of Ma et al., Fig. 3).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from jaxdiff.samplers.base import get_sampler
from jaxdiff.schedules import Grid, sampling_grid

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """x0: (B, ...) the chosen samples; scores: (B,) their verifier scores; nfe: denoiser
    evaluations per example; trace: list of (nfe so far, batch-mean best score) per round."""

    x0: Array
    scores: Array
    nfe: int
    trace: list


def check_deterministic(sampler: str, options: dict) -> None:
    """Noise searches need a deterministic solver: the sample must be a function of the
    initial noise alone.  A stochastic sampler passes only when its eta option is 0 (ddim by
    default); ddim with eta > 0, ddpm and heun_sde are refused."""
    spec = get_sampler(sampler)
    eta = options.get("eta", dict(spec.defaults).get("eta"))
    if spec.stochastic and (eta is None or float(eta) != 0.0):
        raise ValueError(f"search: the sampler must be deterministic (an ODE solver), got "
                         f"{sampler!r} with options {options}")


def check_count(value: int, name: str, low: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"search: {name} must be an integer >= {low}, got {value!r}")
    return value


def check_lambda(lam) -> float:
    """The tilt lambda >= 0 of a target p(x0) exp(lambda r(x0)) (finite)."""
    import math

    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam) \
            or lam < 0:
        raise ValueError(f"search: lambda must be a finite number >= 0, got {lam!r}")
    return float(lam)


@dataclasses.dataclass(frozen=True, eq=False)
class ByIdentity:
    """A callable (a verifier) handed to ``jax.jit`` as a static argument, equal and hashed by
    the callable's identity: the compiled program is reused for as long as the same object is
    passed (a search called again with the same verifier compiles nothing), whatever the
    callable holds (arrays, unhashable fields)."""

    fn: Any

    def __eq__(self, other) -> bool:
        return isinstance(other, ByIdentity) and other.fn is self.fn

    def __hash__(self) -> int:
        return id(self.fn)


def make_grid(schedule, steps: int, grid: str | Grid) -> Grid:
    """The sampling grid (a named kind built for ``schedule``, or a given Grid)."""
    return grid if isinstance(grid, Grid) else sampling_grid(schedule, int(steps), grid)


def repeat_cond(cond: Any, n: int) -> Any:
    """cond with every example repeated n times in a row ((B, ...) -> (B n, ...))."""
    if cond is None:
        return None
    return jax.tree_util.tree_map(lambda c: jnp.repeat(jnp.asarray(c), n, axis=0), cond)


def candidate_indices(indices: Array, n: int) -> Array:
    """(B n,) global indices of n candidates per example: example b's candidate j is
    indices[b] n + j, so n = 1 keeps the examples' own indices (and their noise)."""
    return (jnp.asarray(indices)[:, None] * n + jnp.arange(n)[None, :]).reshape(-1)


def pick_best(x: Array, scores: Array) -> tuple[Array, Array]:
    """x (B, n, ...), scores (B, n) -> the best candidate per example (B, ...) and its score."""
    best = jnp.argmax(scores, axis=1)
    rows = jnp.arange(x.shape[0])
    return x[rows, best], scores[rows, best]

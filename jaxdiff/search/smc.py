"""Sequential Monte Carlo towards a reward-tilted target pi(x0) ∝ p(x0) exp(lambda r(x0)), with
the reward of the x0-prediction as the potential (the SMC baseline of Diffusion Tree Sampling,
Jain et al., arXiv 2506.20701; the potential of twisted diffusion samplers and FK steering).

N particles per example follow the DDIM step (eta > 0: stochastic; eta = 1 is DDPM's ancestral
step) of ``jaxdiff.samplers.ddim``.  At every grid point i the one denoiser evaluation gives
D_i = D(x_i) for both the step and the potential: the log-weight of a particle grows by
lambda (r(D_i) - r(D_{i-1})) (r(D_{-1}) = 0), so the product of the increments is
exp(lambda r(x0)) at the clean end.  When the effective sample size of an example's weights
falls below ``ess_threshold`` N, its particles are resampled multinomially and their weights
reset.  At the end one particle per example is drawn by its weight.

Particle j of example b has the global index indices[b] N + j and draws its initial noise and
step noises from that index as ``samplers.sample`` does; with lambda = 0 nothing is ever
resampled, so one particle (N = 1) is plain DDIM / DDPM sampling of the example.  NFE per
example: N times the sampler's (one evaluation per step; the final step to zero noise returns
the last prediction).
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import ml_collections
import jax.numpy as jnp

from jaxdiff.denoiser import DenoiserBase
from jaxdiff.rng import example_keys, normal_per_example
from jaxdiff.samplers.ddim import ddim_step
from jaxdiff.search.base import (ByIdentity, SearchResult, candidate_indices, check_count,
                                 check_lambda, make_grid, repeat_cond)
from jaxdiff.search.verifiers import Verifier, denoiser_calls, scores_of
from jaxdiff.search.config import check_fields, register_search

Array = jax.Array


def effective_sample_size(logw: Array) -> Array:
    """(B,) ESS = (sum w)^2 / sum w^2 of log-weights (B, N)."""
    w = jax.nn.softmax(logw, axis=1)
    return 1.0 / jnp.sum(w * w, axis=1)


def _reweight(logw, r, r_prev, rkey, lam, ess_threshold):
    """Log-weights grown by lam (r - r_prev); an example whose ESS fell below ess_threshold N
    draws its particles' parents multinomially and resets its weights.  Returns (log-weights,
    parents (B, N))."""
    b, n = logw.shape
    logw = logw + lam * (r - r_prev)
    low = effective_sample_size(logw) < ess_threshold * n                 # (B,)
    parents = jax.random.categorical(rkey, logw[:, None, :], axis=-1, shape=(b, n))
    keep = jnp.broadcast_to(jnp.arange(n)[None], (b, n))
    parents = jnp.where(low[:, None], parents, keep)
    logw = jnp.where(low[:, None], 0.0, logw)
    return logw, parents


def _gather(a, parents):
    """Rows of a (B N, ...) taken from each example's parent particles (B, N)."""
    b, n = parents.shape
    a = a.reshape((b, n) + a.shape[1:])
    a = jnp.take_along_axis(a, parents.reshape((b, n) + (1,) * (a.ndim - 2)), axis=1)
    return a.reshape((b * n,) + a.shape[2:])


@functools.partial(jax.jit, static_argnames=("reward", "particles", "resample"))
def _step(den, g, keys, conds, y, logw, r_prev, i, rkey, lam, eta, ess_threshold, *,
          reward, particles, resample):
    """Grid point i of every example's N particles (y: (B N, ...)): one evaluation D_i for the
    potential and the step, the reweighting (and, when ``resample``, the resampling), then the
    DDIM step.  One program for every call with the same shapes, denoiser structure and
    verifier object (the denoiser's parameters and the grid are arguments, not constants).
    Returns (y at point i + 1, log-weights, rewards (B, N), weighted mean reward, the number of
    non-finite rewards)."""
    b, rest = y.shape[0] // particles, y.shape[1:]
    d = den(g.alpha[i] * y, g.t[i], conds)
    r = scores_of(reward.fn, d, conds)                # traced: the shape is checked here
    bad = jnp.sum(~jnp.isfinite(r))
    r = r.reshape(b, particles)
    logw, parents = _reweight(logw, r, r_prev, rkey, lam, ess_threshold)
    if resample:
        y, d = _gather(y, parents), _gather(d, parents)
        r = _gather(r.reshape(-1), parents).reshape(b, particles)
    w = jax.nn.softmax(logw, axis=1)
    z = normal_per_example(keys, i + 1, rest)
    y = ddim_step(y, d, g.sigma_ve[i], g.sigma_ve[i + 1], eta, z)
    return y, logw, r, jnp.mean(jnp.sum(w * r, axis=1)), bad


def smc(den: DenoiserBase, key: Array, shape: tuple[int, ...], reward: Verifier, *,
        lam: float, particles: int, steps: int = 20, grid: Any = "uniform_t", eta: float = 1.0,
        ess_threshold: float = 0.5, cond: Any = None,
        indices: Array | None = None) -> SearchResult:
    """SMC with ``particles`` per example over a clean-ended grid of ``steps`` DDIM steps.

    Args:
      den, key, shape, cond, indices: as ``samplers.sample``; reward: a verifier r(x0, cond).
      lam: the tilt lambda >= 0; particles: N >= 1; eta in (0, 1]: the DDIM stochasticity.
      ess_threshold: resample an example's particles when ESS < ess_threshold N (in (0, 1]).
    Returns:
      SearchResult(x0 (B, ...), scores = their rewards, nfe = N x steps, trace: per step the
      NFE so far and the batch-mean weighted reward of the x0-predictions).
    """
    n = check_count(particles, "particles")
    lam = check_lambda(lam)
    if not 0.0 < float(eta) <= 1.0:
        raise ValueError(f"search: smc needs a stochastic step, eta in (0, 1], got {eta!r}")
    if not 0.0 < float(ess_threshold) <= 1.0:
        raise ValueError(f"search: ess_threshold must lie in (0, 1], got {ess_threshold!r}")
    g = make_grid(den.schedule, steps, grid)
    if not g.clean_end:
        raise ValueError("search: smc needs a grid that ends at zero noise")
    b, rest = int(shape[0]), tuple(shape[1:])
    idx = jnp.arange(b) if indices is None else jnp.asarray(indices)
    keys = example_keys(key, candidate_indices(idx, n))
    conds = repeat_cond(cond, n)

    y = g.sigma_ve[0] * normal_per_example(keys, 0, rest)
    logw = jnp.zeros((b, n), jnp.float32)
    r_prev = jnp.zeros((b, n), jnp.float32)
    per_step = n * (1 + denoiser_calls(reward))    # the step's evaluation and the potential's
    scalars = (jnp.float32(lam), jnp.float32(eta), jnp.float32(ess_threshold))
    static = dict(reward=ByIdentity(reward), particles=n, resample=lam > 0)
    means, bads = [], []
    for i in range(g.steps):     # dispatched without waiting: the host never blocks a step
        y, logw, r_prev, mean_r, bad = _step(
            den, g, keys, conds, y, logw, r_prev, i, jax.random.fold_in(key, 0x5EC0 + i),
            *scalars, **static)
        means.append(mean_r)
        bads.append(bad)
    bads = [int(v) for v in jax.device_get(bads)]
    if any(bads):
        first = next(v for v in bads if v)
        raise ValueError(f"verifier: {first} of {b * n} scores are not finite")
    trace = [((i + 1) * per_step, float(m)) for i, m in enumerate(jax.device_get(means))]
    # the last step lands on zero noise: y is the last prediction D_{N-1}, whose reward is r_prev
    pick = jax.random.categorical(jax.random.fold_in(key, 0x5EC0 + g.steps), logw, axis=1)
    rows = jnp.arange(b)
    x0 = y.reshape((b, n) + rest)[rows, pick]
    return SearchResult(x0=x0, scores=r_prev[rows, pick], nfe=per_step * g.steps,
                        trace=trace)


@register_search("smc", defaults=lambda: ml_collections.ConfigDict(dict(
    particles=4, lam=1.0, eta=1.0, ess_threshold=0.5)), check=lambda section, config: check_fields(
        section, particles=dict(low=1, integer=True), lam=dict(low=0.0),
        eta=dict(low=0.0, high=1.0, low_open=True),
        ess_threshold=dict(low=0.0, high=1.0, low_open=True)))
def _run(den, key, shape, verifier, sample, section, cond, indices):
    """DDIM steps on ``config.sample``'s steps and grid (its sampler is not used)."""
    return smc(den, key, shape, verifier, lam=float(section.lam),
               particles=int(section.particles), steps=int(sample.steps), grid=sample.grid,
               eta=float(section.eta), ess_threshold=float(section.ess_threshold), cond=cond,
               indices=indices)

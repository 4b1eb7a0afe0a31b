"""The sampling driver shared by every sampler.

All samplers integrate in the scaled coordinates of EDM (Karras et al. 2022, Eq. 4 with
s(t) = alpha(t)):

    y = x / alpha,     sigma_ve = sigma / alpha,     dy/dsigma_ve = (y - D(y)) / sigma_ve

where D is the denoiser's x0 prediction.  In these coordinates DDIM is exactly Euler's method in
sigma_ve (Song et al. 2021 / Karras et al. 2022, Sec. 3), and the data-prediction solvers
(DPM-Solver++, UniPC) are exponential integrators in lambda = -log sigma_ve.  Every sampler is a
``run(ctx, y) -> y0`` function whose whole loop is one ``lax.scan``; ``sample`` puts the grid,
the initial noise and the per-example randomness around it and compiles it once per
(sampler, steps, shape, options).

Randomness per example is ``fold_in(key, global_index)``: example j's initial noise is drawn from
``fold_in(k_j, 0)`` and its step-i noise from ``fold_in(k_j, i + 1)``, so a sample depends on its
index alone, never on the batch it was drawn in.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.denoiser import DenoiserBase, check_cond_batch
from jaxdiff.schedules import Grid, Schedule, grid_from_times, sampling_grid

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class SamplerContext:
    """What a sampler's ``run`` function sees (all arrays traced).

    denoise(y, t, alpha) -> x0_hat: the denoiser on the scaled state y (B, ...), at time t
        (scalar) whose alpha is ``alpha`` (scalar); the state fed to the network is alpha * y.
    grid: the sampling grid (``grid.sigma_ve[-1] == 0``).
    noise(i) -> (B, ...) standard normal noise for step i, per-example deterministic.
    schedule: the noise process (for mapping a new sigma_ve back to t, e.g. EDM churn).
    options: the sampler's keyword options (static Python values or traced scalars).
    """

    denoise: Callable[[Array, Array, Array], Array]
    grid: Grid
    noise: Callable[[Array], Array]
    schedule: Schedule
    options: dict

    def denoise_at(self, y: Array, i: Array) -> Array:
        """D(y) at grid point i."""
        return self.denoise(y, self.grid.t[i], self.grid.alpha[i])

    def denoise_at_sigma(self, y: Array, sigma_ve: Array) -> Array:
        """D(y) at an arbitrary noise level (off the grid)."""
        t = self.schedule.t_from_sigma_ve(sigma_ve)
        return self.denoise(y, t, self.schedule.alpha(t))


@dataclasses.dataclass(frozen=True)
class SamplerSpec:
    """A registered sampler.

    run: ``run(ctx, y_T) -> y_0``.
    nfe: number of denoiser evaluations for a grid of ``steps`` steps.
    stochastic: whether it draws noise after the initial state.
    defaults: default options (merged with the user's).
    """

    name: str
    run: Callable[[SamplerContext, Array], Array]
    nfe: Callable[[int], int]
    stochastic: bool = False
    defaults: tuple[tuple[str, Any], ...] = ()


SAMPLERS: dict[str, SamplerSpec] = {}


def register(name: str, nfe: Callable[[int], int], stochastic: bool = False, **defaults):
    """Decorator registering ``run(ctx, y)`` under ``name``."""

    def deco(run):
        if name in SAMPLERS:
            raise ValueError(f"sampler {name!r} is already registered")
        SAMPLERS[name] = SamplerSpec(name, run, nfe, stochastic, tuple(sorted(defaults.items())))
        return run

    return deco


def get_sampler(name: str) -> SamplerSpec:
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; registered samplers: {sorted(SAMPLERS)}")
    return SAMPLERS[name]


def check_options(name: str, options: dict) -> None:
    """Raises ValueError naming an option ``name`` does not take."""
    spec = get_sampler(name)
    unknown = set(options) - {k for k, _ in spec.defaults}
    if unknown:
        raise ValueError(f"sampler {name!r} has no option(s) {sorted(unknown)}; it takes "
                         f"{[k for k, _ in spec.defaults]}")


def nfe_of(name: str, steps: int) -> int:
    """Denoiser evaluations used by ``name`` with ``steps`` steps."""
    return int(get_sampler(name).nfe(int(steps)))


def steps_for_nfe(name: str, nfe: int) -> int:
    """The largest number of steps whose NFE does not exceed ``nfe`` (at least 1 step)."""
    if not isinstance(nfe, (int, np.integer)) or nfe < 1:
        raise ValueError(f"NFE must be an integer >= 1, got {nfe!r}")
    spec = get_sampler(name)
    steps = 1
    while spec.nfe(steps + 1) <= nfe:
        steps += 1
    return steps


@dataclasses.dataclass(frozen=True)
class SampleOutput:
    """x0: (B, ...) samples; nfe: denoiser evaluations per sample (Python int)."""

    x0: Array
    nfe: int


def example_keys(key: Array, indices: Array) -> Array:
    """Per-example keys fold_in(key, global_index); indices: (B,) int."""
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.asarray(indices, jnp.uint32))


def _normal_per_example(keys: Array, step: Array, shape: tuple[int, ...]) -> Array:
    return jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, step), shape))(keys)


def _run(name: str, options: tuple, denoiser: DenoiserBase, key: Array, indices: Array,
         grid: Grid, cond: Any, shape: tuple[int, ...], x_T: Array | None) -> Array:
    spec = SAMPLERS[name]
    keys = example_keys(key, indices)

    def noise(i):
        return _normal_per_example(keys, i + 1, shape[1:])

    def denoise(y, t, alpha):
        return denoiser(alpha * y, t, cond)

    if x_T is None:
        y = grid.sigma_ve[0] * _normal_per_example(keys, 0, shape[1:])
    else:
        y = x_T / grid.alpha[0]
    ctx = SamplerContext(denoise, grid, noise, denoiser.schedule, dict(options))
    return spec.run(ctx, y)


_run_jit = jax.jit(_run, static_argnames=("name", "options", "shape"))


def sample(denoiser: DenoiserBase, key: Array, shape: tuple[int, ...], *,
           sampler: str = "heun", steps: int = 18, grid: str | Grid | Any = "karras",
           cond: Any = None, indices: Array | None = None, x_T: Array | None = None,
           t_min: float | None = None, t_max: float | None = None, rho: float = 7.0,
           **options) -> SampleOutput:
    """Draws samples by integrating from noise to data with a registered sampler.

    Args:
      denoiser: any Denoiser (possibly guided).
      key: PRNG key; example j uses fold_in(key, indices[j]).
      shape: (B, ...) output shape.
      sampler: registered name (see ``SAMPLERS``).
      steps: solver steps (the grid has steps + 1 points; the last is zero noise).
      grid: a grid kind ('uniform_t', 'uniform_logsnr', 'quadratic', 'karras'), a ``Grid``, or
        explicit decreasing times of shape (steps + 1,).
      cond: condition pytree with leading dimension B (or None).
      indices: (B,) global example indices (default arange(B)).
      x_T: optional initial state at the first grid point (instead of fresh noise).
      t_min, t_max, rho: grid range and Karras rho.
      **options: sampler options, e.g. eta for DDIM, s_churn for stochastic Heun.

    Returns:
      SampleOutput(x0 of shape ``shape``, nfe per sample).
    """
    spec = get_sampler(sampler)
    shape = tuple(int(s) for s in shape)
    if len(shape) < 1 or shape[0] < 1:
        raise ValueError(f"shape must be (B, ...) with B >= 1, got {shape}")
    if isinstance(grid, Grid):
        g = grid
    elif isinstance(grid, str):
        g = sampling_grid(denoiser.schedule, steps, grid, t_min=t_min, t_max=t_max, rho=rho)
    else:
        g = grid_from_times(denoiser.schedule, grid)
    check_cond_batch(cond, shape[0])
    if indices is None:
        indices = jnp.arange(shape[0])
    indices = jnp.asarray(indices)
    if indices.shape != (shape[0],):
        raise ValueError(f"indices must have shape ({shape[0]},), got {indices.shape}")
    if x_T is not None and tuple(x_T.shape) != shape:
        raise ValueError(f"x_T must have shape {shape}, got {tuple(x_T.shape)}")
    unknown = set(options) - {k for k, _ in spec.defaults}
    if unknown:
        raise ValueError(f"sampler {sampler!r} has no option(s) {sorted(unknown)}; it takes "
                         f"{[k for k, _ in spec.defaults]}")
    opts = dict(spec.defaults)
    opts.update(options)
    out = _run_jit(spec.name, tuple(sorted(opts.items())), denoiser, key, indices, g, cond,
                   shape, x_T)
    return SampleOutput(x0=out, nfe=spec.nfe(g.steps))

"""The sampling driver shared by every sampler.

All samplers integrate in the scaled coordinates of EDM (Karras et al. 2022, Eq. 4 with
s(t) = alpha(t)):

    y = x / alpha,     sigma_ve = sigma / alpha,     dy/dsigma_ve = (y - D(y)) / sigma_ve

where D is the denoiser's x0 prediction.  In these coordinates DDIM is exactly Euler's method in
sigma_ve (Song et al. 2021 / Karras et al. 2022, Sec. 3), and the data-prediction solvers
(DPM-Solver++, UniPC) are exponential integrators in lambda = -log sigma_ve.  Every sampler is a
``run(ctx, y) -> y_end`` function whose whole loop is one ``lax.scan``; ``sample`` puts the grid,
the initial state and the per-example randomness around it and compiles it once per (sampler,
grid length and end, shape, structural options); numeric options (eta, s_churn, ...) are traced
arguments, so changing their values reuses the compiled program (``compile_count``).

Partial solves.  A grid may end at a noisy point (``Grid.clean_end = False``, see
``schedules.sampling_grid(t_end=...)`` and ``Grid.split``); the solve then returns the state
there, and a second ``sample`` call continues it from that state.  Samplers that carry
information across steps (the multistep solvers' previous data predictions, heun_sde's noise
cap) return it in ``SampleOutput.carry``, an opaque ``SolverCarry``; passing it back with the
state (``x_start=out.x, carry=out.carry``) continues the very same solve, so the two segments
of ``Grid.split(m)`` reproduce one solve over the whole grid to float32 rounding.  Without a
carry a segment is a fresh start (multistep solvers warm up again from first order).

Randomness per example is ``fold_in(key, global_index)``: example j's initial noise is drawn from
``fold_in(k_j, 0)`` and the noise of step i of a solve from ``fold_in(k_j, step_offset + i + 1)``.
A full solve has step_offset = 0; a continued segment takes its step_offset from the carry (the
steps solved before it), so a split solve draws exactly the noise of the joined one, and a sample
depends on its index alone, never on the batch it was drawn in.

Resampling.  ``sample(..., resample=N)`` repeats every step N times (Lugmayr et al. 2022,
RePaint; Nair et al. 2023, Steered Diffusion's loop): step i from sigma_i to sigma_{i+1}, then,
N - 1 times, re-noise the result back to sigma_i with the forward process and take the step
again.  In the scaled coordinates the forward kernel from sigma_{i+1} to sigma_i is

    y_i = y_{i+1} + sqrt(sigma_i^2 - sigma_{i+1}^2) z,     z ~ N(0, I),

so the re-noised state has the marginal of level i exactly.  It is handled here, once, for every
sampler that carries nothing across steps (``solve`` is None: ddim, ddpm, euler, heun): each step
is that sampler's own ``run`` on the one-step grid [t_i, t_{i+1}].  Pass 0 of step i draws the
step's usual noise; the re-noise after pass r and the step noise of pass r >= 1 come from
fold_in(fold_in(k_j, step_offset + i + 1), 2r + 1) and (.., 2r).  N = 1 is the plain solve
itself (the same program); NFE is N times the sum over the one-step grids.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.denoiser import DenoiserBase, check_cond_batch
from jaxdiff.registry import Registry
from jaxdiff.rng import example_keys, normal_per_example
from jaxdiff.schedules import Grid, Schedule, grid_from_times, sampling_grid

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class SamplerContext:
    """What a sampler's ``run`` function sees (all arrays traced).

    denoise(y, t, alpha) -> x0_hat: the denoiser on the scaled state y (B, ...), at time t
        (scalar) whose alpha is ``alpha`` (scalar); the state fed to the network is alpha * y.
    grid: the sampling grid; ``grid.clean_end`` (static) says whether its last point is zero
        noise (``grid.sigma_ve[-1] == 0``, a full solve) or a real noisy point (a partial solve).
    noise(i) -> (B, ...) standard normal noise for step i of this grid, per-example
        deterministic (drawn from fold_in(k_j, step_offset + i + 1)).
    schedule: the noise process (for mapping a new sigma_ve back to t, e.g. EDM churn).
    options: the sampler's keyword options: structural ones (e.g. an integer order) as static
        Python values, numeric ones (eta, s_churn, ...) as traced float32 scalars.
    history: the sampler's own carry from a previous segment of the same solve (what its
        ``solve`` returned), or None for a fresh start.
    total_steps: steps of the whole solve this grid is a segment of (int or traced int32
        scalar), for rules written in terms of the total, e.g. EDM's gamma = S_churn / N;
        None means ``grid.steps``.
    step_offset: steps of that solve before this grid's first point (int or traced int32).
    state: for a stateful Denoiser, the box holding its state as of the latest ``denoise``
        (None for a pure one).  Samplers never touch it: they write their loops and branches
        with ``ctx.scan``, ``ctx.cond`` and ``ctx.fori_loop``, which carry it through.
    """

    denoise: Callable[[Array, Array, Array], Array]
    grid: Grid
    noise: Callable[[Array], Array]
    schedule: Schedule
    options: dict
    history: Any = None
    total_steps: Any = None
    step_offset: Any = 0
    state: StateBox | None = None

    def scan(self, f: Callable, init: Any, xs: Any) -> tuple[Any, Any]:
        """``jax.lax.scan(f, init, xs)``, also carrying a stateful Denoiser's state through the
        loop; for a pure Denoiser exactly ``lax.scan`` (the same program)."""
        if self.state is None:
            return jax.lax.scan(f, init, xs)
        body = self.state.threaded(f)

        def step(carry_and_state, x):
            (carry, y), state = body(carry_and_state[1], carry_and_state[0], x)
            return (carry, state), y

        (carry, self.state.value), ys = jax.lax.scan(step, (init, self.state.value), xs)
        return carry, ys

    def fori_loop(self, lower: int, upper: int, f: Callable, init: Any) -> Any:
        """``jax.lax.fori_loop`` carrying the Denoiser state, as ``scan``."""
        if self.state is None:
            return jax.lax.fori_loop(lower, upper, f, init)
        body = self.state.threaded(f)
        out, self.state.value = jax.lax.fori_loop(
            lower, upper, lambda i, c: body(c[1], i, c[0]), (init, self.state.value))
        return out

    def cond(self, pred: Array, true_fn: Callable, false_fn: Callable, *operands) -> Any:
        """``jax.lax.cond`` whose branches may evaluate the Denoiser, carrying its state."""
        if self.state is None:
            return jax.lax.cond(pred, true_fn, false_fn, *operands)
        box = self.state
        out, box.value = jax.lax.cond(pred, box.threaded(true_fn), box.threaded(false_fn),
                                      box.value, *operands)
        return out

    def denoise_at(self, y: Array, i: Array) -> Array:
        """D(y) at grid point i."""
        return self.denoise(y, self.grid.t[i], self.grid.alpha[i])

    def denoise_at_sigma(self, y: Array, sigma_ve: Array) -> Array:
        """D(y) at an arbitrary noise level (off the grid)."""
        t = self.schedule.t_from_sigma_ve(sigma_ve)
        return self.denoise(y, t, self.schedule.alpha(t))

    @property
    def steps_in_solve(self) -> Array | int:
        """``total_steps``, defaulting to this grid's steps."""
        return self.grid.steps if self.total_steps is None else self.total_steps


class StateBox:
    """A stateful Denoiser's state while one solve is traced: ``denoise`` reads and replaces
    ``value``; ``threaded(fn)`` turns a loop body or branch into one that takes the state as
    its first argument and returns (result, state), so the state enters and leaves every
    ``lax`` control-flow primitive as an explicit operand (no tracer escapes its trace)."""

    def __init__(self, value: Any):
        self.value = value

    def threaded(self, fn: Callable) -> Callable:
        def wrapped(state, *args):
            outer, self.value = self.value, state
            try:
                out = fn(*args)
                return out, self.value
            finally:
                self.value = outer
        return wrapped


def concrete_number(value: Any) -> float | None:
    """``value`` as a Python float when it is a concrete scalar (Python, NumPy or a jax array
    outside a trace); None when it is traced (its value is unknown until run time)."""
    if isinstance(value, jax.core.Tracer):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


@dataclasses.dataclass(frozen=True)
class SamplerSpec:
    """A registered sampler.

    run: ``run(ctx, y_start) -> y_end``, scaled states (B, ...) at the grid's first and last
        points.
    nfe: denoiser evaluations of a full (fresh, clean-ended) solve of ``steps`` steps.
    stochastic: whether it may draw noise after the initial state.
    defaults: default options, ((name, value), ...).  Options whose default is a Python float
        are numeric and traced (changing them does not recompile); the others (ints, e.g. an
        order) fix the program and stay static.
    check: ``check(options)`` raising a one-line ValueError for bad option values; it sees the
        merged options and checks those that are concrete numbers (traced ones are skipped).
    solve: ``solve(ctx, y_start) -> (y_end, history)`` for samplers that carry information
        across steps (reads ``ctx.history``); None means ``(run(ctx, y), ())``.
    segment_nfe: ``segment_nfe(steps, clean_end, resumed) -> int`` where a partial or continued
        solve costs other than ``nfe(steps)``; None means ``nfe(steps)`` always.
    """

    name: str
    run: Callable[[SamplerContext, Array], Array]
    nfe: Callable[[int], int]
    stochastic: bool = False
    defaults: tuple[tuple[str, Any], ...] = ()
    check: Callable[[dict], None] | None = None
    solve: Callable[[SamplerContext, Array], tuple[Array, Any]] | None = None
    segment_nfe: Callable[[int, bool, bool], int] | None = None

    @property
    def option_names(self) -> list[str]:
        return [k for k, _ in self.defaults]

    @property
    def traced_options(self) -> tuple[str, ...]:
        """Names of the numeric options, passed to the compiled program as float32 scalars."""
        return tuple(k for k, v in self.defaults if isinstance(v, float))

    def count_nfe(self, steps: int, *, clean_end: bool = True, resumed: bool = False) -> int:
        """Denoiser evaluations per sample for a grid of ``steps`` steps; ``resumed``: continued
        from a previous segment's carry."""
        if self.segment_nfe is None:
            return int(self.nfe(int(steps)))
        return int(self.segment_nfe(int(steps), bool(clean_end), bool(resumed)))

    def resolve_options(self, given: Mapping[str, Any]) -> dict:
        """The defaults updated with ``given``, checked: unknown names, non-scalar or NaN numeric
        values, unhashable structural values, then the sampler's own ``check``.  Raises a
        one-line ValueError before anything is compiled."""
        names = self.option_names
        unknown = sorted(set(given) - set(names))
        if unknown:
            raise ValueError(f"sampler {self.name!r} has no option(s) {unknown}; it takes "
                             f"{names}")
        opts = dict(self.defaults)
        opts.update(given)
        for k in names:
            v = opts[k]
            if k in self.traced_options:
                if np.ndim(v) != 0:
                    raise ValueError(f"{self.name}: option {k} must be a scalar, got shape "
                                     f"{np.shape(v)}")
                c = concrete_number(v)
                if c is not None and math.isnan(c):
                    raise ValueError(f"{self.name}: option {k} must be a number, got nan")
            else:
                try:
                    hash(v)
                except TypeError:
                    raise ValueError(f"{self.name}: option {k} fixes the compiled program and "
                                     f"must be a Python value, got {type(v).__name__}") from None
        if self.check is not None:
            self.check(opts)
        return opts


def _options_section(spec: SamplerSpec):
    import ml_collections

    return ml_collections.ConfigDict(dict(spec.defaults))


SAMPLERS = Registry("sampler")
"""Sampler name -> ``SamplerSpec`` (``SAMPLERS.entry(name)`` is the registry Entry: its
``defaults`` make a ConfigDict of the options, its ``check`` is ``SamplerSpec.resolve_options``
and its meta holds nfe and stochastic)."""


def register(name: str, nfe: Callable[[int], int], stochastic: bool = False, *,
             check: Callable[[dict], None] | None = None,
             solve: Callable[[SamplerContext, Array], tuple[Array, Any]] | None = None,
             segment_nfe: Callable[[int, bool, bool], int] | None = None, **defaults):
    """Decorator registering ``run(ctx, y)`` under ``name`` with its default options.

    ``check``, ``solve`` and ``segment_nfe`` are the ``SamplerSpec`` fields of the same names
    (so a sampler cannot have options called that).
    """

    def deco(run):
        spec = SamplerSpec(name, run, nfe, stochastic, tuple(sorted(defaults.items())), check,
                           solve, segment_nfe)
        SAMPLERS.register(name, spec, defaults=functools.partial(_options_section, spec),
                          check=lambda section, **_: spec.resolve_options(dict(section)),
                          nfe=nfe, stochastic=stochastic)
        return run

    return deco


def get_sampler(name: str) -> SamplerSpec:
    """The registered SamplerSpec; an unknown name raises ConfigError (a ValueError)."""
    return SAMPLERS.entry(name).obj


def check_options(name: str, options: Mapping[str, Any]) -> None:
    """Raises a one-line ValueError for an option ``name`` does not take or a bad value of one
    it takes (``SamplerSpec.resolve_options``); traced values are not checked.  The driver
    option ``resample`` (every sampler's; see ``sample``) is checked by ``check_resample``."""
    options = dict(options)
    spec = get_sampler(name)
    if "resample" in options:
        check_resample(spec, options.pop("resample"))
    spec.resolve_options(options)


def lookahead_segment_nfe(n: int, clean_end: bool, resumed: bool) -> int:
    """``segment_nfe`` of samplers that evaluate D at a grid's first point and, in every step,
    at the next point (UniPC's corrector input, EVODiff's probe), carrying that prediction on:
    a clean end's final step evaluates nothing, a noisy end's last step evaluates its end point
    (n + 1), and a segment resumed from a carry skips its first point's evaluation (- 1)."""
    return n + (0 if clean_end else 1) - (1 if resumed else 0)


def nfe_of(name: str, steps: int) -> int:
    """Denoiser evaluations used by ``name`` with ``steps`` steps (a full solve)."""
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
class SolverCarry:
    """What a partial solve hands to the next segment (opaque to callers).

    step: int32 scalar, steps of the solve done so far (the next segment's step_offset).
    total_steps: int32 scalar, steps of the whole solve (EDM's N in heun_sde's churn).
    history: the sampler's own pytree (e.g. previous data predictions, (B, ...) each).
    sampler, shape: static; the carry only continues the same sampler on the same shape.
    denoiser_state: a stateful Denoiser's state after the segment's last evaluation (() for
        a pure one), so the next segment's first evaluation continues it.
    """

    step: Array
    total_steps: Array
    history: Any
    sampler: str
    shape: tuple[int, ...]
    denoiser_state: Any = ()


jax.tree_util.register_dataclass(SolverCarry,
                                 data_fields=["step", "total_steps", "history", "denoiser_state"],
                                 meta_fields=["sampler", "shape"])


@dataclasses.dataclass(frozen=True)
class SampleOutput:
    """The result of ``sample``.

    x: (B, ...) the final state in x-space, alpha(t_last) * y at the grid's last point; with a
      clean end (a full solve) it is the sample.
    nfe: denoiser evaluations per sample (Python int).
    clean_end: whether the grid ended at zero noise.
    carry: None for a clean end; else the SolverCarry that continues this solve
      (``sample(..., x_start=out.x, carry=out.carry)``).
    """

    x: Array
    nfe: int
    clean_end: bool = True
    carry: SolverCarry | None = None

    @property
    def x0(self) -> Array:
        """(B, ...) samples of a full solve (the same array as ``x``)."""
        if not self.clean_end:
            raise ValueError("this solve ended at a noisy point; its state is SampleOutput.x "
                             "(x0 is only defined for a grid that ends at zero noise)")
        return self.x


def check_resample(spec: SamplerSpec, resample: Any) -> int:
    """``resample`` as an int >= 1; N > 1 needs a sampler that carries nothing across steps.
    Raises a one-line ValueError."""
    if isinstance(resample, bool) or not isinstance(resample, (int, np.integer)) \
            or resample < 1:
        raise ValueError(f"resample must be an integer >= 1 (the passes per step), got "
                         f"{resample!r}")
    if resample > 1 and spec.solve is not None:
        ok = sorted(k for k in SAMPLERS if SAMPLERS[k].solve is None)
        raise ValueError(f"resample > 1 repeats single steps; sampler {spec.name!r} carries "
                         f"information across steps (choose one of {ok})")
    return int(resample)


def resampled_nfe(spec: SamplerSpec, steps: int, clean_end: bool, resample: int) -> int:
    """Denoiser evaluations per sample of a solve with ``resample`` passes per step: N times the
    evaluations of the one-step grids the solve is made of."""
    noisy = spec.count_nfe(1, clean_end=False)
    once = (steps - 1) * noisy + spec.count_nfe(1, clean_end=True) if clean_end \
        else steps * noisy
    return int(resample) * int(once)


def _step_grid(grid: Grid, i, clean_end: bool) -> Grid:
    """The one-step grid [t_i, t_{i+1}] of ``grid`` (i may be traced)."""
    cut = functools.partial(jax.lax.dynamic_slice_in_dim, start_index=i, slice_size=2)
    return Grid(cut(grid.t), cut(grid.alpha), cut(grid.sigma_ve), clean_end=clean_end)


def _resampled_solve(spec: SamplerSpec, ctx: SamplerContext, y: Array, keys: Array,
                     example_shape: tuple[int, ...], resample: int) -> Array:
    """The solve of ``ctx.grid`` with every step taken ``resample`` times, re-noising back to
    the step's start in between (see the module docstring).  y: (B, ...) scaled state at grid
    point 0 -> (B, ...) at the last point."""
    g = ctx.grid

    def one_step(i, y, clean_end):
        sub = _step_grid(g, i, clean_end)
        step_keys = jax.vmap(lambda k: jax.random.fold_in(k, ctx.step_offset + i + 1))(keys)

        def take(y, noise):
            sub_ctx = dataclasses.replace(ctx, grid=sub, noise=lambda j: noise(),
                                          history=None, step_offset=ctx.step_offset + i)
            return spec.run(sub_ctx, y)

        def again(r, y_next):
            z = normal_per_example(step_keys, 2 * r - 1, example_shape)
            y_back = y_next + jnp.sqrt(jnp.maximum(sub.sigma_ve[0] ** 2 - sub.sigma_ve[1] ** 2,
                                                   0.0)) * z
            return take(y_back, lambda: normal_per_example(step_keys, 2 * r, example_shape))

        y_next = take(y, lambda: ctx.noise(i))
        return ctx.fori_loop(1, resample, again, y_next)

    steps = g.steps
    noisy_steps = steps - 1 if g.clean_end else steps
    y, _ = ctx.scan(lambda y, i: (one_step(i, y, False), None), y, jnp.arange(noisy_steps))
    if g.clean_end:
        y = one_step(steps - 1, y, True)
    return y


_TRACES = [0]  # programs traced by the sampling driver (see compile_count)


def _run(name: str, static_options: tuple, traced_options: dict, denoiser: DenoiserBase,
         key: Array, indices: Array, grid: Grid, cond: Any, shape: tuple[int, ...],
         x_start: Array | None, carry: SolverCarry | None, step_offset: Array,
         total_steps: Array, resample: int = 1) -> tuple[Array, SolverCarry | None]:
    _TRACES[0] += 1  # runs once per trace, i.e. once per new program
    spec = SAMPLERS[name]
    keys = example_keys(key, indices)
    history = None
    if carry is not None:   # a segment that was not told the total counts at least the steps done
        step_offset, history = carry.step, carry.history
        total_steps = jnp.maximum(carry.total_steps, carry.step + grid.steps)

    def noise(i):
        return normal_per_example(keys, step_offset + i + 1, shape[1:])

    box = None
    if denoiser.stateful:
        box = StateBox(denoiser.init_state(shape) if carry is None else carry.denoiser_state)

    def denoise(y, t, alpha):
        if box is None:
            return denoiser(alpha * y, t, cond)
        x0, box.value = denoiser.x0_step(alpha * y, t, cond, box.value)
        return x0

    if x_start is None:
        y = grid.sigma_ve[0] * normal_per_example(keys, 0, shape[1:])
    else:
        y = x_start / grid.alpha[0]
    options = dict(static_options)
    options.update(traced_options)
    ctx = SamplerContext(denoise, grid, noise, denoiser.schedule, options, history,
                         total_steps, step_offset, box)
    if resample > 1:
        y, history = _resampled_solve(spec, ctx, y, keys, shape[1:], resample), ()
    elif spec.solve is None:
        y, history = spec.run(ctx, y), ()
    else:
        y, history = spec.solve(ctx, y)
    if grid.clean_end:
        return y, None
    return grid.alpha[-1] * y, SolverCarry(step_offset + grid.steps, total_steps, history, name,
                                           shape, () if box is None else box.value)


_run_jit = jax.jit(_run, static_argnames=("name", "static_options", "shape", "resample"))


def compile_count() -> int:
    """How many distinct programs ``sample`` has compiled in this process: one per sampler, grid length and end, shape, structural options, denoiser structure
    and whether a start state / carry is given; never one per value of a numeric option.
    Counted when the driver is traced, which precedes every compilation."""
    return _TRACES[0]


def _build_grid(schedule: Schedule, steps: int, grid: str | Grid | Any, t_min, t_max, rho,
                t_start, t_end) -> Grid:
    if isinstance(grid, Grid) or not isinstance(grid, str):
        if t_start is not None or t_end is not None:
            raise ValueError("t_start / t_end shape a grid of a named kind; an explicit grid "
                             "sets its own ends (see Grid.split, grid_from_times(end='noisy'))")
        g = grid if isinstance(grid, Grid) else grid_from_times(schedule, grid)
    else:
        if t_start is not None and t_max is not None:
            raise ValueError("give t_start or t_max (the same thing: the first grid time), "
                             "not both")
        g = sampling_grid(schedule, steps, grid, t_min=t_min,
                          t_max=t_start if t_start is not None else t_max, rho=rho, t_end=t_end)
    if g.sigma_ve.ndim != 1 or g.sigma_ve.shape[0] < 2:
        raise ValueError(f"a grid needs at least 2 points, got shape {g.sigma_ve.shape}")
    last = concrete_number(g.sigma_ve[-1])
    if last is not None and g.clean_end and last != 0.0:
        raise ValueError(f"Grid.clean_end is True but sigma_ve[-1] = {last}; build a grid "
                         "that ends at a noisy point with clean_end=False")
    if last is not None and not g.clean_end and not last > 0.0:
        raise ValueError(f"Grid.clean_end is False but sigma_ve[-1] = {last}; a noisy end "
                         "needs sigma_ve[-1] > 0")
    return g


def sample(denoiser: DenoiserBase, key: Array, shape: tuple[int, ...], *,
           sampler: str = "heun", steps: int = 18, grid: str | Grid | Any = "karras",
           cond: Any = None, indices: Array | None = None, x_T: Array | None = None,
           t_min: float | None = None, t_max: float | None = None, rho: float = 7.0,
           t_start: float | None = None, t_end: float | None = None,
           x_start: Array | None = None, carry: SolverCarry | None = None,
           step_offset: int | Array | None = None, total_steps: int | Array | None = None,
           resample: int = 1, **options) -> SampleOutput:
    """Integrates the probability-flow ODE / SDE with a registered sampler, from the grid's
    first time to its last: from noise to data (a full solve), or between any two times.

    Args:
      denoiser: any Denoiser (possibly guided).
      key: PRNG key; example j uses fold_in(key, indices[j]).
      shape: (B, ...) output shape.
      sampler: registered name (see ``SAMPLERS``).
      steps: solver steps (ignored when ``grid`` is a Grid or explicit times).
      grid: a grid kind ('uniform_t', 'uniform_logsnr', 'quadratic', 'karras'), a ``Grid``
        (e.g. a segment of ``Grid.split``), or explicit decreasing times of shape (steps + 1,)
        whose last entry is the clean point.
      cond: condition pytree with leading dimension B (or None).
      indices: (B,) global example indices (default arange(B)).
      x_start: (B, ...) state in x-space at the grid's first point (default: fresh noise
        sigma_ve[0] * N(0, I) from fold_in(k_j, 0)).  ``x_T`` is its older name.
      t_min, t_max, rho: range and Karras rho of a named grid (t_max: first time; t_min: last
        noisy time before the final zero-noise step).
      t_start: the first time of a named grid (an alias of t_max).
      t_end: end a named grid at this noisy time, 0 < t_end < t_start, instead of at zero
        noise: ``steps`` steps over steps + 1 noisy points (t_min must be None).  The output is
        then the noisy state ``x`` at t_end with a ``carry`` to continue from.
      carry: a previous segment's ``SampleOutput.carry``: continues that solve (needs
        ``x_start``; the same sampler and shape; sets step_offset, and total_steps to the
        carry's, or to the steps done including this grid's if that is more).
      step_offset: without a carry, the number of steps solved before this grid; step i draws
        its noise from fold_in(k_j, step_offset + i + 1).  Default 0.
      total_steps: steps of the whole solve, for samplers whose rule uses the total (heun_sde's
        gamma = s_churn / N; the lower-order final steps of dpmpp_2m / dpmpp_3m / unipc);
        default step_offset + steps.  Give it to the first segment of a split solve with one
        of those samplers.
      resample: N >= 1 passes per step: after each pass but the last the state is re-noised back
        to the step's start and the step is taken again (RePaint / Steered Diffusion's loop;
        module docstring).  1: the plain solve.  N > 1 needs a sampler without carried
        history (ddim, ddpm, euler, heun); NFE is N times the plain count.  Static.
      **options: sampler options, e.g. eta for DDIM, s_churn for stochastic Heun.  Numeric ones
        are traced: changing their values does not recompile.

    Returns:
      SampleOutput(x of shape ``shape`` in x-space at the last grid point, nfe per sample,
      clean_end, carry).  ``.x0`` is ``x`` for a full solve.
    """
    spec = get_sampler(sampler)
    shape = tuple(int(s) for s in shape)
    if len(shape) < 1 or shape[0] < 1:
        raise ValueError(f"shape must be (B, ...) with B >= 1, got {shape}")
    if x_T is not None and x_start is not None:
        raise ValueError("give x_start or x_T (its older name), not both")
    x_start = x_T if x_start is None else x_start
    g = _build_grid(denoiser.schedule, steps, grid, t_min, t_max, rho, t_start, t_end)
    check_cond_batch(cond, shape[0])
    if indices is None:
        indices = jnp.arange(shape[0])
    indices = jnp.asarray(indices)
    if indices.shape != (shape[0],):
        raise ValueError(f"indices must have shape ({shape[0]},), got {indices.shape}")
    if x_start is not None and tuple(x_start.shape) != shape:
        raise ValueError(f"x_start must have shape {shape}, got {tuple(x_start.shape)}")
    if carry is not None:
        if not isinstance(carry, SolverCarry):
            raise ValueError(f"carry must be a SampleOutput.carry, got {type(carry).__name__}")
        if carry.sampler != spec.name or tuple(carry.shape) != shape:
            raise ValueError(f"carry continues sampler {carry.sampler!r} on shape "
                             f"{carry.shape}, not {spec.name!r} on {shape}")
        if x_start is None:
            raise ValueError("a carry continues a solve from its state: pass x_start=out.x")
        if step_offset is not None or total_steps is not None:
            raise ValueError("a carry sets step_offset and total_steps; give neither with it")
        expected = jax.eval_shape(lambda: denoiser.init_state(shape)) if denoiser.stateful else ()
        if jax.tree.structure(carry.denoiser_state) != jax.tree.structure(expected):
            raise ValueError("carry was made with a denoiser of another kind (stateful or not): "
                             "continue a solve with the denoiser that began it")
    else:
        step_offset = 0 if step_offset is None else step_offset
        off = concrete_number(step_offset)
        if off is not None and not (off >= 0 and off == int(off)):
            raise ValueError(f"step_offset must be an integer >= 0, got {step_offset!r}")
        if total_steps is None:
            total_steps = step_offset + g.steps
        tot = concrete_number(total_steps)
        if tot is not None and off is not None and not (tot == int(tot)
                                                        and tot >= off + g.steps):
            raise ValueError(f"total_steps must be an integer >= step_offset + steps = "
                             f"{int(off) + g.steps}, got {total_steps!r}")
        step_offset = jnp.asarray(step_offset, jnp.int32)
        total_steps = jnp.asarray(total_steps, jnp.int32)
    resample = check_resample(spec, resample)
    opts = spec.resolve_options(options)
    traced = {k: jnp.asarray(opts.pop(k), jnp.float32) for k in spec.traced_options}
    x, carry_out = _run_jit(spec.name, tuple(sorted(opts.items())), traced, denoiser, key,
                            indices, g, cond, shape, x_start, carry, step_offset, total_steps,
                            resample)
    if resample == 1:
        nfe = spec.count_nfe(g.steps, clean_end=g.clean_end, resumed=carry is not None)
    else:
        nfe = resampled_nfe(spec, g.steps, g.clean_end, resample)
    return SampleOutput(x=x, nfe=nfe, clean_end=g.clean_end, carry=carry_out)

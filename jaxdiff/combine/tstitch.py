"""T-Stitch: Accelerating Sampling in Pre-trained Diffusion Models with Trajectory Stitching
(Pan et al., ICLR 2025).

A small denoiser takes the early, noisy part of the sampling trajectory and a large one the
rest: the early steps shape only the coarse layout, which a small model of the same data already
gets right, so the small model's lower cost buys speed at little loss (the paper: DiT-S for the
first 40% of DiT-XL's steps without an FID loss).  Generalised to K denoisers (K - 1 switches).

Routing is per sample by its own time t: with cumulative fractions 0 <= c_1 <= ... <= c_K = 1
of the time axis traversed from t = 1 (u = 1 - t), denoiser k (0-based) handles the samples with
u in [c_{k-1}, c_k) (c_{-1} = 0), and u = 1 (t = 0) goes to the last denoiser whose range is not
empty.  So fractions (0, 1) give the second (large) model everywhere and (1, 1) the first
(small) one everywhere.  ``step_fractions`` turns the paper's "fraction of the sampling steps"
on a given grid into these time fractions.

The fractions are static (a new split compiles a new program), which lets a denoiser whose range
is empty drop out of the program: where one model takes every time, the stitch is that model's
call, bit for bit.  Otherwise every denoiser that at least one sample of the batch needs runs
once on the whole batch (``lax.cond`` skips the others), and each sample takes its own model's
output.  jaxdiff's samplers evaluate a whole batch at one t, so exactly one model runs per call
and the saving is real wall time; a batch whose samples sit at different times runs each needed
model once.  ``cost`` counts evaluations per model and network FLOPs per sample (XLA's cost
analysis).

All denoisers must share the noise schedule and the parameterization (a sampler's grid and
state are in the schedule's coordinates); ``tstitch`` checks both.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.cond import check_cond_batch
from jaxdiff.config import register_section
from jaxdiff.errors import ConfigError, MissingInputError
from jaxdiff.denoiser import DenoiserBase, batch_times
from jaxdiff.samplers.base import get_sampler
from jaxdiff.schedules import Grid

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class TStitch(DenoiserBase):
    """K denoisers stitched along the trajectory (build it with ``tstitch``, which checks).

    Fields:
      denoisers: (K,) tuple, in trajectory order: the first takes the noisiest times.
      fractions: (K,) tuple of cumulative time fractions (Python floats, static), the last 1.
    """

    denoisers: tuple
    fractions: Any

    @property
    def schedule(self):
        return self.denoisers[0].schedule

    def _starts(self) -> list[tuple[int, float]]:
        """(k, c_{k-1}) for the denoisers whose time range is not empty, in order."""
        lo = [0.0, *self.fractions[:-1]]
        return [(k, a) for k, (a, b) in enumerate(zip(lo, self.fractions)) if b > a]

    def route(self, t: Array) -> Array:
        """(B,) int32 index of the denoiser for times t (B,): the last non-empty range whose
        start c_{k-1} is at or below u = 1 - t."""
        u = 1.0 - jnp.asarray(t, jnp.float32)
        starts = self._starts()
        which = jnp.full(u.shape, starts[0][0], jnp.int32)
        for k, a in starts[1:]:
            which = jnp.where(u >= a, k, which)
        return which

    def x0(self, x: Array, t: Array, cond: Any = None) -> Array:
        """x (B, ...), t () or (B,), cond None or a pytree with leading dimension B."""
        check_cond_batch(cond, x.shape[0])
        t = batch_times(t, x)
        active = [k for k, _ in self._starts()]
        if len(active) == 1:
            return self.denoisers[active[0]](x, t, cond)
        which = self.route(t)
        out = jnp.zeros(x.shape, jnp.float32)
        for k in active:
            mask = (which == k).reshape((-1,) + (1,) * (x.ndim - 1))

            def take(out, den=self.denoisers[k], mask=mask):
                return jnp.where(mask, den(x, t, cond).astype(jnp.float32), out)

            out = jax.lax.cond(jnp.any(which == k), take, lambda out: out, out)
        return out


jax.tree_util.register_dataclass(TStitch, data_fields=["denoisers"], meta_fields=["fractions"])


def _parameterization(den: DenoiserBase):
    """The parameterization of ``den`` or of the network it wraps (guidance transforms keep
    theirs in ``inner``); None when it has none (e.g. an analytic denoiser)."""
    while den is not None:
        if hasattr(den, "param"):
            return den.param
        den = getattr(den, "inner", None)
    return None


def check_fractions(fractions: Sequence[float], k: int) -> np.ndarray:
    """Cumulative fractions as a (K,) array: K values in [0, 1], non-decreasing, the last 1."""
    f = np.asarray(fractions, np.float64)
    if f.shape != (k,):
        raise ValueError(f"tstitch: need {k} cumulative fractions (one per denoiser), got "
                         f"shape {f.shape}")
    if not np.all(np.isfinite(f)) or f.min() < 0 or f.max() > 1:
        raise ValueError(f"tstitch: fractions must lie in [0, 1], got {f.tolist()}")
    if np.any(np.diff(f) < 0):
        raise ValueError(f"tstitch: fractions must be non-decreasing (cumulative), got "
                         f"{f.tolist()}")
    if f[-1] != 1.0:
        raise ValueError(f"tstitch: the last cumulative fraction must be 1, got {f[-1]}")
    return f


def tstitch(denoisers: Sequence[DenoiserBase], fractions: Sequence[float]) -> TStitch:
    """A TStitch of ``denoisers`` (trajectory order, noisiest first) switching at cumulative
    time ``fractions``; raises a one-line ValueError for fractions that are not cumulative
    fractions ending at 1, or for denoisers whose schedules or parameterizations differ."""
    denoisers = tuple(denoisers)
    if len(denoisers) < 1:
        raise ValueError("tstitch: needs at least one denoiser")
    f = check_fractions(fractions, len(denoisers))
    first = denoisers[0]
    for k, den in enumerate(denoisers[1:], start=1):
        if den.schedule != first.schedule:
            raise ValueError(f"tstitch: denoiser {k}'s schedule {den.schedule!r} differs from "
                             f"denoiser 0's {first.schedule!r}")
        if _parameterization(den) != _parameterization(first):
            raise ValueError(f"tstitch: denoiser {k}'s parameterization "
                             f"{_parameterization(den)!r} differs from denoiser 0's "
                             f"{_parameterization(first)!r}")
    return TStitch(denoisers, tuple(float(c) for c in f))


def step_fractions(grid: Grid, fractions: Sequence[float]) -> np.ndarray:
    """Time fractions that give denoiser k the grid's steps up to round(c_k N) (the paper's
    fraction of the sampling steps), for samplers that evaluate at the grid's points.

    grid: the sampling grid (N steps); fractions: (K,) cumulative step fractions ending at 1.
    Each boundary is placed halfway between the times of the last point of one part and the
    first of the next, so routing by t at the grid's points is exact."""
    f = check_fractions(fractions, len(fractions))
    t = np.asarray(grid.t, np.float64)
    n = grid.steps
    out = []
    for c in f:
        m = int(round(c * n))
        out.append(0.0 if m == 0 else 1.0 if m >= n else 1.0 - 0.5 * (t[m - 1] + t[m]))
    return np.asarray(out)


def evaluation_times(sampler: str, grid: Grid) -> np.ndarray:
    """The times at which ``sampler`` evaluates the denoiser over a clean-ended ``grid``: the
    points 0..N-1 for the one-evaluation-per-step samplers, and for heun / heun_sde also the
    step ends 1..N-1 (their corrections).  Other samplers raise a ValueError."""
    spec = get_sampler(sampler)
    n = grid.steps
    t = np.asarray(grid.t)
    per_step = int(spec.nfe(n))
    if per_step == n:
        return t[:n]
    if per_step == 2 * n - 1:
        return np.concatenate([t[:n], t[1:n]])
    raise ValueError(f"tstitch: no evaluation-time rule for sampler {sampler!r} "
                     f"({per_step} evaluations for {n} steps)")


def network_flops(den: DenoiserBase, x: Array, t: float = 0.5, cond: Any = None) -> float:
    """FLOPs of one evaluation of ``den`` per sample, from XLA's cost analysis of its compiled
    call on ``x`` (B, ...) (and ``cond``), divided by B."""
    compiled = jax.jit(lambda x, cond: den(x, jnp.float32(t), cond)).lower(x, cond).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", 0.0)) / x.shape[0]


def cost(stitch: TStitch, times: np.ndarray, x: Array, cond: Any = None) -> dict:
    """Evaluations per sample by denoiser at ``times`` (e.g. ``evaluation_times``), and network
    FLOPs per sample: {"nfe": [n_k], "flops_per_eval": [F_k], "flops": sum_k n_k F_k}.
    x: (B, ...) an example batch for the cost analysis (with ``cond``)."""
    which = np.asarray(stitch.route(jnp.asarray(times, jnp.float32)))
    nfe = [int(np.sum(which == k)) for k in range(len(stitch.denoisers))]
    flops = [network_flops(d, x, cond=cond) for d in stitch.denoisers]
    return {"nfe": nfe, "flops_per_eval": flops,
            "flops": float(sum(n * f for n, f in zip(nfe, flops)))}


# ------------------------------------------------------------------------------------------------
# the config section: stitch the run's model after smaller trained models
# ------------------------------------------------------------------------------------------------

def _defaults():
    import ml_collections

    # workdirs: trained models for the noisy start of the trajectory, noisiest first (empty: no
    # stitching); fractions: the cumulative fraction of the sampling steps each of them takes
    # (the run's own model takes the rest), e.g. workdirs=('runs/small',), fractions=(0.4,)
    return ml_collections.ConfigDict(dict(workdirs=(), fractions=()))


def _check(section, config, **_) -> None:

    workdirs, fractions = tuple(section.workdirs), tuple(section.fractions)
    for i, w in enumerate(workdirs):
        if not isinstance(w, str) or not w:
            raise ConfigError(f"config.stitch.workdirs[{i}]: must be a workdir path, got {w!r}")
    if len(fractions) != len(workdirs):
        raise ConfigError(f"config.stitch.fractions: give one cumulative step fraction per "
                          f"workdir ({len(workdirs)}), got {list(fractions)}")
    try:
        check_fractions((*fractions, 1.0), len(fractions) + 1)
    except ValueError as e:
        raise ConfigError(f"config.stitch.fractions: {str(e).removeprefix('tstitch: ')}") \
            from None


def time_fractions(schedule, sample_cfg, fractions: Sequence[float]) -> np.ndarray:
    """Cumulative time fractions (K,) for step fractions ``fractions`` (K - 1,) of the grid
    that ``sample_cfg`` (steps, grid) samples on."""
    from jaxdiff.schedules import config_sampling_grid

    return step_fractions(config_sampling_grid(schedule, sample_cfg), (*fractions, 1.0))


def evaluations_per_model(schedule, sample_cfg, fractions: Sequence[float]) -> list[int] | None:
    """Denoiser evaluations per sample by model (K,) when ``sample_cfg``'s sampler stitches
    the models at step fractions ``fractions``; None for a sampler without an evaluation-time
    rule (see ``evaluation_times``)."""
    from jaxdiff.schedules import config_sampling_grid

    grid = config_sampling_grid(schedule, sample_cfg)
    try:
        times = evaluation_times(str(sample_cfg.sampler), grid)
    except ValueError:
        return None
    tf = step_fractions(grid, (*fractions, 1.0))
    which = np.asarray(TStitch(tuple(range(len(tf))), tuple(float(c) for c in tf))
                       .route(jnp.asarray(times, jnp.float32)))
    return [int(np.sum(which == k)) for k in range(len(tf))]


def check_workdirs(config) -> None:
    """Raises MissingInputError naming ``config.stitch.workdirs`` when a model it names has no
    checkpoints (the sampling job's preflight: before anything is restored or written)."""

    section = config.get("stitch")
    for i, w in enumerate(tuple(section.workdirs) if section is not None else ()):
        if not os.path.isdir(os.path.join(w, "checkpoints")):
            raise MissingInputError(f"config.stitch.workdirs[{i}]: no checkpoint directory "
                                    f"{os.path.join(w, 'checkpoints')}: train that model first "
                                    f"(--mode=train with --workdir={w})")


def stitch_from_config(den: DenoiserBase, spec) -> DenoiserBase:
    """``den`` (the run's model) after the models of ``spec.config.stitch`` (restored from their
    workdirs' latest checkpoints, EMA ``sample.ema_index``); ``den`` itself when the section
    names none.  Raises ConfigError naming the field for a model whose schedule or
    parameterization differs from the run's."""
    from jaxdiff.jobs.spec import load_other_denoiser

    section = spec.config.stitch
    if not section.workdirs:
        return den
    firsts = []
    for i, w in enumerate(section.workdirs):
        first = load_other_denoiser(spec, w, None, "stitch.workdirs")
        for what, theirs, ours in (("schedule", first.schedule, den.schedule),
                                   ("parameterization", _parameterization(first),
                                    _parameterization(den))):
            if theirs != ours:
                raise ConfigError(f"config.stitch.workdirs[{i}]: the model in {w} has the "
                                  f"{what} {theirs!r}, the run's model {ours!r}; stitched "
                                  f"models must share both")
        firsts.append(first)
    tf = time_fractions(den.schedule, spec.config.sample, tuple(section.fractions))
    return tstitch([*firsts, den], tf)


register_section("stitch", defaults=_defaults, check=_check)

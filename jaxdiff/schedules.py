"""Noise processes as data.

Every schedule describes the forward process ``x_t = alpha(t) x0 + sigma(t) eps`` for continuous
time ``t`` in [0, 1] (t = 0 is data, t = 1 is the noisiest point), with

    logsnr(t) = log(alpha(t)^2 / sigma(t)^2)

and its inverse ``t_from_logsnr``.  Schedules are frozen dataclasses: hashable, so they can be
static arguments of ``jax.jit`` and live in the static part of a pytree.

All samplers work with the "VE-equivalent" noise level ``sigma_ve = sigma / alpha =
exp(-logsnr / 2)`` and the scaled state ``x / alpha`` (Karras et al. 2022, "Elucidating the Design
Space of Diffusion-Based Generative Models" (EDM), Sec. 3 / Eq. 4 with s(t) = alpha(t)); so a
schedule only has to provide alpha, sigma and the logsnr inverse.

Schedules:
  * ``VPLinear``  DDPM's linear betas (Ho et al. 2020): beta_n from 1e-4 to 0.02 over T = 1000
    steps; alpha_bar_n = prod_{i<=n} (1 - beta_i) exactly on the discrete grid t_n = n / T,
    log alpha_bar linearly interpolated between grid points.
  * ``VPCosine``  Nichol & Dhariwal 2021, Eq. 17: alpha_bar(t) = f(t)/f(0),
    f(t) = cos((t + s)/(1 + s) * pi/2)^2, clipped so that logsnr >= ``logsnr_min``.
  * ``VE``        Song et al. 2021 (score SDE): alpha = 1, sigma = sigma_min (sigma_max/sigma_min)^t.
  * ``EDM``       Karras et al. 2022, Eq. 5: alpha = 1,
    sigma(t) = (sigma_min^(1/rho) + t (sigma_max^(1/rho) - sigma_min^(1/rho)))^rho, so a uniform
    grid in t *is* the Karras rho-grid.
  * ``RectifiedFlow``  Liu et al. 2023 / Lipman et al. 2023: alpha = 1 - t, sigma = t.

Samplers never evaluate a denoiser at ``t = 0``: a sampling grid either ends with an explicit
zero-noise point (a full solve, the default) or at a real noisy point ``t_end > 0`` (a partial
solve, ``Grid.clean_end = False``); see ``sampling_grid``, ``grid_from_times`` and ``Grid.split``.
"""
from __future__ import annotations

import dataclasses
import math
import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.registry import Registry

Array = jax.Array


class Schedule:
    """Base class. Subclasses implement ``alpha``, ``sigma`` and may override the inverse.

    Attributes (class or dataclass fields):
      t_min, t_max: the range of t used by default for training and sampling grids.
    """

    t_min: float = 0.0
    t_max: float = 1.0
    name: str = "schedule"

    # --- the process -------------------------------------------------------------------------
    def alpha(self, t: Array) -> Array:
        raise NotImplementedError

    def sigma(self, t: Array) -> Array:
        raise NotImplementedError

    def alpha_sigma(self, t: Array) -> tuple[Array, Array]:
        return self.alpha(t), self.sigma(t)

    def logsnr(self, t: Array) -> Array:
        a, s = self.alpha(t), self.sigma(t)
        return 2.0 * (jnp.log(a) - jnp.log(s))

    def sigma_ve(self, t: Array) -> Array:
        """sigma / alpha = exp(-logsnr / 2): the noise level of the scaled state x / alpha."""
        return jnp.exp(-0.5 * self.logsnr(t))

    def t_from_logsnr(self, logsnr: Array) -> Array:
        """Inverse of ``logsnr`` on [t_min, t_max] (logsnr is strictly decreasing in t).

        Generic fallback: 64 bisection steps (to float precision), jittable.
        """
        logsnr = jnp.asarray(logsnr, jnp.float32)
        lo = jnp.full_like(logsnr, 0.0)
        hi = jnp.full_like(logsnr, 1.0)

        def body(_, lohi):
            lo, hi = lohi
            mid = 0.5 * (lo + hi)
            too_noisy = self.logsnr(mid) < logsnr  # mid is past the target: move hi down
            return jnp.where(too_noisy, lo, mid), jnp.where(too_noisy, mid, hi)

        lo, hi = jax.lax.fori_loop(0, 64, body, (lo, hi))
        return 0.5 * (lo + hi)

    def t_from_sigma_ve(self, sigma_ve: Array) -> Array:
        return self.t_from_logsnr(-2.0 * jnp.log(sigma_ve))

    # --- helpers -----------------------------------------------------------------------------
    @property
    def logsnr_range(self) -> tuple[float, float]:
        """(logsnr at t_max, logsnr at t_min) as Python floats."""
        return (float(self.logsnr(jnp.float32(self.t_max))),
                float(self.logsnr(jnp.float32(self.t_min))))


def _check_positive(name: str, **values: float) -> None:
    for key, v in values.items():
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise ValueError(f"{name}: {key} must be a positive finite number, got {v!r}")


def diffuse(schedule: Schedule, x0: Array, t: Array, eps: Array) -> Array:
    """The forward process x_t = alpha(t) x0 + sigma(t) eps.

    x0, eps: (B, ...); t: () or (B,) times in [0, 1]. Returns (B, ...) in x0's dtype.
    """
    t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (x0.shape[0],))
    alpha, sigma = schedule.alpha_sigma(t)
    shape = (-1,) + (1,) * (x0.ndim - 1)
    return (alpha.reshape(shape) * x0 + sigma.reshape(shape) * eps).astype(x0.dtype)


@dataclasses.dataclass(frozen=True)
class VPLinear(Schedule):
    """DDPM linear-beta schedule with its exact discrete alpha-bar (Ho et al. 2020, Sec. 4).

    alpha_bar(n / T) = prod_{i=1..n} (1 - beta_i), beta_i = linspace(beta_start, beta_end, T)_i.
    Between grid points log alpha_bar is linear in t, so the process is defined for all t.
    t_min = 1 / T is DDPM's first step (the least noisy state the network is trained on).
    """

    beta_start: float = 1e-4
    beta_end: float = 0.02
    num_steps: int = 1000
    name: str = "vp_linear"

    def __post_init__(self):
        _check_positive("VPLinear", beta_start=self.beta_start, beta_end=self.beta_end)
        if not (0 < self.beta_start <= self.beta_end < 1):
            raise ValueError("VPLinear: need 0 < beta_start <= beta_end < 1")
        if int(self.num_steps) < 1:
            raise ValueError("VPLinear: num_steps must be >= 1")

    @property
    def t_min(self) -> float:  # type: ignore[override]
        return 1.0 / self.num_steps

    def betas(self) -> np.ndarray:
        return np.linspace(self.beta_start, self.beta_end, self.num_steps, dtype=np.float64)

    def discrete_alpha_bar(self) -> np.ndarray:
        """alpha_bar_n for n = 1..T, float64, shape (T,)."""
        return np.cumprod(1.0 - self.betas())

    def _log_alpha_bar_table(self) -> np.ndarray:
        # index n = 0..T, log alpha_bar_0 = 0
        return np.concatenate([[0.0], np.log(self.discrete_alpha_bar())]).astype(np.float32)

    def log_alpha_bar(self, t: Array) -> Array:
        table = jnp.asarray(self._log_alpha_bar_table())
        pos = jnp.clip(jnp.asarray(t, jnp.float32), 0.0, 1.0) * self.num_steps
        return jnp.interp(pos, jnp.arange(self.num_steps + 1, dtype=jnp.float32), table)

    def alpha(self, t):
        return jnp.exp(0.5 * self.log_alpha_bar(t))

    def sigma(self, t):
        return jnp.sqrt(-jnp.expm1(self.log_alpha_bar(t)))

    def logsnr(self, t):
        lab = self.log_alpha_bar(t)
        return lab - jnp.log(-jnp.expm1(lab))


@dataclasses.dataclass(frozen=True)
class VPCosine(Schedule):
    """Cosine schedule (Nichol & Dhariwal 2021, Eq. 17), VP: alpha^2 + sigma^2 = 1.

    alpha_bar(t) = f(t) / f(0), f(t) = cos(phi(t))^2, phi(t) = (t + s)/(1 + s) pi/2.
    alpha_bar(1) = 0, so ``t_max`` is where logsnr reaches ``logsnr_min`` (alpha stays > 0).
    """

    s: float = 0.008
    logsnr_min: float = -15.0
    t_min: float = 1e-3
    name: str = "vp_cosine"

    @property
    def _f0(self) -> float:
        return math.cos(self.s / (1.0 + self.s) * math.pi / 2) ** 2

    @property
    def t_max(self) -> float:  # type: ignore[override]
        abar = 1.0 / (1.0 + math.exp(-self.logsnr_min))  # plain Python: usable under jit
        phi = math.acos(math.sqrt(abar * self._f0))
        return phi * (1.0 + self.s) * 2.0 / math.pi - self.s

    def _log_alpha_bar(self, t):
        phi = (jnp.asarray(t, jnp.float32) + self.s) / (1.0 + self.s) * (jnp.pi / 2)
        lab = 2.0 * jnp.log(jnp.maximum(jnp.cos(phi), 1e-30)) - math.log(self._f0)
        return jnp.minimum(lab, -1e-12)

    def logsnr(self, t):
        lab = self._log_alpha_bar(t)
        return lab - jnp.log(-jnp.expm1(lab))

    def alpha(self, t):
        return jnp.exp(0.5 * self._log_alpha_bar(t))

    def sigma(self, t):
        return jnp.sqrt(-jnp.expm1(self._log_alpha_bar(t)))

    def t_from_logsnr(self, logsnr):
        abar = jax.nn.sigmoid(jnp.asarray(logsnr, jnp.float32))
        phi = jnp.arccos(jnp.sqrt(jnp.clip(abar * self._f0, 0.0, 1.0)))
        return phi * (1.0 + self.s) * 2.0 / jnp.pi - self.s


@dataclasses.dataclass(frozen=True)
class VE(Schedule):
    """Variance-exploding schedule (Song et al. 2021): alpha = 1, geometric sigma."""

    sigma_min: float = 0.01
    sigma_max: float = 50.0
    name: str = "ve"

    def __post_init__(self):
        _check_positive("VE", sigma_min=self.sigma_min, sigma_max=self.sigma_max)
        if self.sigma_min >= self.sigma_max:
            raise ValueError("VE: sigma_min must be < sigma_max")

    def alpha(self, t):
        return jnp.ones_like(jnp.asarray(t, jnp.float32))

    def sigma(self, t):
        t = jnp.asarray(t, jnp.float32)
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def logsnr(self, t):
        return -2.0 * jnp.log(self.sigma(t))

    def t_from_logsnr(self, logsnr):
        sig = jnp.exp(-0.5 * jnp.asarray(logsnr, jnp.float32))
        return jnp.log(sig / self.sigma_min) / math.log(self.sigma_max / self.sigma_min)


@dataclasses.dataclass(frozen=True)
class EDM(Schedule):
    """EDM noise levels (Karras et al. 2022, Eq. 5 and Table 1): alpha = 1 and

        sigma(t) = (sigma_min^(1/rho) + t (sigma_max^(1/rho) - sigma_min^(1/rho)))^rho,

    so uniform steps in t reproduce the paper's rho = 7 time discretisation.
    """

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    name: str = "edm"

    def __post_init__(self):
        _check_positive("EDM", sigma_min=self.sigma_min, sigma_max=self.sigma_max, rho=self.rho)
        if self.sigma_min >= self.sigma_max:
            raise ValueError("EDM: sigma_min must be < sigma_max")

    def alpha(self, t):
        return jnp.ones_like(jnp.asarray(t, jnp.float32))

    def sigma(self, t):
        t = jnp.asarray(t, jnp.float32)
        lo, hi = self.sigma_min ** (1 / self.rho), self.sigma_max ** (1 / self.rho)
        return (lo + t * (hi - lo)) ** self.rho

    def logsnr(self, t):
        return -2.0 * jnp.log(self.sigma(t))

    def t_from_logsnr(self, logsnr):
        sig = jnp.exp(-0.5 * jnp.asarray(logsnr, jnp.float32))
        lo, hi = self.sigma_min ** (1 / self.rho), self.sigma_max ** (1 / self.rho)
        return (sig ** (1 / self.rho) - lo) / (hi - lo)


@dataclasses.dataclass(frozen=True)
class RectifiedFlow(Schedule):
    """Linear interpolation path alpha = 1 - t, sigma = t (Liu et al. 2023; Lipman et al. 2023).

    t_max defaults to 1 - 1e-3 so that alpha > 0 on every grid (x / alpha stays finite).
    """

    t_min: float = 1e-3
    t_max: float = 1.0 - 1e-3
    name: str = "rectified_flow"

    def alpha(self, t):
        return 1.0 - jnp.asarray(t, jnp.float32)

    def sigma(self, t):
        return jnp.asarray(t, jnp.float32)

    def t_from_logsnr(self, logsnr):
        # sigma/alpha = t/(1-t) = exp(-logsnr/2)  =>  t = sigmoid(-logsnr/2)
        return jax.nn.sigmoid(-0.5 * jnp.asarray(logsnr, jnp.float32))


SCHEDULES = Registry("schedule")
for _cls in (VPLinear, VPCosine, VE, EDM, RectifiedFlow):
    SCHEDULES.register(_cls.name, _cls)


def get_schedule(name: str, **kwargs) -> Schedule:
    """Builds a schedule by registry name, e.g. ``get_schedule('edm', sigma_max=80.)``."""
    return SCHEDULES.entry(name).obj(**kwargs)


# ------------------------------------------------------------------------------------------------
# Sampling grids
# ------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Grid:
    """A decreasing sampling grid of ``steps + 1`` points.

    Arrays (float32, shape (steps + 1,)):
      t:        times fed to the denoiser (with a clean end, t[-1] is never evaluated).
      alpha:    alpha(t); with a clean end alpha[-1] = 1.
      sigma_ve: sigma(t) / alpha(t) (dimensionless noise level of x / alpha); strictly decreasing.
    Static:
      clean_end: True (default): the last point is zero noise, sigma_ve[-1] = 0 exactly, and a
        solve over the grid ends with a sample of the data.  False: the last point is a real
        noisy point, sigma_ve[-1] > 0 (log-SNR finite), and a solve ends with a noisy state
        there (a partial solve; continue it on a grid that starts at t[-1]).
    """

    t: Array
    alpha: Array
    sigma_ve: Array
    clean_end: bool = True

    @property
    def steps(self) -> int:
        return int(self.t.shape[0]) - 1

    def split(self, m: int) -> tuple["Grid", "Grid"]:
        """The grid cut at point m into two segments that share that point.

        Returns (points 0..m, ending noisy at t[m]; points m..steps, with this grid's end), of
        m and steps - m steps.  The arrays are slices of this grid's, so solving the segments
        one after the other visits exactly the noise levels of one solve over this grid.
        """
        if not isinstance(m, (int, np.integer)) or not 1 <= m < self.steps:
            raise ValueError(f"Grid.split: need an integer 1 <= m < steps = {self.steps}, "
                             f"got {m!r}")
        m = int(m)
        first = Grid(self.t[:m + 1], self.alpha[:m + 1], self.sigma_ve[:m + 1], clean_end=False)
        second = Grid(self.t[m:], self.alpha[m:], self.sigma_ve[m:], clean_end=self.clean_end)
        return first, second


jax.tree_util.register_dataclass(Grid, data_fields=["t", "alpha", "sigma_ve"],
                                 meta_fields=["clean_end"])

GRID_KINDS = ("uniform_t", "uniform_logsnr", "quadratic", "karras", "uniform_t_to_zero")
CLEAN_END_ONLY = ("uniform_t_to_zero",)  # kinds that fix their own end: no t_min, no t_end


def sampling_grid(schedule: Schedule, steps: int, kind: str = "uniform_t", *,
                  t_min: float | None = None, t_max: float | None = None,
                  rho: float = 7.0, t_end: float | None = None) -> Grid:
    """Builds a sampling grid from ``t_max`` down to ``t_min``, then one final step to zero noise;
    or, with ``t_end``, from ``t_max`` down to the noisy time ``t_end`` (a partial solve).

    Kinds (u runs over [0, 1] from the first to the last noisy point):
      uniform_t:       t linear in u (DDIM's "uniform" spacing).
      uniform_logsnr:  logsnr linear in u (DPM-Solver's recommended spacing for pixel models).
      quadratic:       t = t_lo + (t_hi - t_lo) (1 - u)^2 (DDIM's "quad" spacing).
      karras:          sigma_ve^(1/rho) linear in u (EDM, Eq. 5), mapped back to t.
      uniform_t_to_zero: t_k = t_max (1 - k / steps), k = 0 .. steps: equal steps in t all the
                       way to the clean point (t_min is t_max / steps; no t_min or t_end).
                       Nested: the grid of 2N steps holds every point of the grid of N steps
                       (progressive distillation, Salimans & Ho 2022).

    ``steps`` is the number of solver steps.  Without ``t_end`` the grid has ``steps`` noisy
    points, t_max ... t_min, followed by the clean point (steps = 1 gives [t_max, clean]).  With
    ``t_end`` (0 < t_end < t_max; ``t_min`` must then be None) it has ``steps + 1`` noisy points
    t_max ... t_end and ``clean_end = False``.  To cut one solve into segments that reproduce it
    exactly, build the whole grid and use ``Grid.split``.
    """
    if not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"number of steps (NFE) must be an integer >= 1, got {steps!r}")
    if kind not in GRID_KINDS:
        raise ValueError(f"unknown grid kind {kind!r}; choose one of {GRID_KINDS}")
    t_hi = schedule.t_max if t_max is None else float(t_max)
    if kind == "uniform_t_to_zero":
        if t_min is not None or t_end is not None:  # CLEAN_END_ONLY
            raise ValueError("grid kind 'uniform_t_to_zero' ends at t = 0: it takes no t_min "
                             "or t_end")
        if not 0.0 < t_hi <= 1.0:
            raise ValueError(f"grid needs 0 < t_max <= 1, got t_max={t_hi}")
        t = t_hi * (1.0 - np.arange(int(steps)) / int(steps))
        return grid_from_times(schedule, jnp.asarray(np.append(t, 0.0), jnp.float32))
    if t_end is not None:
        if t_min is not None:
            raise ValueError("a grid ending at a noisy t_end takes no t_min (t_end is its last "
                             "point)")
        t_lo = float(t_end)
        if not 0.0 < t_lo < t_hi <= 1.0:
            raise ValueError(f"grid needs 0 < t_end < t_max <= 1, got t_end={t_lo}, "
                             f"t_max={t_hi}")
        n = int(steps) + 1       # noisy points
    else:
        t_lo = schedule.t_min if t_min is None else float(t_min)
        if not 0.0 <= t_lo < t_hi <= 1.0:
            raise ValueError(f"grid needs 0 <= t_min < t_max <= 1, got t_min={t_lo}, "
                             f"t_max={t_hi}")
        n = int(steps)
    u = np.linspace(0.0, 1.0, n) if n > 1 else np.zeros(1)  # 0 at t_hi, 1 at t_lo
    if kind == "uniform_t":
        t = t_hi + (t_lo - t_hi) * u
    elif kind == "quadratic":
        t = t_lo + (t_hi - t_lo) * (1.0 - u) ** 2
    else:
        l_hi = float(schedule.logsnr(jnp.float32(t_lo)))
        l_lo = float(schedule.logsnr(jnp.float32(t_hi)))
        if kind == "uniform_logsnr":
            lam = l_lo + (l_hi - l_lo) * u
        else:  # karras
            s_max, s_min = math.exp(-l_lo / 2), math.exp(-l_hi / 2)
            sig = (s_max ** (1 / rho) + u * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
            lam = -2.0 * np.log(sig)
        t = np.asarray(schedule.t_from_logsnr(jnp.asarray(lam, jnp.float32)), np.float64)
        t[0], t[-1] = t_hi, (t_lo if n > 1 else t_hi)
    if t_end is not None:
        return grid_from_times(schedule, jnp.asarray(t, jnp.float32), end="noisy")
    t = jnp.asarray(np.append(t, 0.0), jnp.float32)
    return grid_from_times(schedule, t)


def config_sampling_grid(schedule: Schedule, sample_cfg) -> Grid:
    """The grid a ``config.sample`` section (its ``steps`` and ``grid`` kind) samples on."""
    return sampling_grid(schedule, int(sample_cfg.steps), str(sample_cfg.grid))


def grid_from_times(schedule: Schedule, t, end: str = "clean") -> Grid:
    """A grid from explicit times t of shape (steps + 1,), strictly decreasing.

    end = 'clean' (default): the last entry is taken as the clean point and mapped to alpha = 1,
    sigma_ve = 0.  end = 'noisy': every entry is a real noisy time (t[-1] > 0), the grid has
    ``clean_end = False`` and a solve over it stops at t[-1].  Raises ValueError if the times or
    their noise levels are not strictly decreasing.
    """
    if end not in ("clean", "noisy"):
        raise ValueError(f"grid end must be 'clean' or 'noisy', got {end!r}")
    t_np = np.asarray(t, np.float64)
    if t_np.ndim != 1 or t_np.shape[0] < 2:
        raise ValueError(f"a time grid needs shape (steps + 1,) with at least 2 points, "
                         f"got shape {t_np.shape}")
    clean = end == "clean"
    noisy_part = t_np[:-1] if clean else t_np
    if not (np.all(np.diff(noisy_part) < 0) and t_np[-1] <= t_np[-2]):
        raise ValueError(f"time grid must be strictly decreasing (noisy to clean), got {t_np}")
    if not clean and not t_np[-1] > 0:
        raise ValueError(f"a grid with a noisy end needs t[-1] > 0, got {t_np[-1]}")
    t = jnp.asarray(t_np, jnp.float32)
    alpha = schedule.alpha(t)
    sigma_ve = schedule.sigma_ve(t)
    if clean:
        alpha, sigma_ve = alpha.at[-1].set(1.0), sigma_ve.at[-1].set(0.0)
    sig = np.asarray(sigma_ve)
    if not (np.all(np.diff(sig) < 0) and np.all(np.isfinite(sig)) and np.all(sig >= 0)
            and (clean or sig[-1] > 0)):
        raise ValueError("time grid maps to noise levels that are not strictly decreasing; "
                         "it probably extends outside the schedule's valid range "
                         f"[{schedule.t_min}, {schedule.t_max}]")
    return Grid(t=t, alpha=alpha, sigma_ve=sigma_ve, clean_end=clean)

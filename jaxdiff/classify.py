"""Diffusion Classifier: zero-shot classification with a conditional denoiser.

Li, Prabhudesai, Duggal, Brown & Pathak, "Your Diffusion Model is Secretly a Zero-Shot
Classifier", ICCV 2023 (Sec. 3.1-3.2, Algorithm 1).  For an input x0 and candidate conditions
c_1..c_K, draw ONE bank of (t_i, eps_i), i = 1..n, shared by every candidate (the paper's key
variance reduction, Sec. 3.2), and score each candidate by its weighted noise-prediction error

    S_j = (1/n) sum_i w(t_i) || eps_i - eps_theta(alpha(t_i) x0 + sigma(t_i) eps_i, t_i, c_j) ||

(paper Eq. 6 / Alg. 1 with w = 1), with || . || the squared L2 norm ('l2') or the L1 norm ('l1'),
summed over every non-batch dimension (the paper averages over pixels instead: its errors are
S / dim(x0), which changes only the temperature scale).  The prediction is argmin_j S_j and the
probabilities are softmax(-S / T).

Weightings:
  * 'uniform': w = 1, the paper's choice.
  * 'elbo':    the continuous-time ELBO weight (Kingma et al. 2021, "Variational Diffusion Models",
    Eq. 17 written for eps):  w(t) = (-d logsnr/dt / 2) / q(t), where q is the density the bank's
    times are drawn from (uniform in t: 1 / (t_max - t_min); uniform in logsnr:
    -logsnr'(t) / (logsnr(t_min) - logsnr(t_max))).  Then S_j is a consistent (random grid:
    unbiased) estimator of

        L_j = int_{t_min}^{t_max} (-logsnr'(t) / 2) E_eps || eps - eps_theta(x_t, t, c_j) ||^2 dt.

    For the exact conditional denoiser this integral is known in closed form.  With y = x_t /
    alpha = x0 + e^(-lambda/2) eps (lambda = logsnr) and p_lambda(y | c) the density of y given c,
    the heat equation and Stein's lemma give d/dlambda E_eps log p_lambda(y | c) =
    (dim - E_eps ||eps - eps*_c||^2) / 2, hence

        L_j = dim (lambda_max - lambda_min) / 2 - E_eps log p_{lambda_max}(y | c_j)
              + E_eps log p_{lambda_min}(y | c_j),

    so L_j - L_k -> -(log p(x0 | c_j) - log p(x0 | c_k)) as t_min -> 0 and t_max -> pure noise
    (the two boundary terms are the t-range truncation).  With T = 1, softmax(-S) then estimates
    the posterior p(c | x0) under a uniform prior over the candidates.  The ELBO needs the squared
    error, so 'elbo' with 'l1' is refused.

Time banks (``grid``), in the variable ``time_space`` ('t': uniform in t, the paper's;
'logsnr': uniform in logsnr, an importance-sampling choice whose ELBO weight is the constant
(lambda_max - lambda_min) / 2):
  * 'stratified': the n midpoints u_m = (m + 1/2) / n of n equal bins of [0, 1] mapped onto
    [t_min, t_max] (the paper's evenly spaced grid; e.g. its SD grid range(T//n//2, T, T//n));
    the same for every example.
  * 'random': u ~ U[0, 1) drawn per example and bank entry.

Adaptive pruning (Sec. 3.2, "Efficient classification"): ``n_samples = (n_1, ..., n_S)`` are
cumulative bank sizes and ``keep = (k_1, ..., k_S)`` survivor counts.  Stage s extends the bank
by n_s - n_{s-1} NEW entries (never re-evaluating old ones), evaluates them only for the classes
still alive, and keeps the k_s with the lowest running mean error.  On a stratified grid each
stage's new entries are themselves the midpoints of n_s - n_{s-1} bins, so every stage is a
consistent estimator and their union is too.  NFE per image = sum_s (n_s - n_{s-1}) x survivors_s.
k_S > 1 is allowed: the prediction is then the argmin among the k_S finalists, all of which are
scored on the whole bank.  Counts k_s larger than the number of candidates keep them all (so the
paper's ImageNet stages work for any candidate list).

Randomness: example j of the batch (global index ``indices[j]``) uses fold_in(key, indices[j]);
bank entry i of it uses fold_in(that, i); with independent (unshared) noise, candidate class c
uses fold_in(entry key, c + 1).  A score therefore depends neither on the batch composition, the
stage split of a random bank, nor the device count.

Computation: each stage is one ``jax.jit`` call.  The (condition x new timestep) pairs of every
example are processed ``chunk_size`` at a time with ``lax.map``: one denoiser call sees a batch of
B x chunk_size states.  With a ``mesh`` the example batch is sharded over its data axes
(``parallel.batch_sharding``).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxdiff import parallel
from jaxdiff.denoiser import DenoiserBase
from jaxdiff.schedules import Schedule

Array = jax.Array

LOSSES = ("l2", "l1")
WEIGHTINGS = ("uniform", "elbo")
GRIDS = ("stratified", "random")
TIME_SPACES = ("t", "logsnr")


@dataclasses.dataclass(frozen=True)
class Protocol:
    """How scores are computed (hashable; a static argument of the per-stage jit).

    Fields:
      schedule: the denoiser's noise process.
      loss: 'l2' (squared L2 norm) or 'l1' (L1 norm) of eps - eps_theta.
      weighting: 'uniform' (paper) or 'elbo' (see module docstring).
      grid: 'stratified' or 'random'.
      time_space: 't' or 'logsnr': the variable in which the bank's times are uniform.
      t_min, t_max: the time range of the bank, 0 <= t_min < t_max <= 1.
      shared_noise: one (t_i, eps_i) bank for all candidates (paper) or one per candidate.
      chunk_size: (condition, timestep) pairs per example in one denoiser call.
    """

    schedule: Schedule
    loss: str = "l2"
    weighting: str = "uniform"
    grid: str = "stratified"
    time_space: str = "t"
    t_min: float = 0.0
    t_max: float = 1.0
    shared_noise: bool = True
    chunk_size: int = 256

    def __post_init__(self):
        for name, value, allowed in (("loss", self.loss, LOSSES),
                                     ("weighting", self.weighting, WEIGHTINGS),
                                     ("grid", self.grid, GRIDS),
                                     ("time_space", self.time_space, TIME_SPACES)):
            if value not in allowed:
                raise ValueError(f"unknown {name} {value!r}; choose one of {allowed}")
        if self.weighting == "elbo" and self.loss != "l2":
            raise ValueError("weighting='elbo' is the ELBO only for the squared L2 error; "
                             f"got loss={self.loss!r}")
        if not 0.0 <= self.t_min < self.t_max <= 1.0:
            raise ValueError(f"need 0 <= t_min < t_max <= 1, got t_min={self.t_min}, "
                             f"t_max={self.t_max}")
        if isinstance(self.chunk_size, bool) or not isinstance(self.chunk_size, int) \
                or self.chunk_size < 1:
            raise ValueError(f"chunk_size must be an int >= 1, got {self.chunk_size!r}")

    @property
    def logsnr_range(self) -> tuple[float, float]:
        """(logsnr(t_max), logsnr(t_min)) as Python floats (also while tracing)."""
        with jax.ensure_compile_time_eval():
            return (float(self.schedule.logsnr(jnp.float32(self.t_max))),
                    float(self.schedule.logsnr(jnp.float32(self.t_min))))


# ------------------------------------------------------------------------------------------------
# the time bank
# ------------------------------------------------------------------------------------------------

def times_from_unit(u: Array, proto: Protocol) -> Array:
    """Maps u in [0, 1] (any shape) to t in [t_min, t_max], uniformly in t or in logsnr."""
    if proto.time_space == "t":
        return proto.t_min + u * (proto.t_max - proto.t_min)
    lam_lo, lam_hi = proto.logsnr_range
    return proto.schedule.t_from_logsnr(lam_hi + u * (lam_lo - lam_hi))


def score_weight(t: Array, proto: Protocol) -> Array:
    """The per-entry weight w(t) of the score (any shape of t).

    'uniform': 1.  'elbo': (-logsnr'(t) / 2) / q(t) with q the density of t on the bank (module
    docstring); logsnr' comes from ``jax.grad`` of ``schedule.logsnr``.
    """
    if proto.weighting == "uniform":
        return jnp.ones_like(t)
    dlogsnr = jax.vmap(jax.grad(lambda s: proto.schedule.logsnr(s)))(t.ravel()).reshape(t.shape)
    if proto.time_space == "t":
        density = jnp.full_like(t, 1.0 / (proto.t_max - proto.t_min))
    else:
        lam_lo, lam_hi = proto.logsnr_range
        density = -dlogsnr / (lam_hi - lam_lo)
    return -0.5 * dlogsnr / density


# ------------------------------------------------------------------------------------------------
# stages
# ------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Stage:
    """One pruning stage: bank entries [offset, offset + n_new) for ``classes`` survivors, after
    which ``keep`` survive."""

    offset: int
    n_new: int
    classes: int
    keep: int


def plan_stages(n_samples: int | Sequence[int], keep: Sequence[int] | None,
                num_candidates: int) -> tuple[Stage, ...]:
    """Validates a stage spec and returns its stages.

    Args:
      n_samples: an int n (one stage, no pruning) or cumulative bank sizes (n_1 < ... < n_S).
      keep: survivors after each stage (k_1 >= ... >= k_S >= 1), one per n_s; None for an int
        ``n_samples``.  Counts above ``num_candidates`` are clipped to it.
      num_candidates: K >= 1.
    Raises:
      ValueError naming the bad argument.
    """
    if isinstance(n_samples, (int, np.integer)) and not isinstance(n_samples, bool):
        if keep is not None:
            raise ValueError("keep is only used with a sequence of n_samples (one count per "
                             "stage); pass n_samples=[n] and keep=[k] for a single pruned stage")
        n_samples, keep = (int(n_samples),), (num_candidates,)
    n_samples = tuple(n_samples)
    if keep is None:
        raise ValueError("a sequence of n_samples needs keep: one survivor count per stage")
    keep = tuple(keep)
    if len(n_samples) == 0 or len(keep) != len(n_samples):
        raise ValueError(f"n_samples and keep must be non-empty and of equal length, got "
                         f"n_samples={n_samples}, keep={keep}")
    for name, seq in (("n_samples", n_samples), ("keep", keep)):
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in seq):
            raise ValueError(f"{name} must be integers, got {seq}")
    if n_samples[0] < 1 or any(b <= a for a, b in zip(n_samples, n_samples[1:])):
        raise ValueError(f"n_samples (cumulative bank sizes) must be >= 1 and strictly "
                         f"increasing, got {n_samples}")
    if keep[-1] < 1 or any(b > a for a, b in zip(keep, keep[1:])):
        raise ValueError(f"keep must be non-increasing and >= 1, got {keep}")
    stages, offset, alive = [], 0, num_candidates
    for n, k in zip(n_samples, keep):
        stages.append(Stage(offset=offset, n_new=int(n) - offset, classes=alive,
                            keep=min(int(k), alive)))
        offset, alive = int(n), min(int(k), alive)
    return tuple(stages)


def nfe_per_image(stages: Sequence[Stage]) -> int:
    """Denoiser evaluations per image: sum over stages of new entries x classes evaluated."""
    return sum(s.n_new * s.classes for s in stages)


def _pair_errors(den: DenoiserBase, x0: Array, ex_keys: Array, classes: Array, bank_i: Array,
                 unit_i: Array, n_new: int, proto: Protocol) -> Array:
    """Weighted errors w(t) ||eps - eps_theta(x_t, t, c)|| of a chunk of pairs, shape (B, C).

    x0: (B, ...); ex_keys: (B,) example keys; classes: (B, C) int32 class of each pair;
    bank_i: (C,) bank index of each pair; unit_i: (C,) its index within the stage (0..n_new-1).
    """
    b, c = classes.shape
    entry = jax.vmap(lambda k: jax.vmap(lambda i: jax.random.fold_in(k, i))(bank_i))(ex_keys)
    if not proto.shared_noise:
        entry = jax.vmap(jax.vmap(jax.random.fold_in))(entry, (classes + 1).astype(jnp.uint32))
    size = math.prod(x0.shape[1:])
    extra = 0 if proto.grid == "stratified" else 1
    z = jax.vmap(jax.vmap(lambda k: jax.random.normal(k, (size + extra,), jnp.float32)))(entry)
    eps = z[..., extra:].reshape((b, c) + x0.shape[1:])                      # (B, C, ...)
    if proto.grid == "stratified":
        u = jnp.broadcast_to((unit_i.astype(jnp.float32) + 0.5) / n_new, (b, c))
    else:  # Phi(z) of a standard normal z is U(0, 1): one draw per entry gives u and eps
        u = jax.scipy.special.ndtr(z[..., 0])
    t = times_from_unit(u, proto)                                            # (B, C)
    alpha, sigma = proto.schedule.alpha_sigma(t)
    bcast = (b, c) + (1,) * (x0.ndim - 1)
    x_t = alpha.reshape(bcast) * x0[:, None].astype(jnp.float32) + sigma.reshape(bcast) * eps
    flat = (b * c,) + x0.shape[1:]
    eps_hat = den.eps(x_t.reshape(flat), t.reshape(-1), classes.reshape(-1)).reshape(eps.shape)
    diff = (eps - eps_hat).reshape(b, c, -1)
    err = jnp.sum(diff**2 if proto.loss == "l2" else jnp.abs(diff), axis=-1)
    return score_weight(t, proto) * err


@functools.partial(jax.jit, static_argnames=("stage", "proto"))
def _run_stage(den: DenoiserBase, x0: Array, ex_keys: Array, candidates: Array,
               survivors: Array, sums: Array, scores: Array, counts: Array, *,
               stage: Stage, proto: Protocol):
    """Evaluates one stage's new bank entries for the survivors, then prunes.

    survivors: (B, stage.classes) candidate positions alive; sums: (B, stage.classes) their
    weighted-error sums over the bank so far; scores, counts: (B, K) running mean error and bank
    entries seen, per candidate position.  Returns the four arrays after the stage (survivors and
    sums with stage.keep columns).
    """
    pairs = stage.classes * stage.n_new
    chunk = min(proto.chunk_size, pairs)
    n_chunks = -(-pairs // chunk)
    flat = np.arange(n_chunks * chunk) % pairs            # padding repeats pairs, dropped below
    pos_k = (flat // stage.n_new).reshape(n_chunks, chunk)
    pos_i = (flat % stage.n_new).reshape(n_chunks, chunk)

    def one_chunk(chunk_pairs):
        k, i = chunk_pairs
        classes = candidates[survivors[:, k]]                                # (B, C)
        return _pair_errors(den, x0, ex_keys, classes, stage.offset + i, i, stage.n_new, proto)

    errs = jax.lax.map(one_chunk, (jnp.asarray(pos_k, jnp.int32), jnp.asarray(pos_i, jnp.int32)))
    b = x0.shape[0]
    errs = jnp.moveaxis(errs, 0, 1).reshape(b, -1)[:, :pairs]
    sums = sums + errs.reshape(b, stage.classes, stage.n_new).sum(-1)
    seen = stage.offset + stage.n_new
    means = sums / seen
    rows = jnp.arange(b)[:, None]
    scores = scores.at[rows, survivors].set(means)
    counts = counts.at[rows, survivors].set(seen)
    _, best = jax.lax.top_k(-means, stage.keep)                              # lowest errors
    return (jnp.take_along_axis(survivors, best, axis=1),
            jnp.take_along_axis(sums, best, axis=1), scores, counts)


# ------------------------------------------------------------------------------------------------
# the classifier
# ------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ClassifyResult:
    """Output of ``diffusion_classify`` for B examples and K candidates.

    Fields:
      prediction: (B,) int32, the predicted class index (an entry of ``candidates``).
      scores: (B, K) float32, each candidate's mean weighted error S over the bank entries it
        was evaluated on (pruned candidates: their running mean when they were dropped).
      num_evaluated: (B, K) int32, the bank entries each candidate was scored on.
      probs: (B, K) float32, softmax(-S / T) over the finalists (candidates scored on the whole
        bank); 0 for pruned candidates.
      nfe: denoiser evaluations per image (a Python int; the same for every image).
    """

    prediction: Array
    scores: Array
    num_evaluated: Array
    probs: Array
    nfe: int


def check_candidates(candidates, num_classes: int) -> np.ndarray:
    """(K,) int32 copy of ``candidates``; ValueError unless they are K >= 1 distinct integer class
    indices in [0, num_classes)."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) \
            or num_classes < 1:
        raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
    cand = np.asarray(candidates)
    if cand.ndim != 1 or cand.shape[0] == 0:
        raise ValueError(f"candidates must be a non-empty 1-D array of class indices, got shape "
                         f"{cand.shape}")
    if not np.issubdtype(cand.dtype, np.integer):
        raise ValueError(f"candidates must be integer class indices, got dtype {cand.dtype}")
    bad = cand[(cand < 0) | (cand >= num_classes)]
    if bad.size:
        raise ValueError(f"candidates {bad.tolist()} are outside [0, num_classes={num_classes})")
    if np.unique(cand).size != cand.size:
        raise ValueError(f"candidates must be distinct, got {cand.tolist()}")
    return cand.astype(np.int32)


def diffusion_classify(den: DenoiserBase, x0: Array, candidates, key: Array, *,
                       num_classes: int, n_samples: int | Sequence[int],
                       keep: Sequence[int] | None = None, loss: str = "l2",
                       weighting: str = "uniform", grid: str = "stratified",
                       time_space: str = "t", t_min: float | None = None,
                       t_max: float | None = None, shared_noise: bool = True,
                       temperature: float = 1.0, indices: Array | None = None,
                       chunk_size: int = 256, mesh: Mesh | None = None) -> ClassifyResult:
    """Classifies x0 by the conditional denoising error of each candidate (Li et al. 2023).

    Args:
      den: a conditional Denoiser; ``den.eps(x, t, cond)`` with cond a (N,) int32 class array.
      x0: (B, ...) float inputs, in the data space of the denoiser.
      candidates: (K,) distinct int class indices in [0, num_classes).
      key: PRNG key; example j uses fold_in(key, indices[j]).
      num_classes: the number of classes of the denoiser (the null token is not a candidate).
      n_samples: bank size n, or cumulative bank sizes per pruning stage (with ``keep``).
      keep: survivors after each stage (non-increasing, >= 1); see ``plan_stages``.
      loss: 'l2' | 'l1'.  weighting: 'uniform' | 'elbo'.  grid: 'stratified' | 'random'.
      time_space: 't' | 'logsnr'.  t_min, t_max: bank time range (default: the schedule's).
      shared_noise: share (t_i, eps_i) across candidates (True, the paper) or draw per candidate.
      temperature: T > 0 of softmax(-S / T).
      indices: (B,) global example indices (default arange(B)).
      chunk_size: (condition, timestep) pairs per example per denoiser call (bounds memory).
      mesh: optional; shards the example batch over ``parallel.batch_sharding(mesh)``.
    Returns:
      a ``ClassifyResult``.
    Raises:
      ValueError on bad candidates / num_classes, stage spec, option names, temperature, batch
      size not divisible by the mesh's batch shards, or indices of the wrong shape.
    """
    cand = check_candidates(candidates, num_classes)
    stages = plan_stages(n_samples, keep, cand.shape[0])
    sched = den.schedule
    proto = Protocol(schedule=sched, loss=loss, weighting=weighting, grid=grid,
                     time_space=time_space,
                     t_min=float(sched.t_min if t_min is None else t_min),
                     t_max=float(sched.t_max if t_max is None else t_max),
                     shared_noise=bool(shared_noise), chunk_size=chunk_size)
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature)
            and temperature > 0):
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    x0 = jnp.asarray(x0, jnp.float32)
    if x0.ndim < 2 or x0.shape[0] == 0:
        raise ValueError(f"x0 must have shape (B, ...) with B >= 1, got {x0.shape}")
    b, k = x0.shape[0], cand.shape[0]
    indices = jnp.arange(b) if indices is None else jnp.asarray(indices)
    if indices.shape != (b,):
        raise ValueError(f"indices must have shape ({b},), got {indices.shape}")
    indices = indices.astype(jnp.uint32)
    survivors = jnp.broadcast_to(jnp.arange(k, dtype=jnp.int32), (b, k))
    sums = jnp.zeros((b, k), jnp.float32)
    scores = jnp.full((b, k), jnp.inf, jnp.float32)
    counts = jnp.zeros((b, k), jnp.int32)
    cand_arr = jnp.asarray(cand)
    if mesh is not None:
        shards = parallel.batch_sharding(mesh)
        n_shards = math.prod(mesh.shape[a] for a in parallel.BATCH_AXES)
        if b % n_shards:
            raise ValueError(f"batch size {b} must be a multiple of the mesh's {n_shards} batch "
                             "shards")
        x0, indices, survivors, sums, scores, counts = jax.device_put(
            (x0, indices, survivors, sums, scores, counts), shards)
        cand_arr = jax.device_put(cand_arr, parallel.replicated(mesh))
    ex_keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(indices)
    for stage in stages:
        survivors, sums, scores, counts = _run_stage(
            den, x0, ex_keys, cand_arr, survivors, sums, scores, counts, stage=stage, proto=proto)
    final = counts == stages[-1].offset + stages[-1].n_new
    logits = jnp.where(final, -scores / temperature, -jnp.inf)
    probs = jax.nn.softmax(logits, axis=-1)
    prediction = cand_arr[jnp.argmax(logits, axis=-1)]
    return ClassifyResult(prediction=prediction, scores=scores, num_evaluated=counts,
                          probs=probs, nfe=nfe_per_image(stages))

"""Diffusion Tree Sampling and Diffusion Tree Search, DTS and DTS* (Jain et al., "Diffusion Tree
Sampling: Scalable inference-time alignment of diffusion models", arXiv 2506.20701, Alg. 1-2).

Target: pi(x0) ∝ p(x0) exp(lambda r(x0)) for a base sampler p and a reward r.  One tree per
example.  Its nodes are noisy states on the levels of a clean-ended grid of ``steps`` stochastic
DDIM steps (eta > 0; eta = 1 is DDPM's ancestral step, the step of ``jaxdiff.samplers.ddim``):

  root      a virtual node above the grid; its children are fresh initial noises x_T
  levels    the grid points ``branch_at`` (indices in [0, steps)) hold nodes that branch; the
            states between two levels are not kept (a node with one child has that child's
            value, so keeping them changes nothing); the paper branches every steps / 5 points
            (its Table 2) and reports little difference from branching at every step
  leaves    the clean samples x0 at the last grid point, valued v(x0) = r(x0)

Each rollout (Alg. 1), for every tree of the batch at once:

  1. selection: from the root, while the node's children number at least C N^alpha (progressive
     widening, N its visit count; the paper's C = 2, alpha = 0.8), move to a child:
       DTS   with probability ∝ exp(lambda v(c))                           (Boltzmann)
       DTS*  argmax v(c) + c_uct sqrt(log N(parent) / N(c))                 (UCT)
     A leaf reached this way is backed up again at no network cost.
  2. expansion and rollout: a new child of the node, and the base sampler run from there down
     to x0; every level passed becomes a node.  The rollouts of the batch run as one batched,
     jitted step per grid point (rows that start deeper wait, unchanged, until their start).
  3. backup from the leaf up: v(n) = (1/lambda) log( mean_c exp(lambda v(c)) ) over n's
     children (the soft value; lambda = 0 gives the mean, lambda = inf, DTS* only, the max);
     N(n) += 1.  New nodes start at N = 1, as the paper initialises them, and so does the root.

Outputs (Alg. 2): DTS descends from the root by the same Boltzmann rule with the final values
(a draw from its estimate of pi; every draw from a grown tree is free); DTS* returns the best
leaf found.  NFE per example: the steps its rollouts ran (a rollout from level i costs
steps - i; from the root, all of them), exactly; ``SearchResult.nfe`` is the batch mean.

Noise: rollout m of example b draws its initial noise and step noises from the global index
indices[b] M + m (M = ``rollouts``) as ``samplers.sample`` does, so one rollout is plain
sampling of the example (to float32 rounding: the same steps outside the sampler's scan), and a
tree without branch levels (``branch_at=()``: the root's children are leaves) holds exactly the
candidates of ``importance_resampling`` with N = M and draws from them by the same weights.
The host-side randomness of selection and drawing is seeded per example from (key, index), so a
tree does not depend on the batch it runs in.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxdiff.denoiser import DenoiserBase
from jaxdiff.rng import example_keys, normal_per_example
from jaxdiff.samplers.ddim import ddim_step
from jaxdiff.search.base import SearchResult, check_count, check_lambda, make_grid
from jaxdiff.config import choice
from jaxdiff.search.config import check_fields, register_search
from jaxdiff.search.verifiers import Verifier, denoiser_calls, scores_of

Array = jax.Array

ROOT = 0
DEFAULT_MAX_BYTES = 4 << 30


@functools.partial(jax.jit, static_argnames=("rest",))
def _start(g, keys, rest):
    """The rollouts' initial noise at the grid's first point, (B, *rest)."""
    return g.sigma_ve[0] * normal_per_example(keys, 0, rest)


@jax.jit
def _step(den, g, y, i, keys, first, cond, eta):
    """One DDIM(eta) step from grid point i of every rollout whose start ``first`` (B,) is at or
    before i; the others wait unchanged.  The denoiser and grid are arguments (one program for
    every tree of the same shapes, not one per search)."""
    d = den(g.alpha[i] * y, g.t[i], cond)
    z = normal_per_example(keys, i + 1, y.shape[1:])
    moved = ddim_step(y, d, g.sigma_ve[i], g.sigma_ve[i + 1], eta, z)
    active = (first <= i).reshape((-1,) + (1,) * (y.ndim - 1))
    return jnp.where(active, moved, y)


def _seed(key: Array, stream: int) -> list[int]:
    return [int(w) for w in np.asarray(jax.random.key_data(jax.random.fold_in(key, stream)))]


def soft_value(values: np.ndarray, lam: float) -> float:
    """(1/lam) log mean exp(lam v) of a node's children's values (float64, stable); the mean at
    lam = 0 and the max at lam = inf."""
    if lam == 0.0:
        return float(np.mean(values))
    top = float(np.max(values))
    if math.isinf(lam):
        return top
    return top + float(np.log(np.mean(np.exp(lam * (values - top))))) / lam


def boltzmann(values: np.ndarray, lam: float) -> np.ndarray:
    """Selection probabilities ∝ exp(lam v) (uniform at lam = 0; float64)."""
    if math.isinf(lam):
        p = (values == np.max(values)).astype(np.float64)
        return p / p.sum()
    z = lam * (values - np.max(values)) if lam > 0 else np.zeros_like(values)
    p = np.exp(z)
    return p / p.sum()


class DiffusionTrees:
    """B trees grown together; see the module docstring.

    Args:
      den: the Denoiser (any guidance already applied); key: PRNG key; shape: (B, ...).
      reward: a verifier r(x0, cond) -> (B,).
      lam: lambda >= 0 (``float('inf')`` only for the DTS* rule: max backup).
      rollouts: M >= 1, the most rollouts a tree may take (sets the noise indices and the
        memory bound).
      rule: "dts" (Boltzmann selection, draws) or "dts_star" (UCT selection, best leaf).
      steps, grid: the clean-ended grid; eta in (0, 1]: the DDIM stochasticity.
      branch_at: grid indices in [0, steps) holding nodes (default every max(1, steps // 5)
        points from 0); () makes the root's children leaves.
      widening, alpha: C and alpha of the widening limit C N^alpha.
      c_uct: the exploration constant of DTS* (> 0; the paper does not state its value).
      cond, indices: as ``samplers.sample``.
      max_bytes: refuse trees whose states would need more host memory than this.
    """

    def __init__(self, den: DenoiserBase, key: Array, shape: tuple[int, ...],
                 reward: Verifier, *, lam: float, rollouts: int, rule: str = "dts",
                 steps: int = 50, grid: Any = "uniform_t", eta: float = 1.0,
                 branch_at: Sequence[int] | None = None, widening: float = 2.0,
                 alpha: float = 0.8, c_uct: float = 1.0, cond: Any = None,
                 indices: Array | None = None, max_bytes: int = DEFAULT_MAX_BYTES):
        if rule not in ("dts", "dts_star"):
            raise ValueError(f"search: rule must be 'dts' or 'dts_star', got {rule!r}")
        if rule == "dts_star" and lam == float("inf"):
            self.lam = lam
        else:
            self.lam = check_lambda(lam)
        self.rule = rule
        self.max_rollouts = check_count(rollouts, "rollouts")
        if not 0.0 < float(eta) <= 1.0:
            raise ValueError(f"search: tree sampling needs a stochastic step, eta in (0, 1], "
                             f"got {eta!r}")
        if not (widening > 0 and 0 <= alpha <= 1):
            raise ValueError(f"search: widening must be > 0 and alpha in [0, 1], got "
                             f"{widening!r}, {alpha!r}")
        if not c_uct > 0:
            raise ValueError(f"search: c_uct must be > 0, got {c_uct!r}")
        g = make_grid(den.schedule, steps, grid)
        if not g.clean_end:
            raise ValueError("search: tree sampling needs a grid that ends at zero noise")
        n = g.steps
        if branch_at is None:
            branch_at = range(0, n, max(1, n // 5))
        levels = sorted({int(i) for i in branch_at})
        if any(not 0 <= i < n for i in levels):
            raise ValueError(f"search: branch_at must hold grid indices in [0, {n}), got "
                             f"{list(branch_at)}")
        self.levels = levels + [n]                       # grid index of each node level
        self.widening, self.alpha, self.c_uct = float(widening), float(alpha), float(c_uct)
        self.grid, self.steps = g, n
        b, rest = int(shape[0]), tuple(shape[1:])
        self.batch, self.rest = b, rest
        capacity = 1 + self.max_rollouts * len(self.levels)
        need = b * capacity * int(np.prod(rest, dtype=np.int64)) * 4
        if need > max_bytes:
            raise ValueError(
                f"search: the trees would hold {need / 2**30:.2f} GiB of states ({b} trees x "
                f"up to {capacity} nodes of {rest}), above max_bytes={max_bytes}; take fewer "
                f"rollouts, fewer branch levels or a smaller batch")
        self.states = np.empty((b, capacity) + rest, np.float32)   # lazily paged in
        self.cond = cond
        self.reward = reward
        idx = np.arange(b) if indices is None else np.asarray(indices)
        self.indices = idx.astype(np.int64)
        self.key = key
        # per tree: node -> parent, level (-1: root), value, visits, children
        self.parent = [[-1] for _ in range(b)]
        self.level = [[-1] for _ in range(b)]
        self.value = [[0.0] for _ in range(b)]
        self.visits = [[1] for _ in range(b)]
        self.children = [[[]] for _ in range(b)]
        self.leaves = [[] for _ in range(b)]             # (node, reward) of every leaf
        self.nfe = np.zeros(b, np.int64)
        self.done = np.zeros(b, np.int64)                # rollouts taken per tree
        self._rng = [np.random.default_rng(_seed(key, 0xD75) + [int(i)]) for i in idx]

        self.den, self.eta = den, jnp.float32(eta)

    # ---------------------------------------------------------------------------------------
    # selection, expansion, backup
    # ---------------------------------------------------------------------------------------

    def _select(self, b: int) -> list[int]:
        """The path from the root to the node to expand (or to a leaf)."""
        children, visits, value = self.children[b], self.visits[b], self.value[b]
        path = [ROOT]
        leaf_level = len(self.levels) - 1
        while self.level[b][path[-1]] < leaf_level:
            node = path[-1]
            kids = children[node]
            if len(kids) < self.widening * visits[node] ** self.alpha:
                return path
            v = np.array([value[c] for c in kids])
            if self.rule == "dts":
                pick = self._rng[b].choice(len(kids), p=boltzmann(v, self.lam))
            else:
                n = np.array([visits[c] for c in kids], np.float64)
                pick = int(np.argmax(v + self.c_uct * np.sqrt(math.log(visits[node]) / n)))
            path.append(kids[int(pick)])
        return path

    def _add(self, b: int, parent: int, level: int, state: np.ndarray) -> int:
        node = len(self.parent[b])
        self.parent[b].append(parent)
        self.level[b].append(level)
        self.value[b].append(0.0)
        self.visits[b].append(1)
        self.children[b].append([])
        self.children[b][parent].append(node)
        self.states[b, node] = state
        return node

    def _backup(self, b: int, path: list[int]) -> None:
        value, children = self.value[b], self.children[b]
        for node in reversed(path[:-1]):
            kids = children[node]
            value[node] = (value[kids[0]] if len(kids) == 1 else
                           soft_value(np.array([value[c] for c in kids]), self.lam))
        for node in path:
            self.visits[b][node] += 1

    # ---------------------------------------------------------------------------------------
    # growing
    # ---------------------------------------------------------------------------------------

    def grow(self, rollouts: int | None = None, nfe: float | None = None) -> "DiffusionTrees":
        """Take rollouts: ``rollouts`` more per tree, or, with ``nfe``, until each tree has spent
        at least that many network evaluations (it stops at its M-th rollout in either case)."""
        if rollouts is None and nfe is None:
            raise ValueError("search: grow needs rollouts or nfe")
        if nfe is not None and nfe < self.steps:
            raise ValueError(f"search: an NFE budget of {nfe} is below one rollout "
                             f"({self.steps} steps)")
        goal = self.done + (rollouts if rollouts is not None else self.max_rollouts)
        goal = np.minimum(goal, self.max_rollouts)
        while True:
            active = self.done < goal
            if nfe is not None:
                active &= self.nfe < nfe
            if not active.any():
                return self
            self._rollout(active)

    def _rollout(self, active: np.ndarray) -> None:
        b_all, n = self.batch, self.steps
        paths, first = [None] * b_all, np.full(b_all, n, np.int32)
        y = np.zeros((b_all,) + self.rest, np.float32)
        from_root = np.zeros(b_all, bool)
        for b in np.flatnonzero(active):
            path = self._select(b)
            paths[b] = path
            node = path[-1]
            lv = self.level[b][node]
            if node == ROOT:
                from_root[b], first[b] = True, 0
            elif lv < len(self.levels) - 1:
                first[b] = self.levels[lv]
                y[b] = self.states[b, node]
        ids = self.indices * self.max_rollouts + self.done
        keys = example_keys(self.key, jnp.asarray(ids, jnp.uint32))
        yj = jnp.where(jnp.asarray(from_root).reshape((-1,) + (1,) * len(self.rest)),
                       _start(self.grid, keys, self.rest), jnp.asarray(y))
        kept = {}
        if 0 in self.levels:
            kept[0] = yj
        firstj = jnp.asarray(first)
        for i in range(int(first.min()), n):
            yj = _step(self.den, self.grid, yj, jnp.int32(i), keys, firstj, self.cond,
                       self.eta)
            if i + 1 in self.levels:
                kept[i + 1] = yj
        kept[n] = yj
        kept = {i: np.asarray(v) for i, v in kept.items()}
        r = np.asarray(scores_of(self.reward, jnp.asarray(kept[n]), self.cond), np.float64)
        for b in np.flatnonzero(active):
            path = paths[b]
            node = path[-1]
            lv = self.level[b][node]
            if lv < len(self.levels) - 1:                   # expand and keep the rollout
                for level in range(lv + 1, len(self.levels)):
                    node = self._add(b, node, level, kept[self.levels[level]][b])
                    path.append(node)
                self.value[b][node] = float(r[b])
                self.leaves[b].append((node, float(r[b])))
                self.nfe[b] += n - first[b] + denoiser_calls(self.reward)
            self._backup(b, path)
            self.done[b] += 1

    # ---------------------------------------------------------------------------------------
    # outputs
    # ---------------------------------------------------------------------------------------

    def draw(self, key: Array) -> tuple[Array, Array]:
        """DTS's output: one Boltzmann descent per tree with the current values (no network
        call).  Returns x0 (B, ...) and their rewards (B,)."""
        x0, rewards = [], []
        seed = _seed(key, 0xD7A)
        leaf_level = len(self.levels) - 1
        for b in range(self.batch):
            rng = np.random.default_rng(seed + [int(self.indices[b])])
            node = ROOT
            while self.level[b][node] < leaf_level:
                kids = self.children[b][node]
                v = np.array([self.value[b][c] for c in kids])
                node = kids[int(rng.choice(len(kids), p=boltzmann(v, self.lam)))]
            x0.append(self.states[b, node])
            rewards.append(self.value[b][node])
        return jnp.asarray(np.stack(x0)), jnp.asarray(rewards, jnp.float32)

    def best(self) -> tuple[Array, Array]:
        """DTS*'s output: the best leaf of each tree, x0 (B, ...) and its reward (B,)."""
        picks = [max(leaves, key=lambda nr: nr[1]) for leaves in self.leaves]
        x0 = np.stack([self.states[b, node] for b, (node, _) in enumerate(picks)])
        return jnp.asarray(x0), jnp.asarray([r for _, r in picks], jnp.float32)

    def leaf_probabilities(self, b: int) -> dict[int, float]:
        """The probability of each leaf of tree b under the Boltzmann descent (exact, float64,
        by the product of the selection probabilities along its path)."""
        probs, leaf_level = {ROOT: 1.0}, len(self.levels) - 1
        for node in range(len(self.parent[b])):                  # parents come before children
            kids = self.children[b][node]
            if len(kids) == 1:
                probs[kids[0]] = probs[node]
            elif kids:
                p = boltzmann(np.array([self.value[b][c] for c in kids]), self.lam)
                for c, pc in zip(kids, p):
                    probs[c] = probs[node] * float(pc)
        return {n: p for n, p in probs.items() if self.level[b][n] == leaf_level}

    def expected_reward(self) -> float:
        """Batch mean of E[r(x0)] under the Boltzmann descent (exact; no network call)."""
        return float(np.mean([sum(p * self.value[b][n]
                                  for n, p in self.leaf_probabilities(b).items())
                              for b in range(self.batch)]))

    def result(self, key: Array, trace: list) -> SearchResult:
        x0, scores = self.draw(key) if self.rule == "dts" else self.best()
        return SearchResult(x0=x0, scores=scores, nfe=float(np.mean(self.nfe)), trace=trace)


def _search(rule: str, den, key, shape, reward, *, lam, rollouts, nfe=None, **options):
    trees = DiffusionTrees(den, key, shape, reward, lam=lam, rollouts=rollouts, rule=rule,
                           **options)
    trace, taken = [], 0
    marks = sorted({2 ** k for k in range(int(math.log2(trees.max_rollouts)) + 1)}
                   | {trees.max_rollouts})
    for mark in marks:
        trees.grow(rollouts=mark - taken, nfe=nfe)
        taken = mark
        score = (trees.expected_reward() if rule == "dts"
                 else float(np.mean([max(r for _, r in lv) for lv in trees.leaves])))
        trace.append((float(np.mean(trees.nfe)), score))
    return trees.result(jax.random.fold_in(key, 0xD7B), trace)


def dts(den: DenoiserBase, key: Array, shape: tuple[int, ...], reward: Verifier, *,
        lam: float, rollouts: int, nfe: float | None = None, **options) -> SearchResult:
    """Diffusion Tree Sampling: ``rollouts`` per example (or until ``nfe`` evaluations each),
    then one Boltzmann draw per tree.  Options as ``DiffusionTrees``.  Returns
    SearchResult(x0 (B, ...), scores = their rewards, nfe = batch-mean NFE per example, trace:
    (NFE, batch-mean expected reward of a draw) after 1, 2, 4, ... rollouts)."""
    return _search("dts", den, key, shape, reward, lam=lam, rollouts=rollouts, nfe=nfe,
                   **options)


def dts_star(den: DenoiserBase, key: Array, shape: tuple[int, ...], reward: Verifier, *,
             lam: float, rollouts: int, nfe: float | None = None, **options) -> SearchResult:
    """Diffusion Tree Search: UCT selection, the best leaf per tree.  As ``dts``; the trace holds
    the batch-mean best reward found."""
    return _search("dts_star", den, key, shape, reward, lam=lam, rollouts=rollouts, nfe=nfe,
                   **options)


def _tree_defaults(**extra):
    return lambda: ml_collections.ConfigDict(dict(
        rollouts=8, lam=1.0, eta=1.0, branch_every=0, widening=2.0, alpha=0.8, **extra))


def _check_tree(section, config) -> None:
    check_fields(section, rollouts=dict(low=1, integer=True), lam=dict(low=0.0),
                 eta=dict(low=0.0, high=1.0, low_open=True),
                 branch_every=dict(low=0, integer=True), widening=dict(low=0.0, low_open=True),
                 alpha=dict(low=0.0, high=1.0), **({"c_uct": dict(low=0.0, low_open=True)}
                                                  if "c_uct" in section else {}))
    if "max_backup" in section:
        choice(section.max_backup, "search.max_backup", (True, False))


def _tree_options(sample, section) -> dict:
    """DiffusionTrees keywords from ``config.sample`` (steps, grid) and ``config.search``:
    nodes every ``branch_every`` grid points (0: every steps // 5, the paper's schedule)."""
    steps = int(sample.steps)
    every = int(section.branch_every) or max(1, steps // 5)
    opts = dict(rollouts=int(section.rollouts), steps=steps, grid=sample.grid,
                eta=float(section.eta), branch_at=range(0, steps, every),
                widening=float(section.widening), alpha=float(section.alpha))
    if "c_uct" in section:
        opts["c_uct"] = float(section.c_uct)
    return opts


@register_search("dts", defaults=_tree_defaults(), check=_check_tree)
def _run_dts(den, key, shape, verifier, sample, section, cond, indices):
    return dts(den, key, shape, verifier, lam=float(section.lam), cond=cond, indices=indices,
               **_tree_options(sample, section))


@register_search("dts_star", defaults=_tree_defaults(c_uct=1.0, max_backup=True),
                 check=_check_tree)
def _run_dts_star(den, key, shape, verifier, sample, section, cond, indices):
    """``max_backup`` backs up the max (lambda = inf); otherwise the soft value at lam."""
    lam = float("inf") if section.max_backup else float(section.lam)
    return dts_star(den, key, shape, verifier, lam=lam, cond=cond, indices=indices,
                    **_tree_options(sample, section))

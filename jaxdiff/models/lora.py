"""LoRA, low-rank adaptation (Hu et al., ICLR 2022, "LoRA: Low-rank adaptation of large language
models"), for the parameters of any network given as a pytree (an NNX pure dict).

A kernel W of shape (..., d_in, d_out) (Dense: (d_in, d_out); Conv: (kh, kw, c_in, c_out)) is
adapted as (Hu et al., Eq. 3)

    W' = W + (alpha / r) reshape(A @ B, W.shape),   A: (prod(W.shape[:-1]), r),  B: (r, d_out)

with B = 0 at the start, so the adapted network starts as the base network exactly.  For a
convolution this is the usual conv-LoRA: A is a (kh, kw) convolution to r channels, B a 1x1
convolution to d_out.  Besides the low-rank factors an adapter may train some leaves in full
(``free``: biases and normalisation scales, as PPAP's experts do), starting from the base's
values.

The base stays frozen and is shared; an adapter is a small pytree
``dict(a=[A_i], b=[B_i], free=[leaf_j])`` in the order of ``LoRA.targets`` / ``LoRA.free``, so
adapters stack along a leading axis (a bank of experts) and go through optax and Orbax like any
parameters.  ``LoRA.merge(base, adapter)`` returns the adapted parameters to feed the network's
own apply; gradients with respect to the adapter flow through the merge.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from jaxdiff.optim import path_components

Array = jax.Array
Path = tuple[str, ...]


def leaf_paths(params) -> list[tuple[Path, Any]]:
    """[(path, leaf)] of a pytree in flattening order; a path is the tuple of its key names."""
    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    return [(path_components(path), leaf) for path, leaf in flat]


@dataclasses.dataclass(frozen=True)
class LoRA:
    """Which leaves of a base pytree an adapter changes, and how (static; hashable).

    targets: paths (tuples of key names, ``jaxdiff.optim.path_components``) of the kernels
      adapted by a rank-``rank`` product.
    free: paths of the leaves trained in full (a copy of the base's value).
    rank: r >= 1.  alpha: the scale numerator (the update is alpha / r times A @ B).
    """

    targets: tuple[Path, ...]
    free: tuple[Path, ...]
    rank: int
    alpha: float

    @property
    def scaling(self) -> float:
        return float(self.alpha) / int(self.rank)

    def init(self, base, key: Array) -> dict:
        """A fresh adapter for ``base``: A ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (the Kaiming
        uniform of LoRA's reference code), B = 0, free leaves = the base's values."""
        leaves = dict(leaf_paths(base))
        a, b = [], []
        for i, path in enumerate(self.targets):
            w = leaves[path]
            fan_in = math.prod(w.shape[:-1])
            bound = 1.0 / math.sqrt(fan_in)
            a.append(jax.random.uniform(jax.random.fold_in(key, i), (fan_in, self.rank),
                                        jnp.float32, -bound, bound))
            b.append(jnp.zeros((self.rank, w.shape[-1]), jnp.float32))
        free = [jnp.asarray(leaves[p], jnp.float32) for p in self.free]
        return dict(a=a, b=b, free=free)

    def merge(self, base, adapter):
        """The adapted parameters: base with every target kernel W replaced by
        W + (alpha / r) reshape(A @ B, W.shape) and every free leaf by the adapter's copy."""
        where = {p: ("lora", i) for i, p in enumerate(self.targets)}
        where.update({p: ("free", i) for i, p in enumerate(self.free)})

        def one(path, w):
            hit = where.get(path_components(path))
            if hit is None:
                return w
            kind, i = hit
            if kind == "free":
                return adapter["free"][i].astype(w.dtype)
            delta = (adapter["a"][i] @ adapter["b"][i]).reshape(w.shape)
            return w + (self.scaling * delta).astype(w.dtype)

        return jax.tree_util.tree_map_with_path(one, base)

    def check(self, adapter) -> None:
        """Raises ValueError when ``adapter`` does not fit this LoRA (a stacked bank: every
        leaf may carry leading expert axes)."""
        if not isinstance(adapter, dict) or set(adapter) != {"a", "b", "free"}:
            raise ValueError(f"LoRA adapter: expected a dict with keys a, b, free, got "
                             f"{sorted(adapter) if isinstance(adapter, dict) else type(adapter)}")
        counts = (len(adapter["a"]), len(adapter["b"]), len(adapter["free"]))
        if counts != (len(self.targets), len(self.targets), len(self.free)):
            raise ValueError(f"LoRA adapter: {counts} (a, b, free) arrays, expected "
                             f"{(len(self.targets), len(self.targets), len(self.free))}")
        for path, a, b in zip(self.targets, adapter["a"], adapter["b"]):
            if a.shape[-1] != self.rank or b.shape[-2] != self.rank:
                raise ValueError(f"LoRA adapter of {'/'.join(path)}: rank "
                                 f"{a.shape[-1]} / {b.shape[-2]}, expected {self.rank}")


def lora_for(base, rank: int, alpha: float, *, exclude: tuple[str, ...] = (),
             free: tuple[str, ...] = ("bias", "scale")) -> LoRA:
    """The LoRA of a base pytree: every leaf named ``kernel`` with ndim >= 2 is a target, and
    every leaf whose name is in ``free`` is trained in full, except under a path component in
    ``exclude`` (e.g. ('head',): PPAP leaves the classification layer as it is).

    Raises ValueError for rank < 1, a negative alpha, or a base with no kernel to adapt.
    """
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"LoRA rank: expected an int >= 1, got {rank!r}")
    if not alpha >= 0:
        raise ValueError(f"LoRA alpha: must be >= 0, got {alpha!r}")
    targets, frees = [], []
    for path, leaf in leaf_paths(base):
        if any(p in exclude for p in path):
            continue
        if path[-1] == "kernel" and len(leaf.shape) >= 2:
            targets.append(path)
        elif path[-1] in free:
            frees.append(path)
    if not targets:
        raise ValueError("LoRA: the base has no 'kernel' leaf of rank >= 2 to adapt"
                         + (f" outside {exclude}" if exclude else ""))
    return LoRA(tuple(targets), tuple(frees), int(rank), float(alpha))


def num_params(tree) -> int:
    """Number of scalars in a pytree."""
    return int(sum(math.prod(x.shape) for x in jax.tree.leaves(tree)))

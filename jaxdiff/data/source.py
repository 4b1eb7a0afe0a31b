"""The random-access example source every data consumer reads from.

A source is a finite, indexable, labelled set of equally shaped examples: ``get(indices)``
returns the examples at ``indices`` as an (n, *example_shape) array and their int32 labels.
Randomness (shuffling, augmentation) lives in ``BatchSampler``, never in a source, so ``get`` is
a pure function of the indices.

``kind`` tells consumers what the examples are, and so which image-only steps apply (uint8
previews and grids, Inception features, horizontal flips):

  'image'   float32 (H, W, C) in [-1, 1]: uint8-convertible as round((x + 1) * 127.5).
  'signal'  float32 (L, C): L samples of C channels (e.g. ``signals1d``, roughly in [-1, 1]).
  'vector'  float32 (D,).
  'tokens'  int32 arrays of any shape (e.g. (L,) token ids).
  'array'   float32 of another rank.
"""
from __future__ import annotations

import dataclasses
from typing import Protocol

import numpy as np

KINDS = ("image", "signal", "vector", "tokens", "array")
_FLOAT_KIND_BY_RANK = {3: "image", 2: "signal", 1: "vector"}


def infer_kind(example_shape: tuple[int, ...], dtype) -> str:
    """The ``kind`` of examples of ``example_shape`` and ``dtype``: int32 -> 'tokens'; float32
    (H, W, C) -> 'image', (L, C) -> 'signal', (D,) -> 'vector', any other rank -> 'array'."""
    if np.dtype(dtype) == np.int32:
        return "tokens"
    return _FLOAT_KIND_BY_RANK.get(len(tuple(example_shape)), "array")


class ImageSource(Protocol):
    """Interface of ``ArraySource`` and ``TfdsSource`` (images, signals or other examples).

    Attributes:
      name:          human-readable dataset / split name, e.g. 'mnist5k/train'.
      num_classes:   number of classes K; labels lie in [0, K) (index K is the null token).
      example_shape: shape of every example, any rank: (H, W, C) images, (L, C) signals, ...
      kind:          one of ``KINDS`` ('image', 'signal', ...; see the module docstring).
    """

    name: str
    num_classes: int
    example_shape: tuple[int, ...]
    kind: str

    def __len__(self) -> int: ...

    def get(self, indices) -> tuple[np.ndarray, np.ndarray]:
        """indices int (n,) -> (examples (n, *example_shape), labels int32 (n,)); images are
        float32 in [-1, 1]."""
        ...


def check_indices(indices, num_examples: int) -> np.ndarray:
    """Returns ``indices`` as an int64 (n,) array; ValueError unless 1-D ints in [0, num_examples)."""
    idx = np.asarray(indices)
    if idx.ndim != 1 or not (np.issubdtype(idx.dtype, np.integer) or idx.size == 0):
        raise ValueError(f"indices: expected a 1-D integer array, got dtype {idx.dtype} and "
                         f"shape {idx.shape}.")
    idx = idx.astype(np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= num_examples):
        raise ValueError(f"indices: values must lie in [0, {num_examples}), got range "
                         f"[{idx.min()}, {idx.max()}].")
    return idx


@dataclasses.dataclass(frozen=True, eq=False)
class ArraySource:
    """A source held in memory.

    Fields:
      name:        dataset / split name.
      images:      the examples, (N, *example_shape) with at least one example axis:
                   float32 ((N, H, W, C) images in [-1, 1], (N, L, C) signals, ...) or int32
                   (tokens); treated as read-only.  (Named ``images`` for history; any kind.)
      labels:      int32 (N,) in [0, num_classes).
      num_classes: number of classes K.
      kind:        one of ``KINDS``; None (default) infers it with ``infer_kind``.  Given
                   explicitly it must fit: 'image' float32 rank 3, 'signal' float32 rank 2,
                   'vector' float32 rank 1, 'tokens' int32, 'array' float32.
    """

    name: str
    images: np.ndarray = dataclasses.field(repr=False)
    labels: np.ndarray = dataclasses.field(repr=False)
    num_classes: int
    kind: str | None = None

    def __post_init__(self):
        x = self.images
        if (not isinstance(x, np.ndarray) or x.ndim < 2
                or x.dtype not in (np.dtype(np.float32), np.dtype(np.int32))):
            raise ValueError(f"images: expected a float32 or int32 (N, ...) array with at least "
                             f"one example axis, got {getattr(x, 'dtype', type(x))} "
                             f"{getattr(x, 'shape', '')}.")
        if (not isinstance(self.labels, np.ndarray) or self.labels.shape != x.shape[:1]
                or self.labels.dtype != np.int32):
            raise ValueError(f"labels: expected int32 ({x.shape[0]},), got "
                             f"{getattr(self.labels, 'dtype', type(self.labels))} "
                             f"{getattr(self.labels, 'shape', '')}.")
        inferred = infer_kind(x.shape[1:], x.dtype)
        kind = inferred if self.kind is None else self.kind
        if kind not in KINDS:
            raise ValueError(f"kind: unknown {kind!r}; expected one of {list(KINDS)}.")
        fits = (kind == inferred or (kind == "array" and x.dtype == np.float32))
        if not fits:
            raise ValueError(f"kind: {kind!r} does not fit {x.dtype} examples of shape "
                             f"{x.shape[1:]} (inferred {inferred!r}).")
        object.__setattr__(self, "kind", kind)

    @property
    def example_shape(self) -> tuple[int, ...]:
        """Shape of one example, e.g. (H, W, C) or (L, C)."""
        return tuple(int(d) for d in self.images.shape[1:])

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def get(self, indices) -> tuple[np.ndarray, np.ndarray]:
        """indices int (n,) -> (examples (n, *example_shape) of the stored dtype, labels int32
        (n,)); fresh arrays."""
        idx = check_indices(indices, len(self))
        return self.images[idx], self.labels[idx]

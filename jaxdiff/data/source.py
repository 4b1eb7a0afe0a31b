"""The random-access image source every data consumer reads from.

A source is a finite, indexable, labelled image set: ``get(indices)`` returns the examples at
``indices`` as NHWC float32 images in [-1, 1] and int32 labels.  Randomness (shuffling,
augmentation) lives in ``BatchSampler``, never in a source, so ``get`` is a pure function of the
indices.
"""
from __future__ import annotations

import dataclasses
from typing import Protocol

import numpy as np


class ImageSource(Protocol):
    """Interface of ``ArraySource`` and ``TfdsSource``.

    Attributes:
      name:        human-readable dataset / split name, e.g. 'mnist5k/train'.
      num_classes: number of classes C; labels lie in [0, C) (index C is the null token).
      image_shape: (H, W, C) of every image.
    """

    name: str
    num_classes: int
    image_shape: tuple[int, int, int]

    def __len__(self) -> int: ...

    def get(self, indices) -> tuple[np.ndarray, np.ndarray]:
        """indices int (n,) -> (images float32 (n, H, W, C) in [-1, 1], labels int32 (n,))."""
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
    """An image source held in memory.

    Fields:
      name:        dataset / split name.
      images:      float32 (N, H, W, C) in [-1, 1]; treated as read-only.
      labels:      int32 (N,) in [0, num_classes).
      num_classes: number of classes C.
    """

    name: str
    images: np.ndarray
    labels: np.ndarray
    num_classes: int

    def __post_init__(self):
        if self.images.ndim != 4 or self.images.dtype != np.float32:
            raise ValueError(f"images: expected float32 (N, H, W, C), got {self.images.dtype} "
                             f"{self.images.shape}.")
        if self.labels.shape != self.images.shape[:1] or self.labels.dtype != np.int32:
            raise ValueError(f"labels: expected int32 ({self.images.shape[0]},), got "
                             f"{self.labels.dtype} {self.labels.shape}.")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(int(d) for d in self.images.shape[1:])

    @property
    def example_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.images.shape[1:])

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def get(self, indices) -> tuple[np.ndarray, np.ndarray]:
        """indices int (n,) -> (images float32 (n, H, W, C) in [-1, 1], labels int32 (n,))."""
        idx = check_indices(indices, len(self))
        return self.images[idx], self.labels[idx]

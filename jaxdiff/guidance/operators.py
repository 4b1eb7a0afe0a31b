"""Measurement operators A(x0) for plug-and-play guidance (Steered Diffusion and its kin).

Each operator is a small frozen dataclass registered as a pytree: its arrays (a matrix, a mask,
a blur width) are data leaves, so a new mask or blur width never recompiles; its integers (a
pooling factor, a kernel size) fix shapes and are static.  Calling it maps a batch of clean
estimates x0 (B, ...) to measurements (B, ...), a pure differentiable function of x0, and checks
the shapes first (``check(x_shape)``), raising one ValueError that names both shapes.

    Linear(matrix)          y = A vec(x0)                 (B, ...) -> (B, m)     any data
    Inpaint(mask)           y = mask * x0 (1 = observed)  (B, ...) -> (B, ...)   any data
    AvgPool(factor)         y = f x f block means         (B, H, W, C) -> (B, H/f, W/f, C)
    Grey()                  y = channel mean              (B, H, W, C) -> (B, H, W, 1)
    GaussianBlur(std, size) y = x0 * g (separable, 'same', edge-padded)  (B, H, W, C) -> same

These are the inverse models of Nair et al. (ICCV 2023) for inpainting, super-resolution,
colourisation and deblurring, written as the forward degradations they invert.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def _images(name: str, x_shape: tuple[int, ...]) -> None:
    if len(x_shape) != 4:
        raise ValueError(f"{name}: needs images of shape (B, H, W, C), got {tuple(x_shape)}")


@dataclasses.dataclass(frozen=True)
class Linear:
    """y = A vec(x0): matrix (m, d) with d = prod(example shape); output (B, m)."""

    matrix: Any

    def check(self, x_shape):
        d = int(np.prod(x_shape[1:]))
        if np.ndim(self.matrix) != 2 or np.shape(self.matrix)[1] != d:
            raise ValueError(f"Linear: the matrix has shape {np.shape(self.matrix)}, expected "
                             f"(m, {d}) for examples of shape {tuple(x_shape[1:])}")

    def __call__(self, x0: Array) -> Array:
        self.check(x0.shape)
        return x0.reshape(x0.shape[0], -1) @ jnp.asarray(self.matrix, x0.dtype).T


@dataclasses.dataclass(frozen=True)
class Inpaint:
    """y = mask * x0, mask 1 where a value is observed and 0 where it is to be filled in.

    mask: the example's shape (shared by the batch), with 1 on axes it broadcasts over (e.g.
    (H, W, 1) for all channels), or (B, ...) per example.  Any other shape is refused.
    """

    mask: Any

    def check(self, x_shape):
        ex, shape = tuple(x_shape[1:]), tuple(np.shape(self.mask))
        core = shape[1:] if len(shape) == len(x_shape) else shape
        ok = (len(core) == len(ex) and all(a in (1, b) for a, b in zip(core, ex))
              and (len(shape) != len(x_shape) or shape[0] in (1, x_shape[0])))
        if not ok:
            raise ValueError(f"Inpaint: a mask of shape {shape} does not fit examples of shape "
                             f"{ex} (batch {x_shape[0]}); give the example's shape, with 1 on "
                             f"broadcast axes, or (batch, ...) for one mask per example")

    def __call__(self, x0: Array) -> Array:
        self.check(x0.shape)
        return jnp.asarray(self.mask, x0.dtype) * x0


@dataclasses.dataclass(frozen=True)
class AvgPool:
    """Super-resolution's degradation: means over factor x factor blocks (static factor)."""

    factor: int = 4

    def check(self, x_shape):
        _images("AvgPool", x_shape)
        f = int(self.factor)
        if f < 1 or x_shape[1] % f or x_shape[2] % f:
            raise ValueError(f"AvgPool: factor {self.factor} must be >= 1 and divide the image "
                             f"size {tuple(x_shape[1:3])}")

    def __call__(self, x0: Array) -> Array:
        self.check(x0.shape)
        b, h, w, c = x0.shape
        f = int(self.factor)
        return x0.reshape(b, h // f, f, w // f, f, c).mean(axis=(2, 4))


@dataclasses.dataclass(frozen=True)
class Grey:
    """Colourisation's degradation: the channel mean, (B, H, W, C) -> (B, H, W, 1)."""

    def check(self, x_shape):
        _images("Grey", x_shape)

    def __call__(self, x0: Array) -> Array:
        self.check(x0.shape)
        return jnp.mean(x0, axis=-1, keepdims=True)


def gaussian_kernel(std, size: int) -> Array:
    """(size,) normalised taps exp(-u^2 / (2 std^2)), u = -(size // 2) .. size // 2."""
    u = jnp.arange(size, dtype=jnp.float32) - (size // 2)
    w = jnp.exp(-0.5 * (u / jnp.asarray(std, jnp.float32)) ** 2)
    return w / jnp.sum(w)


@dataclasses.dataclass(frozen=True)
class GaussianBlur:
    """Deblurring's degradation: a separable Gaussian blur of width ``std`` (traced) with an odd
    kernel ``size`` (static), 'same' output size with edge padding, per channel."""

    std: Any = 2.0
    size: int = 9

    def check(self, x_shape):
        _images("GaussianBlur", x_shape)
        if int(self.size) < 1 or int(self.size) % 2 == 0:
            raise ValueError(f"GaussianBlur: the kernel size must be odd and >= 1, got "
                             f"{self.size}")

    def __call__(self, x0: Array) -> Array:
        self.check(x0.shape)
        k = int(self.size)
        w = gaussian_kernel(self.std, k).astype(x0.dtype)
        r = k // 2
        h, wd = x0.shape[1], x0.shape[2]
        p = jnp.pad(x0, ((0, 0), (r, r), (0, 0), (0, 0)), mode="edge")
        x = sum(w[i] * p[:, i:i + h] for i in range(k))
        p = jnp.pad(x, ((0, 0), (0, 0), (r, r), (0, 0)), mode="edge")
        return sum(w[i] * p[:, :, i:i + wd] for i in range(k))


jax.tree_util.register_dataclass(Linear, data_fields=["matrix"], meta_fields=[])
jax.tree_util.register_dataclass(Inpaint, data_fields=["mask"], meta_fields=[])
jax.tree_util.register_dataclass(AvgPool, data_fields=[], meta_fields=["factor"])
jax.tree_util.register_dataclass(Grey, data_fields=[], meta_fields=[])
jax.tree_util.register_dataclass(GaussianBlur, data_fields=["std"], meta_fields=["size"])

OPERATORS = ("inpaint", "super_resolution", "colorize", "deblur")
"""Operator names of ``config.guidance.operator`` (``Linear`` is for the Python API)."""


def random_mask(example_shape: tuple[int, ...], fraction: float, seed: int = 0) -> np.ndarray:
    """A fixed mask of ``example_shape`` hiding about ``fraction`` of the values: 1 where
    u >= fraction for u ~ U[0, 1) i.i.d. from ``seed`` (images: per pixel, shared by the
    channels)."""
    rng = np.random.default_rng(seed)
    shape = tuple(example_shape)
    draw = shape[:-1] + (1,) if len(shape) == 3 else shape
    return (rng.uniform(size=draw) >= fraction).astype(np.float32)

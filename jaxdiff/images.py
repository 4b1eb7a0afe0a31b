"""Image conversion and sample grids.

Images are NHWC float32 in [-1, 1]; conversion to uint8 is ``clip(round(x * 127.5 + 127.5))``
(docs/conventions.md).
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image


def to_uint8(images) -> np.ndarray:
    """(..., H, W, C) float in [-1, 1] -> uint8 in [0, 255]."""
    x = np.asarray(images, np.float32)
    return np.clip(np.round(x * 127.5 + 127.5), 0, 255).astype(np.uint8)


def make_grid(images, rows: int, pad: int = 1) -> np.ndarray:
    """Tiles (N, H, W, C) uint8 images into a (rows x ceil(N / rows)) grid, row-major.

    Returns an (rows (H + pad) + pad, cols (W + pad) + pad, C) uint8 array with a white border.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"make_grid needs uint8 images of shape (N, H, W, C), got "
                         f"{images.dtype} {images.shape}")
    n, h, w, c = images.shape
    cols = -(-n // rows)
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, np.uint8)
    for i in range(n):
        r, col = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[y:y + h, x:x + w] = images[i]
    return grid


def save_grid(path: str, images, rows: int, upscale: int = 1) -> str:
    """Writes float images in [-1, 1] (N, H, W, C) as a PNG grid; returns the path."""
    grid = make_grid(to_uint8(images), rows)
    if upscale > 1:
        grid = np.repeat(np.repeat(grid, upscale, 0), upscale, 1)
    img = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    img.save(path)
    return path

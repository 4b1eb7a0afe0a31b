"""Deterministic image augmentation applied by the input pipeline."""
from __future__ import annotations

import numpy as np


def hflip(images: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mirrors images left-right where ``mask`` is True.

    Args:
      images: (n, H, W, C) array, any dtype.
      mask:   bool (n,), e.g. ``BatchSampler.flips_for_step(step)``.
    Returns:
      (n, H, W, C) array of the same dtype; a new array.
    """
    images, mask = np.asarray(images), np.asarray(mask)
    if images.ndim != 4 or mask.shape != images.shape[:1] or mask.dtype != np.bool_:
        raise ValueError(f"mask: expected bool ({images.shape[:1]}) for images (n, H, W, C), got "
                         f"{mask.dtype} {mask.shape} for images {images.shape}.")
    return np.where(mask[:, None, None, None], images[:, :, ::-1], images)

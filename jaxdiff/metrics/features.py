"""Feature networks as the metrics see them: a name, a checksum and a batched forward pass.

Both the FID Inception network (``jaxdiff.metrics.inception.load_inception``) and the project's
own classifier (``jaxdiff.classifier_train.load_feature_network``) are returned as a
``FeatureNetwork``; reference statistics record its ``name`` and ``checksum`` so statistics
computed with one network are never compared with features of another.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Callable

import jax
import numpy as np


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class FeatureNetwork:
    """A frozen feature extractor.

    Fields:
      name:        identifies the architecture / weights, e.g. 'pt_inception-2015-12-05'.
      checksum:    hex SHA-256 of the weights file the parameters came from.
      feature_dim: d, width of ``features``.
      num_classes: K, width of ``logits``.
      apply:       jitted ``images float32 (B, H, W, C) in [-1, 1] -> (features (B, d),
                   logits (B, K))``, float32.
      batch_size:  images per call of ``apply``; the last batch is zero-padded to this size so
                   ``apply`` compiles once.
    """

    name: str
    checksum: str
    feature_dim: int
    num_classes: int
    apply: Callable
    batch_size: int = 64

    def features_and_logits(self, images) -> tuple[np.ndarray, np.ndarray]:
        """images (N, H, W, C) in [-1, 1] -> (features float32 (N, d), logits float32 (N, K))."""
        images = np.asarray(images, np.float32)
        if images.ndim != 4:
            raise ValueError(f"images: expected (N, H, W, C), got shape {images.shape}")
        n = images.shape[0]
        size = max(1, min(self.batch_size, n))
        feats, logits = [], []
        for start in range(0, n, size):
            batch = images[start:start + size]
            count = batch.shape[0]
            if count < size:
                pad = np.zeros((size - count,) + batch.shape[1:], np.float32)
                batch = np.concatenate([batch, pad])
            f, l = jax.device_get(self.apply(batch))
            feats.append(np.asarray(f[:count], np.float32))
            logits.append(np.asarray(l[:count], np.float32))
        if not feats:
            return (np.zeros((0, self.feature_dim), np.float32),
                    np.zeros((0, self.num_classes), np.float32))
        return np.concatenate(feats), np.concatenate(logits)

    def features(self, images) -> np.ndarray:
        """images (N, H, W, C) in [-1, 1] -> float32 (N, d)."""
        return self.features_and_logits(images)[0]

    def logits(self, images) -> np.ndarray:
        """images (N, H, W, C) in [-1, 1] -> float32 (N, K)."""
        return self.features_and_logits(images)[1]

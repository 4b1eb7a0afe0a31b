"""A small CNN image classifier whose penultimate layer is the project's own feature space.

  x (B, H, W, C) in [-1, 1]
    -> per block i: [3x3 conv -> GroupNorm -> SiLU] x 2, then 2x2 average pool (not after the
       last block)                                       channels ``channels[i]``
    -> global average pool -> Dense -> SiLU            = features (B, feature_dim)
    -> Dense                                           = logits (B, num_classes)

GroupNorm (Wu & He 2018) keeps the network free of batch statistics, so ``nnx.split`` gives
parameters only and the forward pass is a pure function of (params, x).  Used to compute
Fréchet distances / precision-recall in a feature space trained on the dataset itself (for data
where the ImageNet Inception network is a poor fit, e.g. 8x8 digits) and to score class
accuracy of conditional samples.
"""
from __future__ import annotations

import ml_collections
import jax
import jax.numpy as jnp
from flax import nnx

from jaxdiff.models import layers

Array = jax.Array


def default_classifier_config() -> ml_collections.ConfigDict:
    """Architecture fields: channels per block, feature width, GroupNorm groups."""
    return ml_collections.ConfigDict(dict(channels=(32, 64, 128), feature_dim=128, num_groups=8))


def check_classifier_config(cfg, image_shape, num_classes: int) -> None:
    """Raises ValueError naming the first bad field of ``cfg`` or argument."""
    channels = tuple(cfg.channels)
    if not channels or any(not isinstance(c, int) or c < 1 for c in channels):
        raise ValueError(f"classifier.channels: expected positive ints, got {cfg.channels!r}")
    if not isinstance(cfg.num_groups, int) or cfg.num_groups < 1 or any(
            c % cfg.num_groups for c in channels):
        raise ValueError(f"classifier.num_groups: must divide every channel count {channels}, "
                         f"got {cfg.num_groups!r}")
    if not isinstance(cfg.feature_dim, int) or cfg.feature_dim < 1:
        raise ValueError(f"classifier.feature_dim: expected an int >= 1, got {cfg.feature_dim!r}")
    if len(tuple(image_shape)) != 3 or min(image_shape) < 1:
        raise ValueError(f"image_shape: expected (H, W, C), got {image_shape!r}")
    if min(image_shape[:2]) < 2 ** (len(channels) - 1):
        raise ValueError(f"image_shape {tuple(image_shape)}: too small for "
                         f"{len(channels) - 1} 2x downsamplings")
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes: expected an int >= 2, got {num_classes!r}")


class _ConvNormAct(nnx.Module):
    def __init__(self, cin: int, cout: int, groups: int, *, rngs: nnx.Rngs):
        self.conv = nnx.Conv(cin, cout, (3, 3), padding="SAME", rngs=rngs)
        self.norm = layers.GroupNorm(cout, num_groups=groups, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        return nnx.silu(self.norm(self.conv(x)))


class Classifier(nnx.Module):
    """CNN classifier with ``features(x) -> (B, feature_dim)`` and ``logits(x) -> (B, K)``."""

    def __init__(self, image_shape, num_classes: int, channels=(32, 64, 128),
                 feature_dim: int = 128, num_groups: int = 8, *, rngs: nnx.Rngs):
        cin = int(image_shape[-1])
        layers = []
        for c in channels:
            layers.append((_ConvNormAct(cin, c, num_groups, rngs=rngs),
                           _ConvNormAct(c, c, num_groups, rngs=rngs)))
            cin = c
        self.blocks = nnx.List([nnx.List(pair) for pair in layers])
        self.embed = nnx.Linear(cin, feature_dim, rngs=rngs)
        self.head = nnx.Linear(feature_dim, num_classes, rngs=rngs)

    def features(self, x: Array) -> Array:
        """x float32 (B, H, W, C) in [-1, 1] -> penultimate features float32 (B, feature_dim)."""
        h = x.astype(jnp.float32)
        for i, (first, second) in enumerate(self.blocks):
            h = second(first(h))
            if i + 1 < len(self.blocks):
                h = nnx.avg_pool(h, (2, 2), strides=(2, 2))
        return nnx.silu(self.embed(h.mean(axis=(1, 2))))

    def logits(self, x: Array) -> Array:
        """x float32 (B, H, W, C) in [-1, 1] -> class logits float32 (B, num_classes)."""
        return self.head(self.features(x))

    def __call__(self, x: Array) -> tuple[Array, Array]:
        """x -> (features (B, feature_dim), logits (B, num_classes))."""
        f = self.features(x)
        return f, self.head(f)


def build_classifier(cfg, image_shape, num_classes: int, rngs: nnx.Rngs) -> Classifier:
    """Validates ``cfg`` (see ``default_classifier_config``) and builds the network."""
    check_classifier_config(cfg, image_shape, num_classes)
    return Classifier(tuple(int(d) for d in image_shape), int(num_classes),
                      channels=tuple(cfg.channels), feature_dim=int(cfg.feature_dim),
                      num_groups=int(cfg.num_groups), rngs=rngs)

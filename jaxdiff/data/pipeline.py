"""Prefetching batch iterator: grain threads over the stateless ``BatchSampler``.

Element k of the dataset is the batch of step ``start_step + k``, computed as
``source.get(sampler.indices_for_step(step))`` (plus flips), so a run resumed at step s builds
the pipeline with ``start_step=s`` and sees exactly the batches it would have seen.
"""
from __future__ import annotations

import grain
import numpy as np

from jaxdiff.data.augment import hflip
from jaxdiff.data.sampler import BatchSampler
from jaxdiff.data.source import ImageSource


def load_batch(source: ImageSource, sampler: BatchSampler, step: int,
               random_flip: bool) -> tuple[np.ndarray, np.ndarray]:
    """This host's batch of ``step``: examples (B/P, *source.example_shape) (images float32 in
    [-1, 1]), labels int32 (B/P,).  ``random_flip`` needs (H, W, C) images (``hflip``)."""
    images, labels = source.get(sampler.indices_for_step(step))
    if random_flip:
        images = hflip(images, sampler.flips_for_step(step))
    return images, labels


def batch_dataset(source: ImageSource, sampler: BatchSampler, *, start_step: int,
                  num_steps: int, random_flip: bool) -> grain.MapDataset:
    """grain MapDataset of ``num_steps`` batches; element k is ``load_batch(..., start_step + k)``."""
    if start_step < 0 or num_steps < 1:
        raise ValueError(f"start_step / num_steps: need start_step >= 0 and num_steps >= 1, got "
                         f"{start_step} / {num_steps}.")
    steps = grain.MapDataset.range(start_step, start_step + num_steps)
    return steps.map(lambda step: load_batch(source, sampler, int(step), random_flip))


def batch_iterator(source: ImageSource, sampler: BatchSampler, *, start_step: int,
                   num_steps: int, random_flip: bool = False, num_threads: int = 0,
                   prefetch_batches: int = 2):
    """Iterator over the batches of steps [start_step, start_step + num_steps), in order.

    ``num_threads`` grain threads read up to ``prefetch_batches`` batches ahead (0 threads: read
    lazily in the calling thread).  Yields (examples (B/P, *example_shape), labels int32 (B/P,)).
    """
    dataset = batch_dataset(source, sampler, start_step=start_step, num_steps=num_steps,
                            random_flip=random_flip)
    options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch_batches)
    return iter(dataset.to_iter_dataset(options))

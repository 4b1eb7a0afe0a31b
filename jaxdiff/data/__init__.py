"""Data: example sources (embedded digits / MNIST-5k images, embedded signals1d signals, TFDS
images) and the stateless batch order.

  src = get_source(data_cfg, split="train")            # or "heldout" (alias "test")
  x, labels = src.get(indices)                         # (n, *src.example_shape), int32 (n,)
  src.kind                                             # 'image' (H, W, C) | 'signal' (L, C)
  sampler = BatchSampler(num_examples=len(src), global_batch_size=B, seed=s,
                         process_index=p, process_count=P)
  idx = sampler.indices_for_step(step)                 # this host's (B // P,) slice

``batch_iterator`` wraps the two in a prefetching grain pipeline.
"""
from jaxdiff.data.augment import hflip
from jaxdiff.data.config import (DATASET_NAMES, EMBEDDED_EXAMPLE_SHAPES, default_data_config,
                                 validate_data_config)
from jaxdiff.data.factory import dataset_name, get_source
from jaxdiff.data.pipeline import batch_dataset, batch_iterator, load_batch
from jaxdiff.data.sampler import BatchSampler
from jaxdiff.data.source import KINDS, ArraySource, ImageSource, infer_kind
from jaxdiff.data.tfds_source import DatasetNotPreparedError, prepare_command

__all__ = ["ArraySource", "BatchSampler", "DATASET_NAMES", "DatasetNotPreparedError",
           "EMBEDDED_EXAMPLE_SHAPES", "ImageSource", "KINDS", "batch_dataset", "batch_iterator",
           "dataset_name", "default_data_config", "get_source", "hflip", "infer_kind", "load_batch",
           "prepare_command", "validate_data_config"]

"""``get_source``: a data config and a split name -> an image source."""
from __future__ import annotations

import ml_collections

from jaxdiff.data.config import canonical_split, validate_data_config
from jaxdiff.data.embedded import embedded_source
from jaxdiff.data.source import ImageSource
from jaxdiff.data.tfds_source import open_tfds_source


def get_source(data_cfg: ml_collections.ConfigDict, split: str = "train") -> ImageSource:
    """The ``split`` ('train' | 'heldout', alias 'test') of the dataset ``data_cfg`` describes.

    The result has ``name``, ``num_classes``, ``image_shape`` (H, W, C), ``len()`` and
    ``get(indices) -> (images float32 (n, H, W, C) in [-1, 1], labels int32 (n,))``.

    Raises:
      ValueError: an invalid config field or split (named in the message).
      DatasetNotPreparedError: a TFDS dataset is not prepared (message gives the command).
    """
    validate_data_config(data_cfg)
    split = canonical_split(split)
    if data_cfg.name == "tfds":
        return open_tfds_source(data_cfg, split)
    return embedded_source(data_cfg.name, split)

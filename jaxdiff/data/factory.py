"""``get_source``: a data config and a split name -> an example source (images or signals)."""
from __future__ import annotations

import ml_collections

from jaxdiff.data.config import canonical_split, validate_data_config
from jaxdiff.data.embedded import embedded_source
from jaxdiff.data.source import ImageSource
from jaxdiff.data.tfds_source import open_tfds_source


def dataset_name(data_cfg) -> str:
    """The dataset's name: ``tfds_name`` for TFDS data, else ``name`` (e.g. 'mnist5k')."""
    return data_cfg.tfds_name if data_cfg.name == "tfds" else data_cfg.name


def get_source(data_cfg: ml_collections.ConfigDict, split: str = "train") -> ImageSource:
    """The ``split`` ('train' | 'heldout', alias 'test') of the dataset ``data_cfg`` describes.

    The result has ``name``, ``num_classes``, ``example_shape`` ((H, W, C) images, (L, C)
    signals), ``kind`` ('image' | 'signal'), ``len()`` and
    ``get(indices) -> (examples float32 (n, *example_shape), labels int32 (n,))``; images lie
    in [-1, 1].

    Raises:
      ValueError: an invalid config field or split (named in the message).
      DatasetNotPreparedError: a TFDS dataset is not prepared (message gives the command).
    """
    validate_data_config(data_cfg)
    split = canonical_split(split)
    if data_cfg.name == "tfds":
        return open_tfds_source(data_cfg, split)
    return embedded_source(data_cfg.name, split)

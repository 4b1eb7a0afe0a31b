"""TensorFlow Datasets as a random-access image source, without TensorFlow at runtime.

Reads prepared ``array_record`` data through ``tfds.data_source`` (random access by index) and
decodes each requested example with numpy / Pillow.  Preparing a dataset (download + conversion)
is a one-off step that does need TensorFlow; ``open_tfds_source`` raises
``DatasetNotPreparedError`` with the exact command when the data is missing.
"""
from __future__ import annotations

import numpy as np
import ml_collections
from PIL import Image

from jaxdiff.errors import ConfigError, MissingInputError
from jaxdiff.data.source import check_indices


class DatasetNotPreparedError(MissingInputError):
    """A TFDS dataset has no prepared array_record files in the configured data_dir."""


def prepare_command(tfds_name: str, data_dir: str) -> str:
    """The shell command that prepares ``tfds_name`` as array_record in ``data_dir`` ('' = default)."""
    dir_flag = f" --data_dir={data_dir}" if data_dir else ""
    return f"tfds build {tfds_name}{dir_flag} --file_format=array_record"


def center_crop_resize(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 (h, w, c) -> uint8 (size, size, c): central square crop, then antialiased bicubic."""
    h, w, c = image.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = image[top:top + side, left:left + side]
    if side == size:
        return square
    pil = Image.fromarray(square[..., 0] if c == 1 else square)
    resized = np.asarray(pil.resize((size, size), resample=Image.Resampling.BICUBIC))
    return resized.reshape(size, size, c)


class TfdsSource:
    """One split of a prepared TFDS image dataset.

    Attributes:
      name:          '<tfds_name>/<tfds split>'.
      num_classes:   classes of the ``label_key`` ClassLabel; 1 for unlabelled data (label_key '').
      example_shape: (S, S, C); S = image_size, or the native size when image_size is 0.
      kind:          'image'.
    """

    kind = "image"

    def __init__(self, data_source, *, name: str, image_key: str, label_key: str,
                 num_classes: int, example_shape: tuple[int, int, int]):
        self._data_source = data_source
        self.name = name
        self.num_classes = num_classes
        self.example_shape = tuple(int(d) for d in example_shape)
        self._image_key = image_key
        self._label_key = label_key

    def __len__(self) -> int:
        return len(self._data_source)

    def get(self, indices) -> tuple[np.ndarray, np.ndarray]:
        """indices int (n,) -> (images float32 (n, S, S, C) in [-1, 1], labels int32 (n,)).

        Unlabelled datasets return label 0 for every image.
        """
        idx = check_indices(indices, len(self))
        size, _, channels = self.example_shape
        images = np.empty((idx.size, size, size, channels), np.uint8)
        labels = np.zeros((idx.size,), np.int32)
        for row, i in enumerate(idx):
            example = self._data_source[int(i)]
            images[row] = center_crop_resize(np.asarray(example[self._image_key]), size)
            if self._label_key:
                labels[row] = example[self._label_key]
        return images.astype(np.float32) / 127.5 - 1.0, labels


def _open_data_source(tfds_name: str, tfds_split: str, data_dir: str, split_field: str):
    """``tfds.data_source`` with errors that name the config field or the prepare command."""
    import tensorflow_datasets as tfds
    from absl import logging

    # TFDS logs a warning per empty variant folder it looks into; the error below says it all.
    verbosity = logging.get_verbosity()
    logging.set_verbosity(logging.ERROR)
    try:
        return tfds.data_source(tfds_name, split=tfds_split, data_dir=data_dir or None,
                                download=False)
    except tfds.core.DatasetNotFoundError as err:
        raise ConfigError(f"config.data.tfds_name: unknown TFDS dataset {tfds_name!r}.") from err
    except Exception as err:
        builder = tfds.builder(tfds_name, data_dir=data_dir or None)
        if not builder.is_prepared():
            where = data_dir or "the default TFDS data_dir (~/tensorflow_datasets)"
            raise DatasetNotPreparedError(
                f"TFDS dataset {tfds_name!r} is not prepared in {where}. Prepare it once "
                f"(needs TensorFlow: pip install 'jaxdiff[tf]'), then rerun:\n"
                f"  {prepare_command(tfds_name, data_dir)}") from err
        known = sorted(builder.info.splits)
        if tfds_split.split("[")[0] not in known:
            raise ConfigError(f"config.data.{split_field}: TFDS dataset {tfds_name!r} has no "
                             f"split {tfds_split!r}; it has {known}.") from err
        raise
    finally:
        logging.set_verbosity(verbosity)


def open_tfds_source(cfg: ml_collections.ConfigDict, split: str) -> TfdsSource:
    """Opens our ``split`` ('train' | 'heldout') of the TFDS dataset described by data config ``cfg``.

    Raises:
      DatasetNotPreparedError: the data is not prepared in ``cfg.tfds_data_dir``; the message
        gives the ``tfds build ... --file_format=array_record`` command.
      ValueError: a field of ``cfg`` does not match the dataset (named in the message).
    """
    split_field = "train_split" if split == "train" else "heldout_split"
    tfds_split = cfg[split_field]
    data_source = _open_data_source(cfg.tfds_name, tfds_split, cfg.tfds_data_dir, split_field)
    features = data_source.dataset_info.features
    if cfg.image_key not in features:
        raise ConfigError(f"config.data.image_key: {cfg.tfds_name!r} has no feature "
                         f"{cfg.image_key!r}; features are {sorted(features.keys())}.")
    if cfg.label_key and cfg.label_key not in features:
        raise ConfigError(f"config.data.label_key: {cfg.tfds_name!r} has no feature "
                         f"{cfg.label_key!r}; features are {sorted(features.keys())} "
                         f"(use '' for unlabelled data).")
    height, width, channels = features[cfg.image_key].shape
    size = cfg.image_size or (height if height == width else None)
    if size is None:
        raise ConfigError(f"config.data.image_size: {cfg.tfds_name!r} images are "
                         f"{height}x{width}; set image_size > 0.")
    if channels not in (1, 3):
        raise ConfigError(f"config.data.image_key: feature {cfg.image_key!r} has {channels} "
                         f"channels; expected 1 or 3.")
    num_classes = features[cfg.label_key].num_classes if cfg.label_key else 1
    return TfdsSource(data_source, name=f"{cfg.tfds_name}/{tfds_split}", image_key=cfg.image_key,
                      label_key=cfg.label_key, num_classes=int(num_classes),
                      example_shape=(int(size), int(size), int(channels)))

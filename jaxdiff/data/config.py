"""The data section of a config: defaults for every dataset and validation.

Every data config has the same fields, whatever the dataset, so configs can be overridden from
the command line uniformly (``--config.data.image_size=64``):

  name            'digits' | 'mnist5k' (embedded images) | 'signals1d' (embedded (64, 2)
                  signals, generated in code) | 'tfds' (TensorFlow Datasets); no network for
                  any but 'tfds'.
  tfds_name       TFDS dataset name, e.g. 'cifar10', 'downsampled_imagenet/64x64' ('' unless
                  name == 'tfds').
  tfds_data_dir   directory of prepared TFDS data ('' = TFDS default, ~/tensorflow_datasets).
  train_split     TFDS split read as our "train" split (e.g. 'train').
  heldout_split   TFDS split read as our "heldout" split (e.g. 'test', 'validation').
  image_key       TFDS feature holding the uint8 image (H, W, C).
  label_key       TFDS ClassLabel feature; '' = unlabelled (one class, every label 0).
  image_size      side S of the square (S, S, C) images the source returns; for embedded images
                  it must equal the native size (8 for digits, 32 for mnist5k); for TFDS, 0 keeps
                  the native size and any other value centre-crops to a square and resizes.
                  Meaningless for signals: must be 0 for 'signals1d'.
  random_flip     whether the training pipeline flips images horizontally (see
                  ``BatchSampler.flips_for_step``); must be False for signals.
  num_threads     grain reader threads in ``batch_iterator`` (0 = read in the calling thread).
  prefetch_batches  batches grain reads ahead in ``batch_iterator``.
"""
from __future__ import annotations

import ml_collections

from jaxdiff.errors import ConfigError

EMBEDDED_IMAGE_SIZES = {"digits": 8, "mnist5k": 32}
EMBEDDED_SIGNAL_SHAPES = {"signals1d": (64, 2)}  # (L, C) of the embedded signal sets
# Example shape of every embedded dataset (TFDS shapes depend on the config).
EMBEDDED_EXAMPLE_SHAPES = {**{name: (size, size, 1) for name, size in EMBEDDED_IMAGE_SIZES.items()},
                           **EMBEDDED_SIGNAL_SHAPES}
DATASET_NAMES = (*EMBEDDED_IMAGE_SIZES, *EMBEDDED_SIGNAL_SHAPES, "tfds")

# TFDS datasets with known-good defaults: (image_size, train_split, heldout_split, label_key).
TFDS_PRESETS = {
    "mnist": (28, "train", "test", "label"),
    "fashion_mnist": (28, "train", "test", "label"),
    "cifar10": (32, "train", "test", "label"),
    "downsampled_imagenet/32x32": (32, "train", "validation", ""),
    "downsampled_imagenet/64x64": (64, "train", "validation", ""),
}

SPLIT_ALIASES = {"train": "train", "heldout": "heldout", "test": "heldout"}


def default_data_config(name: str = "digits") -> ml_collections.ConfigDict:
    """Returns a data ConfigDict with every field set.

    Args:
      name: 'digits', 'mnist5k', 'signals1d' (image_size 0, random_flip False), 'tfds'
        (cifar10 defaults) or a ``TFDS_PRESETS`` key such as 'cifar10', which gives
        ``name='tfds'`` with that ``tfds_name``.
    Raises:
      ValueError: unknown ``name``.
    """
    cfg = ml_collections.ConfigDict()
    cfg.name = name
    cfg.tfds_name = ""
    cfg.tfds_data_dir = ""
    cfg.train_split = "train"
    cfg.heldout_split = "test"
    cfg.image_key = "image"
    cfg.label_key = "label"
    cfg.image_size = 0
    cfg.random_flip = False
    cfg.num_threads = 0
    cfg.prefetch_batches = 2
    if name in EMBEDDED_IMAGE_SIZES:
        cfg.image_size = EMBEDDED_IMAGE_SIZES[name]
        return cfg
    if name in EMBEDDED_SIGNAL_SHAPES:
        return cfg
    tfds_name = "cifar10" if name == "tfds" else name
    if tfds_name not in TFDS_PRESETS:
        raise ValueError(f"default_data_config: unknown dataset {name!r}; expected one of "
                         f"{list(DATASET_NAMES) + sorted(TFDS_PRESETS)}.")
    cfg.name = "tfds"
    cfg.tfds_name = tfds_name
    (cfg.image_size, cfg.train_split, cfg.heldout_split, cfg.label_key) = TFDS_PRESETS[tfds_name]
    cfg.random_flip = tfds_name not in ("mnist", "fashion_mnist")
    return cfg


def canonical_split(split: str) -> str:
    """Maps 'train' -> 'train' and 'heldout' / 'test' -> 'heldout'; ValueError otherwise."""
    if split not in SPLIT_ALIASES:
        raise ValueError(f"split: unknown split {split!r}; expected one of {sorted(SPLIT_ALIASES)}.")
    return SPLIT_ALIASES[split]


def validate_data_config(cfg: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the first bad field of a data config (``config.data.<field>``)."""
    expected = default_data_config("digits")
    for field in expected:
        if field not in cfg:
            raise ConfigError(f"config.data.{field}: missing field; start from "
                             f"jaxdiff.data.default_data_config().")
    name = cfg.name
    if name not in DATASET_NAMES:
        raise ConfigError(f"config.data.name: unknown dataset {name!r}; expected one of "
                         f"{list(DATASET_NAMES)} (TFDS datasets use name='tfds' and tfds_name).")
    size = cfg.image_size
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ConfigError(f"config.data.image_size: must be a non-negative int, got {size!r}.")
    if name in EMBEDDED_IMAGE_SIZES and size != EMBEDDED_IMAGE_SIZES[name]:
        raise ConfigError(f"config.data.image_size: dataset {name!r} has fixed size "
                         f"{EMBEDDED_IMAGE_SIZES[name]}, got {size}.")
    if name in EMBEDDED_SIGNAL_SHAPES:
        if size != 0:
            raise ConfigError(f"config.data.image_size: dataset {name!r} holds "
                             f"{EMBEDDED_SIGNAL_SHAPES[name]} signals, not images; image_size "
                             f"must be 0, got {size}.")
        if cfg.random_flip is not False:
            raise ConfigError(f"config.data.random_flip: dataset {name!r} holds signals; "
                             f"horizontal flips apply to images only, got {cfg.random_flip!r}.")
    if name == "tfds":
        for field in ("tfds_name", "train_split", "heldout_split", "image_key"):
            if not isinstance(cfg[field], str) or not cfg[field]:
                raise ConfigError(f"config.data.{field}: must be a non-empty string for "
                                 f"name='tfds', got {cfg[field]!r}.")
    for field in ("tfds_data_dir", "label_key"):
        if not isinstance(cfg[field], str):
            raise ConfigError(f"config.data.{field}: must be a string, got {cfg[field]!r}.")
    if not isinstance(cfg.random_flip, bool):
        raise ConfigError(f"config.data.random_flip: must be a bool, got {cfg.random_flip!r}.")
    for field, low in (("num_threads", 0), ("prefetch_batches", 1)):
        value = cfg[field]
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ConfigError(f"config.data.{field}: must be an int >= {low}, got {value!r}.")

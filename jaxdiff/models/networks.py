"""The network registry and what every network shares: common config fields and their check.

Each network module registers itself on import:

    NETWORKS.register("unet", build, defaults=default_unet_config, check=check,
                      test_shape=(8, 8, 1), test_overrides=dict(base_channels=8, ...))

  build(model_cfg, example_shape, num_classes, rngs) -> nnx.Module
      the network ``net(x, c_noise, cond, dropout_key=None)``; x (B, *example_shape) ->
      (B, *example_shape) float32.  Called only after ``check_model_config`` passed.
  defaults() -> ConfigDict
      every field of the network, common ones first (``common_defaults``).
  check(cfg, example_shape, num_classes)
      the network's own fields (and the example rank it needs); raises ValueError whose
      message starts with ``config.model.<field>`` (or ``data_shape`` for the argument).
  meta (optional, read by tests/test_model_conformance.py):
      test_shape       a small example shape the network accepts (default (8, 8, 1));
      test_overrides   field values that make ``defaults()`` tiny for tests;
      test_bad_fields  {field: value} pairs the network's own ``check`` must reject.

The common fields (name, dropout, cond_dim, noise_scale, dtype, guidance_embedding) are checked
once, here, for every network.
"""
from __future__ import annotations

import numbers

import ml_collections

from jaxdiff.errors import ConfigError
from jaxdiff.models.layers import DTYPES
from jaxdiff.registry import Registry

NETWORKS = Registry("network")

COMMON_FIELDS = ("name", "dropout", "cond_dim", "noise_scale", "dtype",
                 "guidance_embedding")


def common_defaults(name: str) -> ml_collections.ConfigDict:
    """The fields every network has, at their defaults, with ``name`` set."""
    return ml_collections.ConfigDict(dict(
        name=name,
        dropout=0.0,         # dropout rate, used only when a dropout key is passed
        cond_dim=0,          # > 0: continuous condition vectors of this width; 0: class labels
        noise_scale=1000.0,  # c_noise multiplier before the sinusoidal embedding
        dtype="float32",     # compute dtype: 'float32' | 'bfloat16' (params stay float32)
        guidance_embedding=False,  # also embed a guidance weight w (guided distillation)
    ))


def common_kwargs(cfg) -> dict:
    """Constructor keywords of the common fields: dropout, cond_dim, noise_scale, dtype,
    guidance_embedding."""
    return dict(dropout=float(cfg.dropout), cond_dim=int(cfg.cond_dim),
                noise_scale=float(cfg.noise_scale), dtype=DTYPES[cfg.dtype],
                guidance_embedding=bool(cfg.get("guidance_embedding", False)))


def check_common(cfg, example_shape, num_classes: int) -> None:
    """Checks the arguments and the common fields of a model config whose name is registered.

    Raises ValueError: an unknown or missing field (the known fields are the network's
    ``defaults()``), an example shape that is not a tuple of positive ints, a negative
    ``num_classes``, or an invalid common field.
    """
    name = cfg.get("name")
    known = tuple(NETWORKS.default_config(name, "model.name").keys())
    for field in cfg.keys():
        if field not in known:
            raise ConfigError(f"config.model.{field}: unknown field for network {name!r} "
                             f"(known: {sorted(known)})")
    for field in known:
        if field not in cfg:
            raise ConfigError(f"config.model.{field} is missing for network {name!r}")
    try:
        shape = tuple(example_shape)
    except TypeError:
        shape = ()
    if (not shape or any(not isinstance(d, numbers.Integral) or isinstance(d, bool) or d < 1
                         for d in shape)):
        raise ValueError(f"data_shape must be a non-empty tuple of positive ints, "
                         f"got {example_shape!r}")
    if (not isinstance(num_classes, numbers.Integral) or isinstance(num_classes, bool)
            or num_classes < 0):
        raise ValueError(f"num_classes must be an int >= 0, got {num_classes!r}")
    if not isinstance(cfg.dropout, numbers.Real) or not 0.0 <= cfg.dropout < 1.0:
        raise ConfigError(f"config.model.dropout must be in [0, 1), got {cfg.dropout!r}")
    if not isinstance(cfg.cond_dim, int) or isinstance(cfg.cond_dim, bool) or cfg.cond_dim < 0:
        raise ConfigError(f"config.model.cond_dim must be an int >= 0, got {cfg.cond_dim!r}")
    if cfg.cond_dim > 0 and num_classes > 0:
        raise ConfigError(f"config.model.cond_dim = {cfg.cond_dim} selects continuous "
                         f"conditioning, but num_classes = {num_classes}; use one or the other")
    if not isinstance(cfg.noise_scale, numbers.Real) or not cfg.noise_scale > 0:
        raise ConfigError(f"config.model.noise_scale must be > 0, got {cfg.noise_scale!r}")
    if not isinstance(cfg.guidance_embedding, bool):
        raise ConfigError(f"config.model.guidance_embedding must be True or False, "
                         f"got {cfg.guidance_embedding!r}")
    if cfg.dtype not in DTYPES:
        raise ConfigError(f"config.model.dtype: unknown {cfg.dtype!r}; choose one of "
                         f"{list(DTYPES)}")


def check_exit_heads(cfg) -> None:
    """A staged network's ``exit_heads`` field must be a bool (DeeDiff early exit)."""
    if not isinstance(cfg.exit_heads, bool):
        raise ConfigError(f"config.model.exit_heads must be True or False, "
                          f"got {cfg.exit_heads!r}")


def check_rank(example_shape, rank: int, layout: str) -> tuple[int, ...]:
    """``example_shape`` as a tuple of ints of length ``rank``, else ValueError naming
    ``data_shape`` and the expected ``layout`` (e.g. '(H, W, C)')."""
    shape = tuple(int(d) for d in example_shape)
    if len(shape) != rank:
        raise ValueError(f"data_shape must be {layout} positive ints, got {tuple(example_shape)!r}")
    return shape

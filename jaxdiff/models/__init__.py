"""Flax NNX denoiser networks, by name from the ``NETWORKS`` registry.

  'unet'    U-Net of the DDPM++ / ADM family for (H, W, C) images   (``default_unet_config``)
  'dit'     Diffusion Transformer for (H, W, C) images               (``default_dit_config``)
  'unet1d'  1-D residual U-Net for (L, C) signals                    (``default_unet1d_config``)

Every network is called as ``net(x, c_noise, cond, dropout_key=None)`` with x of shape
(B, *example_shape), c_noise of shape (B,), cond None / (B,) int class indices (index
``num_classes`` is the null token) / (B, cond_dim) float vectors, and returns a float32 array
shaped like x.  ``dropout_key=None`` is inference; a PRNG key turns dropout on.  Networks hold no
random state, so ``nnx.split(net)`` gives (graphdef, params) for a plain ``jax.jit``.

Build one from a config with ``build_model``; start configs from
``NETWORKS.default_config(name)`` (or the named ``default_*_config`` functions).  A new network
is one module that calls ``NETWORKS.register(name, build, defaults=..., check=...)`` (see
``jaxdiff.models.networks``) plus its import line below.
"""
from __future__ import annotations

from flax import nnx

from jaxdiff.models.networks import NETWORKS, check_common
# Each import registers its network (in this order: list(NETWORKS) is sorted).
from jaxdiff.models import dit, unet, unet1d  # noqa: E402,F401  (isort: skip)
from jaxdiff.models.dit import default_dit_config
from jaxdiff.models.unet import default_unet_config
from jaxdiff.models.unet1d import default_unet1d_config


def check_model_config(cfg, data_shape, num_classes: int) -> None:
    """Raises a ValueError naming the first invalid field of ``cfg`` (or argument).

    Args:
      cfg: model ConfigDict whose ``name`` is in ``NETWORKS``.
      data_shape: the example shape, e.g. (H, W, C) for images or (L, C) for signals; each
        network checks the rank it needs.
      num_classes: K real classes (>= 0).
    Raises:
      ValueError (``ConfigError`` for an unknown name): the message starts with
      ``config.model.<field>`` for a field, or names ``data_shape`` / ``num_classes``.
    """
    name = cfg.get("name")
    NETWORKS.entry(name, "model.name")
    check_common(cfg, data_shape, num_classes)
    NETWORKS.check(name, cfg, "model.name", example_shape=tuple(data_shape),
                   num_classes=int(num_classes))


def build_model(model_cfg, data_shape, num_classes: int, rngs: nnx.Rngs) -> nnx.Module:
    """Validates ``model_cfg`` and builds the network it names.

    Args:
      model_cfg: ConfigDict with ``name`` in ``NETWORKS`` and that network's fields (its
        ``NETWORKS.default_config(name)``).
      data_shape: shape of one example, e.g. (H, W, C) or (L, C).
      num_classes: K real classes; the class table has K + 1 rows, row K the null token.  Must
        be 0 when ``model_cfg.cond_dim > 0``.
      rngs: parameter initialisation randomness, e.g. ``nnx.Rngs(seed)``.
    Returns:
      An NNX module ``net(x, c_noise, cond, dropout_key=None) -> (B, *data_shape) float32``.
    """
    check_model_config(model_cfg, data_shape, num_classes)
    shape = tuple(int(d) for d in data_shape)
    return NETWORKS[model_cfg.name](model_cfg, shape, int(num_classes), rngs)


__all__ = ["NETWORKS", "build_model", "check_model_config", "default_dit_config",
           "default_unet1d_config", "default_unet_config"]

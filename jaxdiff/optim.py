"""Per-parameter learning rates: ``config.optim.lr_multipliers = {name: m}`` multiplies the
update of every parameter whose pytree path has the component ``name`` by m, so its learning
rate is m times the schedule's (e.g. a fine-tuned class table that must move faster than the
network around it, as CTRL's official code gives its class embedding its own rate)."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

from jaxdiff.errors import ConfigError


def lr_multipliers(optim_cfg) -> dict:
    """``optim.lr_multipliers`` as a plain dict ({} for a config written before the field)."""
    return dict(optim_cfg.get("lr_multipliers", {}))


def path_components(path) -> tuple[str, ...]:
    """The names along a pytree key path, e.g. ('params', 'class_table', 'embedding')."""
    return tuple(str(getattr(p, "key", getattr(p, "name", getattr(p, "idx", p)))) for p in path)


def lr_factors(params, multipliers: dict):
    """The learning-rate factor of every leaf of ``params``: the product of the multipliers
    ``{name: m}`` whose name is a component of the leaf's path (1.0 where none is)."""
    def one(path, _):
        names = set(path_components(path))
        return math.prod(float(m) for name, m in multipliers.items() if name in names)

    return jax.tree_util.tree_map_with_path(one, params)


def check_lr_multipliers(params, multipliers: dict) -> None:
    """ConfigError for a multiplier that names no component of any parameter path."""
    names = set()
    for path, _ in jax.tree_util.tree_leaves_with_path(params):
        names.update(path_components(path))
    for name in multipliers:
        if name not in names:
            near = sorted(n for n in names if not n.isdigit())[:12]
            raise ConfigError(f"config.optim.lr_multipliers.{name}: no parameter path has a "
                              f"component {name!r} (some that do exist: {', '.join(near)})")


def scale_by_path(multipliers: dict) -> optax.GradientTransformation:
    """Multiplies each leaf's update by its ``lr_factors`` (static per leaf; no state)."""
    def update(updates, state, params=None):
        del params
        factors = lr_factors(updates, multipliers)
        return jax.tree.map(lambda u, f: u if f == 1.0 else u * jnp.asarray(f, u.dtype),
                            updates, factors), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)

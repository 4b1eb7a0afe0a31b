"""Shared by the tests/helpers/train_*.py subprocess scripts: configs and state dumps."""
import os

import jax
import numpy as np

from jaxdiff.config import load_config_file

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def digits_config(overrides: dict):
    """configs/digits.py with ``{"train.num_steps": 6, ...}`` applied (lists become tuples)."""
    return load_config_file(os.path.join(ROOT, "configs", "digits.py"), overrides)


def _name(path) -> str:
    parts = []
    for k in path:
        for attr in ("key", "idx", "name"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def flat_state(state) -> dict:
    """This process's copy of every leaf of a (replicated) train state, keyed by its path.

    Typed PRNG keys are stored as their uint32 key data."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        if not leaf.is_fully_replicated:
            raise ValueError(f"{_name(path)} is not replicated: {leaf.sharding}")
        out[_name(path)] = np.asarray(leaf.addressable_data(0))
    return out

"""Per-example randomness, written once.

Example j of a batch draws from ``fold_in(key, index_j)``, where index_j is its global position
(sample number, or position in the step's global batch), so what an example gets never depends
on the batch size, the device count or the host count.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def example_keys(key: Array, indices: Array) -> Array:
    """(B,) keys fold_in(key, indices[j]); indices: (B,) non-negative ints."""
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.asarray(indices, jnp.uint32))


def normal_per_example(keys: Array, stream: Array | int, shape: tuple[int, ...],
                       dtype=jnp.float32) -> Array:
    """(B, *shape) standard normals: example j from fold_in(keys[j], stream)."""
    return jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, stream), shape, dtype))(keys)

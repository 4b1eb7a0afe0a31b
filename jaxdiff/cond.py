"""Condition handling, written once: batch checks, the null condition, condition dropout.

A condition is None or a pytree whose leaves have leading dimension B: class indices (B,) int32,
where index ``num_classes`` is the null (unconditional) token, or condition vectors (B, D) whose
null is the zero vector.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array


def check_cond_batch(cond: Any, batch: int) -> None:
    """Raises a ValueError if some leaf of ``cond`` does not have leading dimension ``batch``."""
    for leaf in jax.tree_util.tree_leaves(cond):
        shape = jnp.shape(leaf)
        if len(shape) == 0 or shape[0] != batch:
            raise ValueError(f"cond batch size mismatch: x has batch {batch} but a condition "
                             f"leaf has shape {tuple(shape)}")


def null_like(cond: Any, null: Any) -> Any:
    """The unconditional counterpart of ``cond``: ``null`` broadcast leaf-by-leaf to cond.

    ``null`` is a class token (scalar) for class-index conditions, or a pytree with the structure
    of ``cond`` whose leaves broadcast to cond's leaves (e.g. a zero vector of shape (D,)).
    """
    return jax.tree_util.tree_map(
        lambda c, n: jnp.broadcast_to(jnp.asarray(n, c.dtype), c.shape), cond, null)


def drop_condition(keep: Array, cond: Any, null: Any) -> Any:
    """cond where ``keep`` (B,) bool is True, the null condition elsewhere (CFG training's
    condition dropout, Ho & Salimans 2022)."""
    def one(c, n):
        return jnp.where(keep.reshape((-1,) + (1,) * (c.ndim - 1)), c, n)

    return jax.tree_util.tree_map(one, cond, null_like(cond, null))


def with_guidance_weight(cond: Any, w: Any) -> dict:
    """The condition of a network with a guidance embedding (a guided-distilled student):
    ``{"cond": cond, "w": w}``, w () or (B,) the guidance weight in Meng et al.'s convention
    (w = s - 1 for jaxdiff's CFG scale s; see ``jaxdiff.distill.guided``)."""
    return {"cond": cond, "w": jnp.asarray(w, jnp.float32)}

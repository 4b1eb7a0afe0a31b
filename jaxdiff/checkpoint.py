"""Checkpoints: an Orbax ``CheckpointManager`` with async save, keep-N and exact resume.

Each checkpoint ``<directory>/<step>/`` holds its named pytree items plus a JSON item, written
together and atomically (Orbax writes into a temporary directory and renames it when every file
is on disk, so a crash mid-save never produces a step that ``latest_step`` reports):

  * the pytree items (``items``, default one item ``state``; the jobs use ``model`` = parameters
    and EMAs, and ``train`` = optimizer state, step, PRNG key and the objective's extra state):
    any pytrees (dicts, lists, tuples) of arrays and Python/NumPy scalars. NNX states go in as
    pure dicts (``nnx.to_pure_dict(state)``). Typed PRNG keys (``jax.random.key``) are stored as
    their raw ``uint32`` key data and re-wrapped on restore, with the implementation of the
    matching leaf of the restore target.
  * ``extra``: a JSON-able dict of metadata (data-iterator position, config, ...).

With several items, ``save`` takes a dict with one entry per item and ``restore`` restores only
the items its target names: a sampling job restores ``model`` and never reads the optimizer.

Restores take a target pytree (concrete arrays or ``jax.ShapeDtypeStruct``) whose shapes, dtypes
and shardings the restored arrays get, so a state saved from one device restores directly onto a
multi-device mesh. Every process of a multi-host job calls ``save`` / ``restore`` together, with
``directory`` on a file system they share.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from jaxdiff.errors import CheckpointFormatError

_EXTRA = "extra"


def _is_key(x) -> bool:
    dtype = getattr(x, "dtype", None)
    return dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key)


def _key_impl(leaf) -> str:
    """Name of the PRNG implementation of a typed key array or key ``ShapeDtypeStruct``."""
    if isinstance(leaf, jax.Array):
        return jax.random.key_impl(leaf)
    found = []
    jax.eval_shape(lambda k: found.append(jax.random.key_impl(k)), leaf)
    return found[0]


def _storable(leaf):
    """A leaf as Orbax stores it: typed PRNG keys -> uint32 key data, NumPy scalars -> 0-d."""
    if _is_key(leaf):
        return jax.random.key_data(leaf)
    if isinstance(leaf, np.generic):
        return np.asarray(leaf)
    return leaf


def _restore_target(leaf):
    """The leaf Orbax restores into: a ``ShapeDtypeStruct`` with sharding, or a NumPy/scalar leaf.

    Key leaves become their key-data struct; the key data shares the key's sharding (its trailing
    key-data axis is unsharded). A struct without a sharding lands on this process's first device.
    """
    if isinstance(leaf, np.generic):
        return np.asarray(leaf)
    if isinstance(leaf, (np.ndarray, int, float, bool)):
        return leaf
    if not hasattr(leaf, "shape") or not hasattr(leaf, "dtype"):
        raise ValueError(
            f"restore target leaf {leaf!r} is not an array, ShapeDtypeStruct or scalar")
    sharding = getattr(leaf, "sharding", None)
    if sharding is None:
        sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    if _is_key(leaf):
        data = jax.eval_shape(jax.random.key_data, jax.ShapeDtypeStruct(leaf.shape, leaf.dtype))
        return jax.ShapeDtypeStruct(data.shape, data.dtype, sharding=sharding)
    return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding)


def _from_stored(restored, target_leaf):
    """Inverse of ``_storable`` given the target leaf: re-wraps keys, unwraps NumPy scalars."""
    if _is_key(target_leaf):
        return jax.random.wrap_key_data(restored, impl=_key_impl(target_leaf))
    if isinstance(target_leaf, np.generic):
        return np.asarray(restored)[()]
    return restored


def _key_name(k) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _leaves_by_path(tree) -> dict[str, Any]:
    """Leaves keyed by 'a/b/0'-style paths (dict keys, sequence indices, attribute names)."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {"/".join(_key_name(k) for k in path): leaf for path, leaf in leaves}


class Checkpointer:
    """Saves and restores ``(items, extra)`` checkpoints under one directory.

    Args:
      directory: where step sub-directories live (created if missing). Shared by all processes.
      max_to_keep: number of most recent checkpoints kept; older ones are deleted.
      save_interval_steps: ``save`` writes only when ``step`` is a multiple of this (unless forced).
      async_save: when True, ``save`` returns once the arrays are copied off the devices and the
        files are written in the background; ``wait_until_finished`` blocks until they are final.
      items: names of the pytree items. With one item (default ``("state",)``) ``save`` and
        ``restore`` take that item's pytree itself; with several, a dict keyed by item name.
      layout_hint: appended to the CheckpointFormatError a checkpoint of other items raises
        (what the user should do about it).
    """

    def __init__(self, directory: str | os.PathLike, max_to_keep: int = 3,
                 save_interval_steps: int = 1, async_save: bool = True,
                 items: tuple[str, ...] = ("state",), layout_hint: str = ""):
        if max_to_keep < 1:
            raise ValueError(f"max_to_keep must be >= 1, got {max_to_keep}")
        if save_interval_steps < 1:
            raise ValueError(f"save_interval_steps must be >= 1, got {save_interval_steps}")
        self.items = tuple(items)
        self.layout_hint = layout_hint
        if not self.items or _EXTRA in self.items or len(set(self.items)) != len(self.items):
            raise ValueError(f"items must be distinct names other than {_EXTRA!r}, got {items}")
        self.directory = os.path.abspath(os.fspath(directory))
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            save_decision_policy=ocp.checkpoint_managers.AnySavePolicy([
                ocp.checkpoint_managers.FixedIntervalPolicy(save_interval_steps),
                ocp.checkpoint_managers.PreemptionCheckpointingPolicy(),
            ]),
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
            create=True,
        )
        handlers = {name: ocp.StandardCheckpointHandler() for name in self.items}
        handlers[_EXTRA] = ocp.JsonCheckpointHandler()
        self._manager = ocp.CheckpointManager(self.directory, options=options,
                                              item_handlers=handlers)

    def _as_items(self, tree, what: str) -> dict:
        if len(self.items) == 1:
            return {self.items[0]: tree}
        if not isinstance(tree, dict) or not tree or set(tree) - set(self.items):
            raise ValueError(f"{what} must be a dict with keys among the items {self.items}, "
                             f"got {list(tree) if isinstance(tree, dict) else type(tree)}")
        return tree

    def save(self, step: int, state, extra: dict[str, Any] | None = None,
             force: bool = False) -> bool:
        """Saves ``state`` (the item's pytree, or a dict holding every item) and the JSON-able
        ``extra`` as checkpoint ``step``.

        Writes when ``step`` is a multiple of ``save_interval_steps`` or ``force`` is True, and
        returns whether a save was started. With ``async_save`` the write finishes in the
        background; do not mutate NumPy leaves of ``state`` until ``wait_until_finished``.
        """
        items = self._as_items(state, "state")
        if set(items) != set(self.items):
            raise ValueError(f"save needs every item {self.items}, got {sorted(items)}")
        args = {name: ocp.args.StandardSave(jax.tree.map(_storable, tree))
                for name, tree in items.items()}
        args[_EXTRA] = ocp.args.JsonSave(dict(extra or {}))
        return self._manager.save(int(step), args=ocp.args.Composite(**args), force=force)

    def latest_step(self) -> int | None:
        """The newest finished checkpoint's step, or None when there is none."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """Steps of all finished checkpoints, ascending."""
        return sorted(self._manager.all_steps())

    def restore(self, step: int | None = None, *, target):
        """Restores checkpoint ``step`` (default: the latest) into the layout of ``target``.

        Args:
          step: which checkpoint; None for the latest.
          target: the item's pytree (one item), or a dict of some of the items (several: only
            those are read). Leaves are arrays or ``jax.ShapeDtypeStruct`` (restored as
            ``jax.Array`` with the leaf's shape, dtype and sharding; no sharding -> this
            process's first device), typed PRNG keys or their structs (restored as keys of the
            same implementation), NumPy arrays or Python scalars (restored as such).
        Returns:
          ``(state, extra)``: ``state`` with the structure of ``target``; ``extra`` the saved dict.
        Raises:
          FileNotFoundError: no checkpoint (or no checkpoint ``step``) in ``self.directory``.
          CheckpointFormatError: the checkpoint lacks a requested item (another layout).
          ValueError: the saved tree and ``target`` have different keys (both lists are named).
        """
        steps = self.all_steps()
        if not steps:
            raise FileNotFoundError(f"no checkpoint found in {self.directory}")
        if step is None:
            step = steps[-1]
        elif step not in steps:
            raise FileNotFoundError(
                f"no checkpoint for step {step} in {self.directory}; available steps: {steps}")
        targets = self._as_items(target, "target")
        self._check_items(step, targets)
        for name, tree in targets.items():
            self._check_structure(step, name, tree)
        args = {name: ocp.args.StandardRestore(jax.tree.map(_restore_target, tree))
                for name, tree in targets.items()}
        args[_EXTRA] = ocp.args.JsonRestore()
        restored = self._manager.restore(step, args=ocp.args.Composite(**args))
        out = {}
        for name, tree in targets.items():
            by_path = _leaves_by_path(restored[name])
            out[name] = jax.tree.unflatten(
                jax.tree.structure(tree),
                [_from_stored(by_path[p], t) for p, t in _leaves_by_path(tree).items()])
        return (out[self.items[0]] if len(self.items) == 1 else out), restored[_EXTRA]

    def saved_items(self, step: int) -> list[str]:
        """Names of the pytree items stored in checkpoint ``step`` (read from its directory)."""
        path = os.path.join(self.directory, str(step))
        return sorted(d for d in os.listdir(path)
                      if d != _EXTRA and os.path.isdir(os.path.join(path, d)))

    def _check_items(self, step: int, targets: dict) -> None:
        saved = self.saved_items(step)
        missing = sorted(set(targets) - set(saved))
        if missing:
            raise CheckpointFormatError(
                f"checkpoint {step} in {self.directory} holds the items {saved}, not "
                f"{missing}: it was written in another layout" +
                (f"; {self.layout_hint}" if self.layout_hint else ""))

    def _check_structure(self, step: int, name: str, target) -> None:
        saved = set(_leaves_by_path(self._manager.item_metadata(step)[name].tree))
        wanted = set(_leaves_by_path(target))
        if saved != wanted:
            raise ValueError(
                f"checkpoint {step} in {self.directory} does not match the restore target: "
                f"keys only in the checkpoint: {sorted(saved - wanted)}; "
                f"keys only in the target: {sorted(wanted - saved)}")

    def wait_until_finished(self) -> None:
        """Blocks until every started save is final on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Finishes pending saves and releases the manager's resources."""
        self._manager.close()

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

import contextlib
import os
import shutil
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from jaxdiff.errors import (CheckpointFormatError, CorruptDataError, IncompatibleCheckpointError,
                            JaxdiffError, MissingInputError, NonFiniteError,
                            RunEnvironmentError)

_EXTRA = "extra"
_TMP_MARKER = ".orbax-checkpoint-tmp"  # how Orbax names a save in progress


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
      require_finite: refuse to save a state with a non-finite floating-point value
        (NonFiniteError), and treat a stored one as unreadable on restore.
    """

    def __init__(self, directory: str | os.PathLike, max_to_keep: int = 3,
                 save_interval_steps: int = 1, async_save: bool = True,
                 items: tuple[str, ...] = ("state",), layout_hint: str = "",
                 require_finite: bool = False):
        if max_to_keep < 1:
            raise ValueError(f"max_to_keep must be >= 1, got {max_to_keep}")
        if save_interval_steps < 1:
            raise ValueError(f"save_interval_steps must be >= 1, got {save_interval_steps}")
        self.items = tuple(items)
        self._pending = None
        self._cleaned = False
        self.restored_step = None
        self.require_finite = bool(require_finite)
        _drop_closed_loop_echoes()
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
            cleanup_tmp_directories=False,  # done by the first save (readers must not)
            create=True,
        )
        handlers = {name: ocp.StandardCheckpointHandler() for name in self.items}
        handlers[_EXTRA] = ocp.JsonCheckpointHandler()
        self._manager = ocp.CheckpointManager(self.directory, options=options,
                                              item_handlers=handlers)

    def _remove_unfinished(self) -> None:
        """Removes the temporary directories of saves that never finished (a crash or a
        failed write mid-save); finished checkpoints are never touched.  Called by the first
        save only: a job that just reads (sampling while training goes on) leaves the writer's
        save in progress alone."""
        self._cleaned = True
        if jax.process_index() != 0 or not os.path.isdir(self.directory):
            return
        for name in os.listdir(self.directory):
            if _TMP_MARKER in name:
                shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)

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
        A failed write (a full disk, a lost mount) raises RunEnvironmentError naming the step
        and the newest intact checkpoint; the temporary directory it leaves is removed when the
        directory is next opened.
        """
        items = self._as_items(state, "state")
        if set(items) != set(self.items):
            raise ValueError(f"save needs every item {self.items}, got {sorted(items)}")
        will_save = force or self._manager.should_save(int(step))
        if will_save and not self._cleaned:
            self._remove_unfinished()
        if self.require_finite and will_save and not all_finite(items):
            raise NonFiniteError(f"refusing to save checkpoint {step} to {self.directory}: the "
                                 f"state holds non-finite values")
        args = {name: ocp.args.StandardSave(jax.tree.map(_storable, tree))
                for name, tree in items.items()}
        args[_EXTRA] = ocp.args.JsonSave(dict(extra or {}))
        with self._write_errors(int(step)):
            started = self._manager.save(int(step), args=ocp.args.Composite(**args),
                                         force=force)
        if started:
            self._pending = int(step)
        return started

    @contextlib.contextmanager
    def _write_errors(self, step: int | None):
        """Turns a failed (possibly background) write into one RunEnvironmentError."""
        try:
            yield
        except Exception as e:  # noqa: BLE001  (any failure of the writer is the same fault)
            which = self._pending if step is None else step
            intact = [s for s in self._manager.all_steps() if s != which]
            raise RunEnvironmentError(
                f"could not write checkpoint {which} to {self.directory}: {_reason(e)}; the "
                f"earlier checkpoints are intact (newest: "
                f"{max(intact) if intact else 'none'}); fix the cause (e.g. free disk space) "
                f"and rerun the same command to resume") from e

    def latest_step(self) -> int | None:
        """The newest finished checkpoint's step, or None when there is none."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """Steps of all finished checkpoints, ascending."""
        return sorted(self._manager.all_steps())

    def restore(self, step: int | None = None, *, target, fallback: bool = True):
        """Restores checkpoint ``step`` (default: the newest readable one) into ``target``'s
        layout, and verifies it.

        Args:
          step: which checkpoint; None for the latest.
          target: the item's pytree (one item), or a dict of some of the items (several: only
            those are read). Leaves are arrays or ``jax.ShapeDtypeStruct`` (restored as
            ``jax.Array`` with the leaf's shape, dtype and sharding; no sharding -> this
            process's first device), typed PRNG keys or their structs (restored as keys of the
            same implementation), NumPy arrays or Python scalars (restored as such).
          fallback: with ``step`` None, a checkpoint that cannot be read (or, with
            ``require_finite``, holds non-finite values) is moved aside (to ``<directory>.corrupt/<step>``, not deleted), reported
            in one line on stderr, and the next older one is tried.
        Returns:
          ``(state, extra)``: ``state`` with the structure of ``target``; ``extra`` the saved dict.
          The step restored is ``self.restored_step`` afterwards.
        Raises:
          MissingInputError: no checkpoint (or no checkpoint ``step``) in ``self.directory``.
          CheckpointFormatError: the checkpoint lacks a requested item (another layout).
          IncompatibleCheckpointError: the saved arrays and ``target`` differ in their keys,
            shapes or dtypes (counted, with the first few named).
          CorruptDataError: checkpoint ``step`` (or, with fallback, every one) is unreadable.
        """
        self._manager.reload()  # another manager may have moved or added checkpoints
        steps = self.all_steps()
        if not steps:
            raise MissingInputError(f"no checkpoint found in {self.directory}: train first "
                                    f"(--mode=train with this --workdir)")
        if step is not None and step not in steps:
            raise MissingInputError(
                f"no checkpoint for step {step} in {self.directory}; available steps: {steps}")
        targets = self._as_items(target, "target")
        candidates = [step] if step is not None else steps[::-1]
        skipped = []
        for s in candidates:
            try:
                out, extra = self._restore_step(s, targets)
            except JaxdiffError:
                raise
            except Exception as e:  # noqa: BLE001  (an unreadable checkpoint, whatever the cause)
                _drop_closed_loop_echoes()
                problem = f"is unreadable ({_reason(e)})"
            else:
                if not self.require_finite or all_finite(out):
                    self.restored_step = s
                    for bad, problem_, moved in skipped:  # said once the fallback worked
                        _warn(f"checkpoint {bad} in {self.directory} {problem_}; moved to "
                              f"{moved}; using step {s}")
                    return (out[self.items[0]] if len(self.items) == 1 else out), extra
                problem = "holds non-finite values"
            if step is not None or not fallback:
                raise CorruptDataError(
                    f"checkpoint {s} in {self.directory} {problem}; the other steps are "
                    f"{[t for t in steps if t != s]}: choose one of them, or remove step {s} "
                    f"to use the newest of them") from None
            skipped.append((s, problem, self._move_aside(s)))
        raise CorruptDataError(f"no readable checkpoint in {self.directory}: steps "
                               f"{[bad for bad, _, _ in skipped]} are unreadable (moved to "
                               f"{self.directory}.corrupt); train again")

    def _restore_step(self, step: int, targets: dict):
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
        return out, restored[_EXTRA]

    def _move_aside(self, step: int) -> str:
        """Moves checkpoint ``step`` to ``<directory>.corrupt/<step>[.n]``; returns the path."""
        dest = os.path.join(self.directory + ".corrupt", str(step))
        if jax.process_index() == 0:
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            n = 1
            while os.path.exists(dest):
                dest = os.path.join(self.directory + ".corrupt", f"{step}.{n}")
                n += 1
            os.replace(os.path.join(self.directory, str(step)), dest)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices(f"jaxdiff_checkpoint_move_{step}")
        self._manager.reload()
        return dest

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
        saved = _leaves_by_path(self._manager.item_metadata(step)[name].tree)
        wanted = _leaves_by_path(jax.tree.map(_restore_target, target))
        only_saved, only_wanted = sorted(set(saved) - set(wanted)), sorted(set(wanted) - set(saved))
        where = f"checkpoint {step} in {self.directory} does not match this run ({name})"
        if only_saved or only_wanted:
            raise IncompatibleCheckpointError(
                f"{where}: {len(only_saved)} arrays only in the checkpoint "
                f"{_first(only_saved)}, {len(only_wanted)} only in the run {_first(only_wanted)}"
                f"; was it written with another model or objective config?")
        differ = []
        for p in sorted(saved):
            if not hasattr(saved[p], "shape"):
                continue
            w_dtype = getattr(wanted[p], "dtype", None)
            s_dtype = np.dtype(saved[p].dtype)
            if (tuple(saved[p].shape) != tuple(np.shape(wanted[p]))
                    or (w_dtype is not None and np.dtype(w_dtype) != s_dtype)):
                differ.append((p, tuple(saved[p].shape), tuple(np.shape(wanted[p])), s_dtype,
                               w_dtype))
        if differ:
            p, s_shape, w_shape, s_dtype, w_dtype = differ[0]
            raise IncompatibleCheckpointError(
                f"{where}: {len(differ)} arrays differ in shape or dtype, e.g. {p}: "
                f"{s_shape} {s_dtype} in the checkpoint, {w_shape} {w_dtype} in the run; was "
                f"it written with another model config?")

    def wait_until_finished(self) -> None:
        """Blocks until every started save is final on disk (RunEnvironmentError if one
        failed)."""
        with self._write_errors(None):
            self._manager.wait_until_finished()

    def close(self) -> None:
        """Finishes pending saves and releases the manager's resources."""
        with self._write_errors(None):
            self._manager.close()


def _drop_closed_loop_echoes() -> None:
    """Installs (once) an unraisable-exception hook that drops the echoes of a failed read:
    the checkpoint reader's other callbacks, still in flight, fail against its closed event
    loop and would each print a traceback, during and shortly after the failure.  Every other
    unraisable exception goes to the previous hook."""
    previous = sys.unraisablehook
    if getattr(previous, "_jaxdiff_filter", False):
        return

    def hook(unraisable):
        e = unraisable.exc_value
        if isinstance(e, RuntimeError) and "Event loop is closed" in str(e):
            return
        previous(unraisable)

    hook._jaxdiff_filter = True
    sys.unraisablehook = hook


def _reason(e: BaseException) -> str:
    """The root cause of ``e`` in a few words: the OS error if there is one, else the first
    line of the message."""
    seen = e
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror
        seen = seen.__cause__ or seen.__context__
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _first(paths: list[str], n: int = 3) -> str:
    return "(" + ", ".join(paths[:n]) + (", ..." if len(paths) > n else "") + ")"


def _warn(message: str) -> None:
    if jax.process_index() == 0:
        print(f"jaxdiff: warning: {message}", file=sys.stderr, flush=True)


def all_finite(tree) -> bool:
    """Whether every floating-point leaf of ``tree`` (JAX or NumPy arrays, Python floats) is
    finite; other leaves (integers, PRNG keys) are ignored.  JAX arrays are reduced in one
    jitted call (so sharded arrays of a multi-process job are checked where they live)."""
    device, host = [], []
    for leaf in jax.tree.leaves(tree):
        dtype = getattr(leaf, "dtype", None)
        if dtype is None:
            if isinstance(leaf, float):
                host.append(leaf)
        elif jnp.issubdtype(dtype, jnp.inexact):
            (device if isinstance(leaf, jax.Array) else host).append(leaf)
    ok = all(bool(np.all(np.isfinite(x))) for x in host)
    if device:
        ok = ok and bool(jax.device_get(_all_finite_jit(device)))
    return ok


@jax.jit
def _all_finite_jit(arrays):
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in arrays]))

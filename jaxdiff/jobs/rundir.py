"""The run directory (``--workdir``): checked before any work, and kept true to its checkpoints.

  check_writable(workdir)      the directory is (or can be made) a writable directory; checked
                               by the command line before any job builds a network
  check_compatible(workdir, config, job)
                               the checkpoints already in ``workdir`` were trained with this
                               config's checkpoint-defining fields (``DEFINING``); otherwise an
                               IncompatibleCheckpointError naming each differing field with the
                               stored and the new value
  write_config(workdir, config)
                               ``config.json``, written atomically once a job's checks passed;
                               a previous, different ``config.json`` is kept under
                               ``config_history/`` and the changed fields are printed, so the
                               workdir always says with which config each checkpoint was made
  checkpoint_steps(workdir)    the finished checkpoints' steps, read from the directory alone
"""
from __future__ import annotations

import json
import os
import tempfile
import time

from jaxdiff.errors import CorruptDataError, IncompatibleCheckpointError, RunEnvironmentError

CONFIG_FILE = "config.json"
HISTORY_DIR = "config_history"

# Config fields (dotted prefixes) that fix what a checkpoint holds and means, per job: a model
# is only meaningful with its network, noise process, parameterization and data; a resumed run
# also needs the same objective (its extra state), EMA decays and learning-rate multipliers
# (with any, the optimizer state holds one more transform's state).
_MODEL = ("model", "diffusion", "data.name", "data.tfds_name", "data.image_size",
          "data.image_key", "data.label_key", "data.train_split", "train.ema_decays")
DEFINING = {"train": _MODEL + ("objective", "optim.lr_multipliers"), "restore": _MODEL}
_MAX_NAMED = 4


def check_writable(workdir: str) -> None:
    """Raises RunEnvironmentError unless ``workdir`` is a writable directory or can be created.

    Nothing is created: the nearest existing ancestor is probed with a temporary file, so a
    command that fails afterwards leaves no new workdir behind.
    """
    path = os.path.abspath(workdir)
    if os.path.exists(path) and not os.path.isdir(path):
        raise RunEnvironmentError(f"--workdir {workdir} is a file, not a directory: choose "
                                  f"another --workdir")
    probe = path
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise RunEnvironmentError(f"--workdir {workdir}: {probe} is a file, so the directory "
                                  f"cannot be created; choose another --workdir")
    try:
        fd, name = tempfile.mkstemp(prefix=".jaxdiff-write-test-", dir=probe)
        os.close(fd)
        os.remove(name)
    except OSError as e:
        where = "" if probe == path else f" (its existing parent {probe})"
        raise RunEnvironmentError(f"--workdir {workdir}{where} is not writable: "
                                  f"{e.strerror or e}; choose a writable --workdir") from None


def checkpoint_steps(workdir: str) -> list[int]:
    """Steps of the finished checkpoints under ``workdir/checkpoints`` (ascending)."""
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        return []
    return sorted(int(d) for d in os.listdir(directory)
                  if d.isdigit() and os.path.isdir(os.path.join(directory, d)))


def config_dict(config) -> dict:
    """The config as the JSON ``config.json`` holds (tuples as lists)."""
    return json.loads(config.to_json_best_effort())


def stored_config(workdir: str) -> dict | None:
    """``workdir/config.json`` as a dict, or None when there is none."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise CorruptDataError(f"{path} is unreadable ({e}): restore it, or remove it to skip "
                               f"checking the checkpoints' config") from None


def _flatten(tree, prefix: str = "") -> dict:
    out = {}
    for k, v in (tree or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def differences(old: dict, new: dict, prefixes=None) -> list[tuple[str, object, object]]:
    """(field, old value, new value) of every differing leaf, restricted to ``prefixes``;
    a field missing on one side has the value ``'<absent>'``."""
    a, b = _flatten(old), _flatten(new)
    keys = sorted(set(a) | set(b))
    if prefixes is not None:
        keys = [k for k in keys if any(k == p or k.startswith(p + ".") for p in prefixes)]
    absent = "<absent>"
    return [(k, a.get(k, absent), b.get(k, absent)) for k in keys
            if a.get(k, absent) != b.get(k, absent)]


def _named(diffs) -> str:
    shown = ", ".join(f"{k}={o!r} (config has {n!r})" for k, o, n in diffs[:_MAX_NAMED])
    more = len(diffs) - _MAX_NAMED
    return shown + (f" and {more} more field{'s' * (more > 1)}" if more > 0 else "")


def _default_values(config) -> dict:
    """Flattened default values of the config's fields: the registered sections' defaults, with
    the chosen network's and objective's own defaults for ``model`` and ``objective``."""
    from jaxdiff.config import SECTIONS, ensure_registered
    from jaxdiff.models import NETWORKS
    from jaxdiff.objectives import OBJECTIVES

    ensure_registered(config)
    tree = {name: config_dict(SECTIONS.default_config(name)) for name in SECTIONS}
    tree["model"] = config_dict(NETWORKS.default_config(config.model.name))
    tree["objective"] = config_dict(OBJECTIVES.default_config(config.objective.name))
    return _flatten(tree)


def _added_at_default(diff, config) -> bool:
    """True for a field that the stored config lacks and the config sets to its default: a
    field added to jaxdiff after the checkpoints were made, at the value that keeps the old
    behaviour (e.g. a new network option that is off by default)."""
    field, old, new = diff
    if old != "<absent>":
        return False
    defaults = _default_values(config)
    return field in defaults and defaults[field] == new


def check_compatible(workdir: str, config, job: str = "restore") -> None:
    """Raises IncompatibleCheckpointError when ``workdir`` holds checkpoints made with other
    values of the fields ``DEFINING[job]`` than ``config``'s (``job``: 'train' to resume,
    'restore' to use the model).  A workdir without checkpoints or ``config.json`` passes, and
    so does a field the stored config lacks when the config holds its default value."""
    if not checkpoint_steps(workdir):
        return
    old = stored_config(workdir)
    if old is None:
        return
    diffs = [d for d in differences(old, config_dict(config), DEFINING[job])
             if not _added_at_default(d, config)]
    if diffs:
        fix = ("train into a new --workdir" if job == "train"
               else "use the config the model was trained with")
        raise IncompatibleCheckpointError(
            f"the checkpoints in {workdir} were trained with {_named(diffs)}: set those fields "
            f"back, or {fix}")


def write_config(workdir: str, config) -> str:
    """Writes ``workdir/config.json`` atomically; an earlier, different one is moved to
    ``config_history/config-<time>.json`` and the changed fields are printed.  Returns the path.
    """
    path = os.path.join(workdir, CONFIG_FILE)
    new = config_dict(config)
    old = stored_config(workdir)
    if old is not None and old != new:
        os.makedirs(os.path.join(workdir, HISTORY_DIR), exist_ok=True)
        kept = os.path.join(workdir, HISTORY_DIR,
                            time.strftime("config-%Y%m%d-%H%M%S.json", time.gmtime()))
        os.replace(path, kept)
        print(f"config changed since the last run: {_named(differences(old, new))}; the "
              f"earlier config.json is kept as {kept}", flush=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(new, f, indent=2)
    os.replace(tmp, path)
    return path

"""Strict JSON files: written atomically, with non-finite numbers as ``null``.

Python's ``json`` writes NaN and Infinity as bare tokens, which are not JSON (other readers
refuse the file).  ``write_json`` replaces every non-finite float (Python or NumPy) by ``None``
and writes through a temporary file and a rename, so a crash leaves the old file or the new one,
never half of one.
"""
from __future__ import annotations

import json
import math
import os

import numpy as np

from jaxdiff.errors import RunEnvironmentError


def finite_or_none(obj):
    """``obj`` with every non-finite float replaced by None, NumPy scalars and arrays as Python
    values, tuples as lists."""
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return finite_or_none(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def dumps(obj, indent: int | None = 2, **kwargs) -> str:
    """Strict JSON text of ``obj`` (non-finite floats as null)."""
    return json.dumps(finite_or_none(obj), indent=indent, allow_nan=False, **kwargs)


def write_json(path: str | os.PathLike, obj, indent: int | None = 2, **kwargs) -> str:
    """Writes ``obj`` as strict JSON to ``path`` atomically; returns the path.  A failed write
    leaves the old file, removes the temporary one and raises RunEnvironmentError."""
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    text = dumps(obj, indent=indent, **kwargs)
    try:
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise RunEnvironmentError(f"could not write {path}: {e.strerror or e}; fix the cause "
                                  f"(e.g. free disk space) and rerun the same command") from None
    return path

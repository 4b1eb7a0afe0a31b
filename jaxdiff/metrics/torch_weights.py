"""Reads PyTorch ``state_dict`` files into NumPy without torch.

``load_state_dict(path)`` returns ``{key: np.ndarray}`` from
  * a ``.pth`` / ``.pt`` file written by ``torch.save`` in either format:
      - zip (torch >= 1.6): ``<archive>/data.pkl`` is a pickle whose tensors refer to storages
        by persistent id ``('storage', StorageType, key, location, numel)``; storage ``key``'s
        raw little-endian bytes are the zip member ``<archive>/data/<key>``;
      - legacy (torch < 1.6): five concatenated pickles -- magic number, protocol version,
        system info, the object (persistent ids ``('storage', StorageType, key, location,
        numel, view_metadata)``), the list of storage keys -- then, per key in that order,
        an int64 element count and the raw bytes;
  * a ``.npz`` holding the same keys, e.g. converted once on a machine that has torch with
        ``np.savez(out, **{k: v.numpy() for k, v in torch.load(pth).items()})``.

The unpickler is restricted: it resolves only ``collections.OrderedDict``,
``torch._utils._rebuild_tensor_v2`` and ``torch.<Type>Storage`` classes, so a file cannot run
code; anything else raises ``pickle.UnpicklingError`` naming the global.  Tensors are rebuilt
from (storage, offset, size, stride) and returned as contiguous copies.
"""
from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile

import numpy as np

STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001


class _StorageType:
    """Stands in for a ``torch.<Type>Storage`` class; carries the NumPy dtype."""

    def __init__(self, name: str):
        self.name, self.dtype = name, np.dtype(STORAGE_DTYPES[name])


class _Storage:
    """A flat typed buffer; ``data`` is filled when its bytes are read."""

    def __init__(self, dtype: np.dtype, numel: int):
        self.dtype, self.numel, self.data = dtype, int(numel), None


class _TensorRef:
    """A tensor awaiting its storage: (storage, offset, size, stride) in elements."""

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset = storage, int(offset)
        self.size, self.stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)

    def materialize(self, key: str) -> np.ndarray:
        flat = self.storage.data
        if any(s < 0 for s in self.stride) or self.offset < 0:
            raise ValueError(f"tensor {key!r}: negative offset or stride")
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
        if 0 not in self.size and last >= flat.size:
            raise ValueError(f"tensor {key!r}: size {self.size} / stride {self.stride} / offset "
                             f"{self.offset} reaches past its storage of {flat.size} elements")
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset:], shape=self.size,
            strides=tuple(s * flat.itemsize for s in self.stride), writeable=False)
        return np.array(view, dtype=flat.dtype.newbyteorder("="))


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    del requires_grad, backward_hooks, metadata
    return _TensorRef(storage, storage_offset, size, stride)


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles a state dict; ``storage_for(persistent_id) -> _Storage`` resolves storages."""

    def __init__(self, file, storage_for):
        super().__init__(file)
        self._storage_for = storage_for

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(
            f"refusing to load global {module}.{name}: only state dicts of plain tensors "
            f"({sorted(STORAGE_DTYPES)}) are supported")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        return self._storage_for(pid)


def _materialize(obj, path: str) -> dict[str, np.ndarray]:
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a state dict (a mapping of names to tensors), got "
                         f"{type(obj).__name__}")
    out = {}
    for key, value in obj.items():
        if not isinstance(value, _TensorRef):
            raise ValueError(f"{path}: entry {key!r} is not a tensor ({type(value).__name__})")
        out[str(key)] = value.materialize(key)
    return out


def _load_zip(path: str) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(path) as zf:
        pkl = [n for n in zf.namelist() if n.endswith("data.pkl")]
        if len(pkl) != 1:
            raise ValueError(f"{path}: expected one '<archive>/data.pkl' member in the zip, "
                             f"found {pkl}")
        prefix = pkl[0][:-len("data.pkl")]
        order = "<"
        if prefix + "byteorder" in zf.namelist():
            order = "<" if zf.read(prefix + "byteorder").decode().strip() == "little" else ">"
        storages = {}

        def storage_for(pid):
            _, storage_type, key, _location, numel = pid
            if key not in storages:
                dtype = storage_type.dtype.newbyteorder(order)
                raw = zf.read(f"{prefix}data/{key}")
                storage = _Storage(dtype, numel)
                storage.data = np.frombuffer(raw, dtype=dtype, count=int(numel))
                storages[key] = storage
            return storages[key]

        obj = _RestrictedUnpickler(io.BytesIO(zf.read(pkl[0])), storage_for).load()
    return _materialize(obj, path)


def _load_legacy(path: str) -> dict[str, np.ndarray]:
    storages = {}

    def storage_for(pid):
        _, storage_type, key, _location, numel, view = pid
        if view is not None:
            raise pickle.UnpicklingError(f"{path}: storage views are not supported (key {key})")
        storages.setdefault(key, _Storage(storage_type.dtype, numel))
        return storages[key]

    with open(path, "rb") as f:
        magic = pickle.load(f)
        protocol = pickle.load(f)
        if magic != LEGACY_MAGIC or protocol != LEGACY_PROTOCOL:
            raise ValueError(f"{path}: not a torch.save file (magic {magic!r}, protocol "
                             f"{protocol!r})")
        sys_info = pickle.load(f)
        little = not isinstance(sys_info, dict) or sys_info.get("little_endian", True)
        obj = _RestrictedUnpickler(f, storage_for).load()
        keys = pickle.load(f)
        for key in keys:
            storage = storages[key]
            (numel,) = struct.unpack("<q" if little else ">q", f.read(8))
            dtype = storage.dtype.newbyteorder("<" if little else ">")
            raw = f.read(numel * dtype.itemsize)
            if len(raw) != numel * dtype.itemsize:
                raise ValueError(f"{path}: truncated data for storage {key}")
            storage.data = np.frombuffer(raw, dtype=dtype)
    return _materialize(obj, path)


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """``{name: array}`` from a torch ``.pth`` (zip or legacy format) or a ``.npz`` file.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      ValueError / pickle.UnpicklingError: the file is not a state dict of plain tensors.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file {path!r} does not exist")
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as data:
            return {k: np.asarray(data[k]) for k in data.files}
    if zipfile.is_zipfile(path):
        return _load_zip(path)
    return _load_legacy(path)

"""Read a PyTorch checkpoint (state dict) into numpy arrays without torch.

A ``.pth`` file is a pickle, and a pickle can run any code when loaded. This reader
never calls ``pickle.load`` on the file as is: its unpickler resolves only the few
globals a state dict of tensors needs (``collections.OrderedDict``, torch's tensor
rebuild function and its typed storages), each mapped to a harmless local stand-in,
and refuses everything else before it can run.

Both on-disk layouts are read: the legacy one (a sequence of pickles followed by the raw
storages; torchvision's ``mobilenet_v2-b0353104.pth``) and the zip one (``data.pkl``
plus ``data/<key>`` entries) that torch has written since 1.6.

Example usage::

    state = read_state_dict("mobilenet_v2-b0353104.pth")
    state["features.0.0.weight"].shape  # (32, 3, 3, 3)
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from teachcam.edge.errors import CheckpointError

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


@dataclass(frozen=True)
class _StorageType:
    dtype: type


@dataclass
class _Storage:
    key: str
    dtype: type
    numel: int
    data: np.ndarray | None = None


@dataclass(frozen=True)
class _TensorRef:
    storage: _Storage
    offset: int
    shape: tuple
    stride: tuple

    def materialize(self) -> np.ndarray:
        if self.storage.data is None:
            raise CheckpointError(f"checkpoint storage {self.storage.key} has no data: the file is truncated")
        flat = self.storage.data
        itemsize = flat.dtype.itemsize
        if not self.shape:
            return flat[self.offset].copy()
        extent = self.offset + sum((n - 1) * s for n, s in zip(self.shape, self.stride, strict=True)) + 1
        if extent > flat.size:
            raise CheckpointError("a tensor in the checkpoint points past the end of its storage")
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset :], shape=self.shape, strides=tuple(s * itemsize for s in self.stride)
        )
        return np.ascontiguousarray(view)


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, *rest):
    if not isinstance(storage, _Storage):
        raise CheckpointError("checkpoint tensor does not refer to a storage")
    return _TensorRef(storage, int(storage_offset), tuple(int(n) for n in size), tuple(int(s) for s in stride))


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only what rebuilding a state dict of tensors needs."""

    def __init__(self, file, storages: dict[str, _Storage]):
        super().__init__(file)
        self._storages = storages

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: a weights file may only contain tensors"
        )

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError("unsupported persistent id in checkpoint")
        storage_type, key, _location, numel = pid[1], str(pid[2]), pid[3], int(pid[4])
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError("unsupported storage type in checkpoint")
        storage = self._storages.get(key)
        if storage is None:
            storage = self._storages[key] = _Storage(key, storage_type.dtype, numel)
        return storage


def _materialize(obj, path: Path) -> dict[str, np.ndarray]:
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors")
    if "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    out = {}
    for name, value in obj.items():
        if isinstance(value, _TensorRef):
            out[str(name)] = value.materialize()
    if not out:
        raise CheckpointError(f"{path} holds no tensors")
    return out


def _read_legacy(raw: bytes, path: Path) -> dict[str, np.ndarray]:
    stream = io.BytesIO(raw)
    storages: dict[str, _Storage] = {}

    def load_next():
        return _RestrictedUnpickler(stream, storages).load()

    if load_next() != _LEGACY_MAGIC:
        raise CheckpointError(f"{path} is not a PyTorch checkpoint")
    load_next()  # protocol version
    sys_info = load_next()
    if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
        raise CheckpointError(f"{path} was written on a big-endian machine; re-save it on a little-endian one")
    state = load_next()
    keys = load_next()
    if not isinstance(keys, list):
        raise CheckpointError(f"{path} is damaged: the storage table is missing")
    for key in keys:
        storage = storages.get(str(key))
        header = stream.read(8)
        if storage is None or len(header) != 8:
            raise CheckpointError(f"{path} is truncated or damaged (storage {key})")
        (numel,) = struct.unpack("<q", header)
        nbytes = numel * np.dtype(storage.dtype).itemsize
        blob = stream.read(nbytes)
        if numel != storage.numel or len(blob) != nbytes:
            raise CheckpointError(f"{path} is truncated or damaged (storage {key})")
        storage.data = np.frombuffer(blob, dtype=storage.dtype)
    return _materialize(state, path)


def _read_zip(path: Path) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if not pickles:
            raise CheckpointError(f"{path} is a zip file but not a PyTorch checkpoint")
        prefix = pickles[0][: -len("data.pkl")]
        storages: dict[str, _Storage] = {}
        state = _RestrictedUnpickler(io.BytesIO(archive.read(pickles[0])), storages).load()
        for key, storage in storages.items():
            blob = archive.read(f"{prefix}data/{key}")
            storage.data = np.frombuffer(blob, dtype=storage.dtype)[: storage.numel]
    return _materialize(state, path)


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Read a PyTorch state dict as ``{name: numpy array}``.

    Raises:
        CheckpointError: the file is missing, damaged, or holds anything but tensors
            (including a pickle that tries to run code).
    """
    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            return _read_zip(path)
        return _read_legacy(path.read_bytes(), path)
    except FileNotFoundError:
        raise CheckpointError(f"weights file not found: {path}") from None
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{path} is not a safe weights file: {exc}") from None
    except (EOFError, struct.error, KeyError, ValueError, TypeError, IndexError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({exc})") from None

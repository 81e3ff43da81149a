"""Reads PyTorch's legacy (non-zip) `.pth` files into numpy arrays, without PyTorch and without running pickled code.

The legacy format (`torch.save(..., _use_new_zipfile_serialization=False)`, the default before PyTorch 1.6) is
five pickles and then raw bytes:

1. the magic number `MAGIC_NUMBER`, 2. the protocol version (`PROTOCOL_VERSION`), 3. system information
(byte order, C type sizes), 4. the saved object, usually a state dict, whose tensors name their storages through
persistent ids `("storage", <type>, key, location, numel, view)`, 5. the list of storage keys; then, for each key in
that list, the storage's element count (int64, little-endian) followed by its elements.

A pickle can call any importable function, so every pickle here is read by `_Unpickler`, which resolves only the
globals in `ALLOWED_GLOBALS` (to functions of this module, which build numpy views) and refuses any other with
`UnsafePickleError`. Tensors become read-only numpy views of the file's bytes (`np.ndarray` with the storage's
dtype, offset, shape and strides), bounds-checked against their storage.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER
PROTOCOL_VERSION = 1001  # torch.serialization.PROTOCOL_VERSION

# Legacy typed storages and their elements (byte order is applied from the system-info pickle). BFloat16 has no
# numpy dtype and is not read.
STORAGE_DTYPES = {
    "DoubleStorage": "f8", "FloatStorage": "f4", "HalfStorage": "f2", "LongStorage": "i8", "IntStorage": "i4",
    "ShortStorage": "i2", "CharStorage": "i1", "ByteStorage": "u1", "BoolStorage": "?",
}


class TorchFileError(ValueError):
    """The file is not a complete, well-formed legacy PyTorch file."""


class UnsafePickleError(TorchFileError):
    """A pickle in the file names a global outside `ALLOWED_GLOBALS` (which could run arbitrary code)."""


@dataclass(frozen=True, slots=True)  # frozen and slotted: a pickle's BUILD opcode cannot rewrite them
class _StorageType:
    name: str


@dataclass(frozen=True, slots=True)
class _Storage:
    """A storage named by a persistent id; its elements are read after the pickles (`key` in the keys list)."""
    key: str
    kind: str  # a key of STORAGE_DTYPES
    numel: int
    offset: int = 0  # > 0 for a legacy storage view into the root storage `key`


@dataclass(frozen=True, slots=True)
class _TensorRef:
    """A tensor whose storage's bytes come after the pickle that names it: made into an array once they are read."""
    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]


def _int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple) or not all(type(v) is int and v >= 0 for v in value):
        raise TorchFileError(f"A tensor's {what} must be a tuple of non-negative ints. Received: {value!r}")
    return value


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any) -> _TensorRef:
    if not isinstance(storage, _Storage):
        raise TorchFileError(f"A tensor must be built on a storage of this file. Received: {type(storage).__name__}")
    if type(storage_offset) is not int or storage_offset < 0:
        raise TorchFileError(f"A tensor's storage offset must be a non-negative int. Received: {storage_offset!r}")
    shape, strides = _int_tuple(size, "size"), _int_tuple(stride, "stride")
    if len(shape) != len(strides):
        raise TorchFileError(f"A tensor's size and stride must have one entry per dimension. Received: {shape}, {strides}")
    if 0 not in shape:
        last = storage_offset + sum((n - 1) * s for n, s in zip(shape, strides))
        if last >= storage.numel:
            raise TorchFileError(f"A tensor of size {shape}, stride {strides} at offset {storage_offset} reaches element "
                                 f"{last} of a storage of {storage.numel} elements (key {storage.key!r})")
    return _TensorRef(storage, storage_offset, shape, strides)


def _rebuild_tensor_v2(storage: Any, storage_offset: Any, size: Any, stride: Any, requires_grad: Any = False,
                       backward_hooks: Any = None, metadata: Any = None) -> _TensorRef:
    # requires_grad, hooks and metadata describe autograd state: nothing of it matters to an array.
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None) -> Any:
    if not isinstance(data, _TensorRef):
        raise TorchFileError(f"A parameter must wrap a tensor. Received: {type(data).__name__}")
    return data


# (module, name) -> what it becomes. Exactly what a state dict of tensors needs; nothing that can run code.
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name) for name in STORAGE_DTYPES},
}


class _Unpickler(pickle.Unpickler):
    """Resolves only `ALLOWED_GLOBALS`; storages' persistent ids only where `storages` is given (the saved object)."""

    def __init__(self, data: bytes, start: int, storages: dict[str, _Storage] | None = None):
        self.stream = io.BytesIO(data)
        self.stream.seek(start)
        super().__init__(self.stream, encoding="utf-8")
        self.storages = storages

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"Refusing to load the global {module}.{name}: a legacy PyTorch file may name only "
                f"{', '.join(sorted(f'{m}.{n}' for m, n in ALLOWED_GLOBALS))}. Received: {module}.{name}") from None

    def persistent_load(self, pid: Any) -> _Storage:
        if self.storages is None:
            raise TorchFileError(f"A storage reference outside the saved object's pickle. Received: {pid!r}")
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise TorchFileError(f"A persistent id must be ('storage', type, key, location, numel, view). Received: {pid!r}")
        _, kind, key, _location, numel, view = pid  # the location (e.g. 'cpu', 'cuda:0') does not matter to numpy
        if not isinstance(kind, _StorageType) or not isinstance(key, str) or type(numel) is not int or numel < 0:
            raise TorchFileError(f"A malformed storage reference. Received: {pid!r}")
        root = self.storages.get(key)
        if root is None:
            root = self.storages[key] = _Storage(key, kind.name, numel)
        elif root.kind != kind.name or root.numel != numel:  # numel is the root storage's, also for a view
            raise TorchFileError(f"Storage {key!r} is named twice with different types or sizes. Received: {pid!r}")
        if view is None:
            return root
        # A legacy storage view: (view key, offset, size) inside the root storage; a tensor on it is offset further.
        if not (isinstance(view, tuple) and len(view) == 3 and all(type(v) is int and v >= 0 for v in view[1:])
                and view[1] + view[2] <= root.numel):
            raise TorchFileError(f"A storage view must be (key, offset, size) within its storage. Received: {view!r}")
        return _Storage(key, kind.name, view[2], view[1])

    def load_at(self) -> tuple[Any, int]:
        """The next pickle's object and the offset just past it."""
        try:
            obj = self.load()
        except TorchFileError:
            raise
        except Exception as e:  # EOFError, pickle.UnpicklingError, or a refused call of an allowed global
            end = self.stream.tell()
            if isinstance(e, EOFError) or end >= len(self.stream.getbuffer()):
                raise TorchFileError(f"The file ends inside a pickle (truncated) at byte {end}: {e}") from e
            raise TorchFileError(f"Not a readable pickle at byte {end}: {e}") from e
        return obj, self.stream.tell()


def _materialize(obj: Any, arrays: dict[str, np.ndarray]) -> Any:
    """`obj` with each tensor placeholder replaced by its numpy view (dicts, lists and tuples are walked)."""
    if isinstance(obj, _TensorRef):
        base = arrays[obj.storage.key]
        if 0 in obj.shape:
            return np.empty(obj.shape, base.dtype)
        itemsize = base.dtype.itemsize
        return np.ndarray(obj.shape, base.dtype, buffer=base, offset=(obj.storage.offset + obj.offset) * itemsize,
                          strides=tuple(s * itemsize for s in obj.strides))
    if isinstance(obj, dict):  # an OrderedDict stays one (its `_metadata` attribute is dropped)
        out = type(obj)() if type(obj) in (dict, collections.OrderedDict) else {}
        for k, v in obj.items():
            out[k] = _materialize(v, arrays)
        return out
    if isinstance(obj, list | tuple):
        return type(obj)(_materialize(v, arrays) for v in obj)
    return obj


def load(path: str | Path) -> Any:
    """The object saved in the legacy PyTorch file `path`, its tensors as read-only numpy arrays (views of the file's
    bytes, read at once). Raises `UnsafePickleError` for a pickle naming any global outside `ALLOWED_GLOBALS`
    and `TorchFileError` for anything else that is not a complete legacy file."""
    data = Path(path).read_bytes()
    if data[:4] == b"PK\x03\x04":
        raise TorchFileError(f"{path} is a zip-format PyTorch file (torch.save's default since 1.6); only the legacy format "
                             "is read here (torch.save(..., _use_new_zipfile_serialization=False) writes it). "
                             "Received: a zip archive")
    magic, pos = _Unpickler(data, 0).load_at()
    if magic != MAGIC_NUMBER:
        raise TorchFileError(f"{path} is not a legacy PyTorch file: its first pickle should be the magic number "
                             f"{MAGIC_NUMBER:#x}. Received: {magic!r}"[:400])
    version, pos = _Unpickler(data, pos).load_at()
    if version != PROTOCOL_VERSION:
        raise TorchFileError(f"Unsupported PyTorch protocol version; expected {PROTOCOL_VERSION}. Received: {version!r}")
    sys_info, pos = _Unpickler(data, pos).load_at()
    if not isinstance(sys_info, dict):
        raise TorchFileError(f"The system-info pickle must be a dict. Received: {type(sys_info).__name__}")
    order = "<" if sys_info.get("little_endian", True) else ">"
    storages: dict[str, _Storage] = {}
    saved, pos = _Unpickler(data, pos, storages).load_at()
    keys, pos = _Unpickler(data, pos).load_at()
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise TorchFileError(f"The storage-keys pickle must be a list of str. Received: {keys!r}"[:400])
    if set(keys) != set(storages) or len(keys) != len(set(keys)):
        raise TorchFileError(f"The storage keys list does not match the storages the object names: "
                             f"{len(keys)} keys for {len(storages)} storages")
    arrays: dict[str, np.ndarray] = {}
    for key in keys:
        storage = storages[key]
        if pos + 8 > len(data):
            raise TorchFileError(f"The file ends before storage {key!r} (truncated at byte {len(data)}); "
                                 f"expected its 8-byte element count at byte {pos}")
        (count,) = struct.unpack_from("<q", data, pos)
        if count != storage.numel:
            raise TorchFileError(f"Storage {key!r} should hold {storage.numel} elements. Received: a count of {count}")
        dtype = np.dtype(order + STORAGE_DTYPES[storage.kind])
        end = pos + 8 + count * dtype.itemsize
        if end > len(data):
            raise TorchFileError(f"The file ends inside storage {key!r} (truncated): it needs bytes {pos + 8}..{end}, "
                                 f"the file has {len(data)}")
        arrays[key] = np.frombuffer(data, dtype, count, pos + 8)
        pos = end
    return _materialize(saved, arrays)


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """`load(path)` for a state dict: a mapping of parameter names to arrays (0-d for scalars)."""
    saved = load(path)
    if not isinstance(saved, dict) or not all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in saved.items()):
        raise TorchFileError(f"{path} does not hold a state dict (names to tensors). Received: {type(saved).__name__}")
    return dict(saved)

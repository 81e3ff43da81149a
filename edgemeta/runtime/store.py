"""The prototype store: what the board was taught, as per-class running means, saved crash-safely.

A class is a row: its running-mean embedding (float32, or int8 with a per-class scale), its shot count
and when it was last used (for least-recently-used eviction). Optionally the store keeps each shot's
embedding (for on-device head fine-tuning) or its raw image (to re-enroll under a new model).

On disk (format version 2): an 8-byte magic, a little-endian uint32 header length, a JSON header
(format version, the bundle's model sha256, the labels) and an `.npz` payload, then the
sha256 of everything before it.
`save` is atomic (temporary file, fsync, rename, fsync directory); `load` checks magic, version,
checksum and model before it changes anything. Version-1 files (a bare `.npz`) are still read.
"""

from __future__ import annotations

import io
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgemeta.format.atomic import atomic_write, remove_stale_temporaries
from edgemeta.format.checksum import sha256

FORMAT_VERSION = 2
MAGIC = b"EMSTORE\x00"
PROTOTYPE_DTYPES = ("float32", "int8")
KEEP_SUPPORT = (None, "embeddings", "images")
LABEL_BYTES = 120  # a short Python str, its list slot and its dict entry (measured: ~110-130 B)
ROW_OBJECT_BYTES = 64  # the row's (empty) list of kept shots and its slot


class StoreError(ValueError):
    """A store file that cannot be used: corrupt, another version, or taught with another model."""


@dataclass
class _Row:
    """One class as it was before a change, to undo the change if saving fails."""

    label: str
    mean: np.ndarray
    scale: float
    count: int
    last_used: int
    support: list[Any]


def read_header(data: bytes, source: str = "the store") -> tuple[dict[str, Any], int]:
    """The JSON header of a version-2 store and the offset where its arrays start, from the file's first
    bytes (`12 +` the header's length suffice: deploy reads a board's store header without the whole file).

    Raises StoreError when `data` is not the start of a version-2 store, or is too short to hold its header."""
    if data[:8] != MAGIC or len(data) < 12:
        raise StoreError(f"{source} is not an edgemeta prototype store. Received: first bytes {data[:8]!r}, "
                         f"expected {MAGIC!r}")
    (header_length,) = struct.unpack("<I", data[8:12])
    if len(data) < 12 + header_length:
        raise StoreError(f"{source} is truncated: its header needs {12 + header_length} bytes. Received: {len(data)}")
    try:
        header = json.loads(data[12 : 12 + header_length])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise StoreError(f"{source} is corrupt: its header does not parse ({e}).") from e
    if not isinstance(header, dict):
        raise StoreError(f"{source} is corrupt: its header is not a JSON object. Received: {type(header).__name__}")
    return header, 12 + header_length


class PrototypeStore:
    """Per-class running means and counts for a model with `embedding_size`-d embeddings.

    Example:
        >>> store = PrototypeStore(3, model_sha256="ab" * 32)
        >>> store.add("cat", np.array([[1.0, 0, 0], [0, 1.0, 0]]))
        2
        >>> store.prototypes()[1].round(2).tolist()
        [[0.5, 0.5, 0.0]]
    """

    def __init__(self, embedding_size: int, model_sha256: str, prototype_dtype: str = "float32",
                 keep_support: str | None = None) -> None:
        if prototype_dtype not in PROTOTYPE_DTYPES:
            raise ValueError(f"prototype_dtype must be one of {PROTOTYPE_DTYPES}. Received: {prototype_dtype!r}")
        if keep_support not in KEEP_SUPPORT:
            raise ValueError(f"keep_support must be one of {KEEP_SUPPORT}. Received: {keep_support!r}")
        self.embedding_size = int(embedding_size)
        self.model_sha256 = model_sha256
        self.prototype_dtype = prototype_dtype
        self.keep_support = keep_support
        self._labels: list[str] = []
        self._index: dict[str, int] = {}
        self._means = np.zeros((0, self.embedding_size), np.dtype(prototype_dtype))
        self._scales = np.zeros(0, np.float32)  # int8 rows: mean = int8 * scale
        self._counts = np.zeros(0, np.int64)
        self._last_used = np.zeros(0, np.int64)
        self._support: list[list[Any]] = []  # per row: embeddings (D,) float32 or raw uint8 images
        self._clock = 0
        self._version = 0  # bumped by every change of the rows: readers cache what they derive from them
        self._median: tuple[int, int] | None = None  # (version, median_count) of that version

    # -- reading ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._labels)

    def __contains__(self, label: object) -> bool:
        return label in self._index

    @property
    def labels(self) -> list[str]:
        """Labels in row order (the order of `prototypes()`)."""
        return list(self._labels)

    def count(self, label: str) -> int:
        return int(self._counts[self._row(label)])

    @property
    def version(self) -> int:
        """Changes whenever a row is added, changed or removed (not when one is only used)."""
        return self._version

    def median_count(self) -> int:
        """The typical class's number of shots (0 when empty)."""
        if self._median is None or self._median[0] != self._version:  # classify asks on every call
            self._median = (self._version, int(np.median(self._counts[: len(self._labels)])) if self._labels else 0)
        return self._median[1]

    def prototypes(self) -> tuple[list[str], np.ndarray]:
        """`(labels, (n, D) float32 means)` in row order."""
        return list(self._labels), self.prototype_block(0, len(self._labels))

    def prototype_block(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """The float32 means of rows `start:stop` (a view for a float32 store; int8 rows dequantized,
        into `out[:rows]` when given), the same values as those rows of `prototypes()`, without the
        whole matrix."""
        stop = min(stop, len(self._labels))
        if self.prototype_dtype == "int8":
            # float32(int8) * scale, as one ufunc (into `out`: no fresh array per call)
            return np.multiply(self._means[start:stop], self._scales[start:stop, None], dtype=np.float32,
                               out=None if out is None else out[: stop - start])
        return self._means[start:stop]

    def support(self, label: str) -> list[Any]:
        """The kept shots of `label` (embeddings or images, per `keep_support`)."""
        return list(self._support[self._row(label)])

    def support_bytes(self, label: str) -> int:
        """What `label`'s kept shots take, as `nbytes` counts them."""
        return sum(_shot_bytes(s) for s in self._support[self._row(label)])

    def by_last_use(self) -> list[str]:
        """Labels from the least to the most recently used."""
        order = np.argsort(self._last_used[: len(self._labels)], kind="stable")
        return [self._labels[i] for i in order]

    def touch(self, labels: list[str]) -> None:
        """Marks `labels` as used now (a prediction or an enrollment)."""
        self._clock += 1
        for label in labels:
            if label in self._index:
                self._last_used[self._index[label]] = self._clock

    def touch_rows(self, rows: Any) -> None:
        """`touch` by row numbers (the order of `prototypes()`), as classify finds them."""
        self._clock += 1
        n = len(self._labels)
        for i in rows:
            if 0 <= i < n:
                self._last_used[i] = self._clock

    def nbytes(self) -> int:
        """Bytes the store holds in memory: arrays, labels and kept support data."""
        support = sum(_shot_bytes(s) for shots in self._support for s in shots)
        arrays = self._means.nbytes + self._scales.nbytes + self._counts.nbytes + self._last_used.nbytes
        return arrays + (LABEL_BYTES + ROW_OBJECT_BYTES) * len(self._labels) + support

    def bytes_per_class(self, shots: int = 5, image_bytes: int | None = None) -> int:
        """Memory one more class with `shots` shots takes in this store (what the planner multiplies).
        A store that keeps images needs `image_bytes`, the size of one raw image (the store does not
        know it: `edgemeta.runtime.budget.raw_image_bytes` reads it from the bundle's manifest)."""
        if self.keep_support == "images" and image_bytes is None:
            raise ValueError("bytes_per_class of a store that keeps images needs image_bytes, the bytes of one raw "
                             "image (edgemeta.runtime.budget.raw_image_bytes(manifest)). Received: None")
        per_shot = {None: 0, "embeddings": 4 * self.embedding_size + 100, "images": (image_bytes or 0) + 100}
        return self.row_bytes + LABEL_BYTES + ROW_OBJECT_BYTES + shots * per_shot[self.keep_support]

    @property
    def row_bytes(self) -> int:
        """Bytes of one row of the arrays (prototype, scale, count, last use), a class's or a spare one."""
        return np.dtype(self.prototype_dtype).itemsize * self.embedding_size + 4 + 8 + 8

    @property
    def capacity(self) -> int:
        """Rows allocated (classes plus spare rows), which `nbytes` counts."""
        return len(self._means)

    # -- changing (each returns what `undo` needs) ----------------------------------------------
    def add(self, label: str, embeddings: np.ndarray, support: list[Any] | None = None) -> int:
        """Adds `embeddings` `(n, D)` as shots of `label`; returns the class's shot count."""
        embeddings = np.asarray(embeddings, np.float64)
        if embeddings.ndim != 2 or embeddings.shape[1] != self.embedding_size or len(embeddings) == 0:
            raise ValueError(f"Expected embeddings of shape (n >= 1, {self.embedding_size}). Received: {embeddings.shape}")
        if label in self._index:
            i = self._index[label]
            old_mean = self._mean(i)
            n, m = int(self._counts[i]), len(embeddings)
            mean = old_mean + (embeddings.sum(0) - m * old_mean) / (n + m)  # running mean, no stored sum
            self._set(i, mean)
            self._counts[i] = n + m
        else:
            i = self._append_row(label)
            self._set(i, embeddings.mean(0))
            self._counts[i] = len(embeddings)
        self._version += 1
        if self.keep_support == "embeddings":
            self._support[i].extend(np.asarray(e, np.float32) for e in embeddings)
        elif self.keep_support == "images" and support is not None:
            self._support[i].extend(support)
        self.touch([label])
        return int(self._counts[i])

    def remove(self, label: str) -> None:
        """Deletes `label`'s row (the last row moves into its place)."""
        i, last = self._row(label), len(self._labels) - 1
        if i != last:
            moved = self._labels[last]
            for array in (self._means, self._scales, self._counts, self._last_used):
                array[i] = array[last]
            self._labels[i], self._support[i] = moved, self._support[last]
            self._index[moved] = i
        self._labels.pop(), self._support.pop()
        del self._index[label]  # the row past the end is spare capacity now
        self._version += 1

    def shrink_to(self, capacity: int) -> None:
        """Frees the spare rows beyond `capacity` (never a class's): what an undone change gives back."""
        keep = max(capacity, len(self._labels))
        if keep < len(self._means):  # copies, so that the longer arrays are freed, not kept alive as bases
            self._means, self._scales = self._means[:keep].copy(), self._scales[:keep].copy()
            self._counts, self._last_used = self._counts[:keep].copy(), self._last_used[:keep].copy()

    def snapshot(self, label: str) -> _Row | None:
        """`label`'s row as it is now (None when absent), for `restore`."""
        if label not in self._index:
            return None
        i = self._index[label]
        return _Row(label, self._means[i].copy(), float(self._scales[i]), int(self._counts[i]),
                    int(self._last_used[i]), list(self._support[i]))

    def restore(self, label: str, row: _Row | None) -> None:
        """Puts `label` back as `snapshot` saw it (removing it if it did not exist)."""
        if label in self._index:
            self.remove(label)
        if row is None:
            return
        i = self._append_row(label)
        self._means[i], self._scales[i], self._counts[i], self._last_used[i] = row.mean, row.scale, row.count, row.last_used
        self._support[i] = row.support
        self._version += 1

    # -- persistence ---------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        n = len(self._labels)
        arrays: dict[str, np.ndarray] = {"means": self._means[:n], "scales": self._scales[:n], "counts": self._counts[:n],
                                         "last_used": self._last_used[:n]}
        if self.keep_support is not None:
            shots = [np.asarray(s) for row in self._support for s in row]
            arrays["support_rows"] = np.array([len(row) for row in self._support], np.int64)
            arrays["support_shapes"] = np.array([list(s.shape) + [0] * (3 - s.ndim) for s in shots], np.int64).reshape(-1, 3)
            arrays["support_data"] = (np.concatenate([s.ravel() for s in shots]) if shots
                                      else np.zeros(0, np.float32 if self.keep_support == "embeddings" else np.uint8))
        payload = io.BytesIO()
        np.savez(payload, **arrays)
        payload_bytes = payload.getvalue()
        header = {"format": "edgemeta.store", "format_version": FORMAT_VERSION, "model_sha256": self.model_sha256,
                  "embedding_size": self.embedding_size, "prototype_dtype": self.prototype_dtype,
                  "keep_support": self.keep_support, "labels": self._labels, "clock": self._clock,
                  "payload_bytes": len(payload_bytes)}
        header_bytes = json.dumps(header).encode()
        body = MAGIC + struct.pack("<I", len(header_bytes)) + header_bytes + payload_bytes
        return body + sha256(body).digest()  # the checksum covers the header too: labels are data

    def save(self, path: str | os.PathLike) -> None:
        """Writes the store to `path` atomically: a reader, a SIGKILL or a power cut sees the old
        file or the new one, never a mix."""
        atomic_write(path, self.to_bytes())

    @classmethod
    def load(cls, path: str | os.PathLike, model_sha256: str | None = None) -> PrototypeStore:
        """Reads a store saved by `save`. Raises `StoreError` for a corrupt file, an unknown version,
        or (with `model_sha256`) a store taught with another model; nothing is changed then."""
        path = Path(path)
        remove_stale_temporaries(path)
        data = path.read_bytes()
        if data[:2] == b"PK":  # version 1: a bare .npz of sums and counts
            store = cls._from_v1(data, str(path))
        else:
            store = cls._from_v2(data, str(path))
        if model_sha256 is not None and store.model_sha256 != model_sha256:
            raise StoreError(
                f"Store {str(path)!r} was taught with another model (sha256 {store.model_sha256[:12]}…); "
                f"this bundle's model is {model_sha256[:12]}…. Prototypes are not portable across models: "
                "re-enroll, or load the matching bundle."
            )
        return store

    @classmethod
    def _from_v2(cls, data: bytes, source: str) -> PrototypeStore:
        header, payload_start = read_header(data, source)
        version = header.get("format_version")
        if version != FORMAT_VERSION:
            raise StoreError(f"{source} has store format version {version!r}; this edgemeta "
                             f"reads versions 1 and {FORMAT_VERSION}. Upgrade edgemeta.")
        body, digest = data[:-32], data[-32:]
        if sha256(body).digest() != digest:
            raise StoreError(f"{source} is corrupt: its contents do not match its checksum "
                             f"(Received {len(data)} bytes; truncated or damaged).")
        payload = body[payload_start:]
        store = cls(header["embedding_size"], header["model_sha256"], header["prototype_dtype"], header["keep_support"])
        with np.load(io.BytesIO(payload), allow_pickle=False) as arrays:
            store._means, store._scales = arrays["means"], arrays["scales"]
            store._counts, store._last_used = arrays["counts"], arrays["last_used"]
            store._support = [[] for _ in header["labels"]]
            if store.keep_support is not None:
                store._support = _unflatten_support(arrays["support_rows"], arrays["support_shapes"], arrays["support_data"])
        store._labels = list(header["labels"])
        store._index = {label: i for i, label in enumerate(store._labels)}
        store._clock = int(header.get("clock", 0))
        return store

    @classmethod
    def _from_v1(cls, data: bytes, source: str) -> PrototypeStore:
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
                header, sums = json.loads(str(arrays["header"])), arrays["sums"]
        except Exception as e:  # a damaged zip can fail in many ways inside numpy/zipfile
            raise StoreError(f"{source} is corrupt (version-1 store): {e!r}") from e
        if header.get("format_version") != 1:
            raise StoreError(f"{source}: unsupported store version. Received: {header.get('format_version')!r}")
        store = cls(sums.shape[1], header["model_sha256"])
        for label, total, count in zip(header["labels"], sums, header["counts"]):
            store.add(label, np.asarray(total, np.float64)[None] / count)
            store._counts[store._index[label]] = count
        store._version += 1  # the counts changed after the adds
        return store

    # -- internals -----------------------------------------------------------------------------
    def _append_row(self, label: str) -> int:
        i = len(self._labels)
        if i == len(self._means):  # grow by a quarter: amortised O(1) appends, little spare memory
            grow = max(16, i // 4)
            self._means = np.concatenate([self._means, np.zeros((grow, self.embedding_size), self._means.dtype)])
            self._scales = np.concatenate([self._scales, np.zeros(grow, self._scales.dtype)])
            self._counts = np.concatenate([self._counts, np.zeros(grow, self._counts.dtype)])
            self._last_used = np.concatenate([self._last_used, np.zeros(grow, self._last_used.dtype)])
        self._labels.append(label)
        self._index[label] = i
        self._support.append([])
        self._counts[i] = self._last_used[i] = 0
        return i

    def _row(self, label: str) -> int:
        if label not in self._index:
            raise KeyError(f"Unknown label {label!r}. Enrolled labels: {sorted(self._labels)}")
        return self._index[label]

    def _mean(self, i: int) -> np.ndarray:
        if self.prototype_dtype == "int8":
            return self._means[i].astype(np.float64) * float(self._scales[i])
        return self._means[i].astype(np.float64)

    def _set(self, i: int, mean: np.ndarray) -> None:
        if self.prototype_dtype == "int8":  # symmetric per-class scale: the largest component maps to 127
            scale = max(float(np.abs(mean).max()) / 127.0, 1e-12)
            self._means[i] = np.clip(np.round(mean / scale), -127, 127).astype(np.int8)
            self._scales[i] = scale
        else:
            self._means[i] = mean


def _unflatten_support(rows: np.ndarray, shapes: np.ndarray, data: np.ndarray) -> list[list[np.ndarray]]:
    out, offset, k = [], 0, 0
    for n in rows:
        shots = []
        for _ in range(int(n)):
            shape = tuple(int(s) for s in shapes[k] if s > 0)
            size = int(np.prod(shape))
            shots.append(data[offset : offset + size].reshape(shape))
            offset, k = offset + size, k + 1
        out.append(shots)
    return out


def _shot_bytes(shot: Any) -> int:
    return np.asarray(shot).nbytes + 100  # the array and its object header

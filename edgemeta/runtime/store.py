"""The prototype store: what the board was taught, as per-class running means, saved crash-safely.

A class is a row: its running-mean embedding (float32, or int8 with a per-class scale), its shot count,
when it was last used (a logical clock, for least-recently-used eviction), when it was enrolled and last
used in wall-clock time (Unix seconds, for people), and optionally a small JPEG thumbnail (at most
THUMBNAIL_MAX_BYTES). Optionally the store keeps each shot's embedding (for on-device head fine-tuning)
or its raw image (to re-enroll under a new model).

On disk (format version 3): an 8-byte magic, a little-endian uint32 header length, a JSON header
(format version, the bundle's model sha256, the labels) and an `.npz` payload (uncompressed), then the
sha256 of everything before it. Version 3 added the payload's wall-clock times and thumbnails; version-2
files (the same layout without them) load with no thumbnails and unknown (None) times.
- `save` is atomic (temporary file, fsync, rename, fsync directory) and streamed: the header, then each
  array straight from the store's memory, the checksum computed on the way (no copy of the file in
  memory). It writes as the store's one writer (`edgemeta.runtime.lock`): under the caller's lock, or
  one taken for the save.
- `load` streams too (the checksum in chunks, then one array at a time) and checks, before it builds
  anything, the magic, version and checksum, then every header field and every array's name, dtype
  and shape against the labels, then the values (finite means, counts >= 1, thumbnails' sizes declared
  and bounded before their bytes are read, each a JPEG): a file that fails is a
  `StoreError` naming the field. Version-1 files (a bare `.npz`) are still read, their declared sizes
  checked before anything is inflated. Nothing is unpickled.
"""

from __future__ import annotations

import io
import json
import os
import re
import struct
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from edgemeta.format.atomic import atomic_writer
from edgemeta.format.checksum import sha256

if TYPE_CHECKING:
    import zipfile

    from edgemeta.runtime.lock import StoreLock

FORMAT_VERSION = 3
READ_VERSIONS = (2, 3)  # of the header-and-npz layout (version 1, a bare .npz, is told apart by its first bytes)
MAGIC = b"EMSTORE\x00"
PROTOTYPE_DTYPES = ("float32", "int8")
KEEP_SUPPORT = (None, "embeddings", "images")
SUPPORT_DTYPES = {"embeddings": np.dtype(np.float32), "images": np.dtype(np.uint8)}
HEADER_KEYS = ("format", "format_version", "model_sha256", "embedding_size", "prototype_dtype", "keep_support",
               "labels", "clock", "payload_bytes")
MAX_LABEL_CHARS = 1024  # the service takes 256; a label is a name, not a payload
MAX_EMBEDDING_SIZE = 1 << 16
# A label's list slot, its index entry (dict slot and table share, its row number as an int object):
# measured with tracemalloc beyond sys.getsizeof(label), 41 B/label at 100 classes, 56 B at 5000, 74 B at 100000.
LABEL_ENTRY_BYTES = 80
LABEL_BYTES = sys.getsizeof("x" * 16) + LABEL_ENTRY_BYTES  # a typical 16-character label, for planning
ROW_OBJECT_BYTES = 64  # the row's (empty) list of kept shots and its slot
SHOT_OBJECT_BYTES = 128  # a kept shot's array object, shape, strides and list slot (measured: 121 B)
CHUNK_BYTES = 1 << 18  # what load and save hold of the file at a time
V1_SLACK_BYTES = 1 << 20  # version 1 was written uncompressed: its arrays declare about the file's size
# load/save's fixed transient beyond the figures `persist_peak_bytes` scales (zipfile's objects, buffers
# of CHUNK_BYTES, a label's JSON): see persist_peak_bytes for the measurement.
PERSIST_FIXED_BYTES = 1 << 20
# A class's thumbnail: a JPEG of at most THUMBNAIL_SIDE pixels on its longer side and THUMBNAIL_MAX_BYTES bytes
# (`edgemeta.format.images.thumbnail_jpeg`), for a page listing the classes: 6 KiB per class at most.
THUMBNAIL_SIDE = 64
THUMBNAIL_MAX_BYTES = 6144
# A thumbnail's entry in the store's dict by label: 24 B in a table CPython grows to 3x its entries rounded up to
# a power of two, and its index: up to ~120 B per entry just after it grows (tracemalloc: 45 B at 3000 entries).
THUMBNAIL_ENTRY_BYTES = 128
THUMBNAIL_CLASS_BYTES = sys.getsizeof(b"x" * THUMBNAIL_MAX_BYTES) + THUMBNAIL_ENTRY_BYTES  # the most one costs
MAX_TIMESTAMP = 1e11  # Unix seconds (the year 5138): a saved time beyond it is damage, not a date
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class StoreError(ValueError):
    """A store file that cannot be used: corrupt, another version, or taught with another model."""


class StoreLockedError(StoreError):
    """Another writer holds the store file's lock (`edgemeta.runtime.lock`); its message names the PID."""


class StoreReadOnlyError(StoreError):
    """A change asked of an adapter opened with `read_only=True`, or closed."""


@dataclass
class _Row:
    """One class as it was before a change, to undo the change if saving fails."""

    label: str
    mean: np.ndarray
    scale: float
    count: int
    last_used: int
    support: list[Any]
    enrolled_at: float = float("nan")
    used_at: float = float("nan")
    thumbnail: bytes | None = None


@dataclass(frozen=True)
class ClassInfo:
    """One enrolled class as a person sees it: `shots` images; `last_used` (its last enrollment, or the last
    time it was classify's answer) and `enrolled` (its first enrollment) in Unix seconds, None when unknown
    (a store saved before format version 3); whether it has a thumbnail."""

    label: str
    shots: int
    last_used: float | None
    enrolled: float | None
    has_thumbnail: bool


def read_header(data: bytes, source: str = "the store") -> tuple[dict[str, Any], int]:
    """The JSON header of a version-2 or 3 store and the offset where its arrays start, from the file's first
    bytes (`12 +` the header's length suffice: deploy reads a board's store header without the whole file).

    Raises StoreError when `data` is not the start of such a store, or is too short to hold its header."""
    if data[:8] != MAGIC or len(data) < 12:
        raise StoreError(f"{source} is not an edgemeta prototype store. Received: first bytes {data[:8]!r}, "
                         f"expected {MAGIC!r}")
    (header_length,) = struct.unpack("<I", data[8:12])
    if len(data) < 12 + header_length:
        raise StoreError(f"{source} is truncated: its header needs {12 + header_length} bytes. Received: {len(data)}")
    return _parse_header(data[12 : 12 + header_length], source), 12 + header_length


def _parse_header(text: bytes, source: str) -> dict[str, Any]:
    try:
        header = json.loads(text)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, a 5000-digit int, deep nesting
        raise StoreError(f"{source} is corrupt: its header does not parse ({str(e)[:200]}).") from e
    if not isinstance(header, dict):
        raise StoreError(f"{source} is corrupt: its header is not a JSON object. Received: {type(header).__name__}")
    return header


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
        self._enrolled_at = np.zeros(0, np.float64)  # wall-clock Unix seconds; NaN: unknown (an older file)
        self._used_at = np.zeros(0, np.float64)
        self._support: list[list[Any]] = []  # per row: embeddings (D,) float32 or raw uint8 images
        self._thumbnails: dict[str, bytes] = {}  # by label, not per row: a store without them pays nothing
        self._thumbnail_nbytes = 0  # sum of thumbnail_bytes over the thumbnails
        self.wall_clock: Callable[[], float] = time.time  # (settable: tests move time by hand)
        self._clock = 0
        self._label_nbytes = 0  # sum of label_bytes over the labels
        self._label_json = 0  # sum of the labels' JSON lengths: the header's size, known without encoding it
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
        """Changes whenever a row is added, changed, renamed or removed (not when one is only used or given a
        thumbnail): what classify derives from the rows is kept until it changes."""
        return self._version

    def counts_at(self, rows: np.ndarray) -> np.ndarray:
        """The number of shots of the classes at `rows` (row order, as `prototypes` gives it)."""
        return self._counts[: len(self._labels)][np.asarray(rows, np.int64)].copy()

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

    def thumbnail(self, label: str) -> bytes | None:
        """`label`'s thumbnail, JPEG bytes (None: it has none); KeyError for an unknown label."""
        self._row(label)
        return self._thumbnails.get(label)

    def has_thumbnail(self, label: str) -> bool:
        """Whether `label` is enrolled with a thumbnail (False for an unknown label)."""
        return label in self._thumbnails

    def thumbnail_bytes(self, label: str | None = None) -> int:
        """What the thumbnails take (of `label` alone, when given; 0 without one), as `nbytes` counts them: each
        bytes object and its dict entry. Forgetting the class gives this back."""
        if label is None:
            return self._thumbnail_nbytes
        data = self._thumbnails.get(label)
        return 0 if data is None else _thumbnail_bytes(data)

    def classes(self) -> list[ClassInfo]:
        """Every class in row order: its label, shots, wall-clock times and whether it has a thumbnail."""
        return [ClassInfo(label, int(self._counts[i]), _seconds(self._used_at[i]), _seconds(self._enrolled_at[i]),
                          label in self._thumbnails) for i, label in enumerate(self._labels)]

    def by_last_use(self) -> list[str]:
        """Labels from the least to the most recently used."""
        order = np.argsort(self._last_used[: len(self._labels)], kind="stable")
        return [self._labels[i] for i in order]

    def touch(self, labels: list[str]) -> None:
        """Marks `labels` as used now (a prediction or an enrollment), on the logical clock and the wall clock."""
        self.touch_rows([self._index[label] for label in labels if label in self._index])

    def touch_rows(self, rows: Any) -> None:
        """`touch` by row numbers (the order of `prototypes()`), as classify finds them."""
        self._clock += 1
        n, now = len(self._labels), float(self.wall_clock())
        for i in rows:
            if 0 <= i < n:
                self._last_used[i] = self._clock
                self._used_at[i] = now

    def nbytes(self) -> int:
        """Bytes the store holds in memory: arrays, labels (each as `label_bytes` counts it), kept support data
        and thumbnails (`thumbnail_bytes`)."""
        support = sum(_shot_bytes(s) for shots in self._support for s in shots)
        arrays = sum(a.nbytes for a in (self._means, self._scales, self._counts, self._last_used, self._enrolled_at,
                                        self._used_at))
        return arrays + self._label_nbytes + ROW_OBJECT_BYTES * len(self._labels) + support + self._thumbnail_nbytes

    def label_bytes(self, label: str) -> int:
        """What `label` takes in the store: the str object itself (a 1 MiB label is a 1 MiB object) and its
        entries in the label list and the index. Forgetting the label gives this back."""
        return sys.getsizeof(label) + LABEL_ENTRY_BYTES

    def persist_peak_bytes(self) -> int:
        """An upper bound of the bytes a `save` or a `load` of this store holds transiently beyond `nbytes()`
        (which the loaded arrays, labels and shots are part of): what a memory budget must leave free.

        Both stream the file: save writes the header label by label and each array from the store's own
        memory; load hashes the file in CHUNK_BYTES pieces and reads one array at a time into its final
        place. What remains: on load the header's bytes and their decoded text (twice the header, whose
        size the labels' JSON lengths give), about 80 B per kept shot of shape arithmetic and the thumbnails'
        sizes (8 B per class; each thumbnail is read straight into the bytes object the store keeps); on save
        the kept shots' row and shape tables (8 B per class, 24 B per shot) and the thumbnails' list and sizes
        (16 B per class); plus PERSIST_FIXED_BYTES (1 MiB) for the zip directory, the chunk buffers and a label's JSON.

        Measured (tests/runtime/test_store_validation.py, AMD EPYC, CPython 3.11, numpy 2.4): tracemalloc
        saw 20-89 KiB on save and 453-500 KiB on load beyond the result for 600 classes of 256-d with kept
        embeddings or images, and 1601 KiB on load for 150 labels of 1000 '€' (a 0.9 MB header); this bound
        said 1274 and 2785 KiB. Peak RSS in a fresh process (VmHWM reset through /proc/self/clear_refs)
        rose 0 KiB above the steady state on save and above the loaded state on load, for a 19.7 MiB store
        of 5000 x 1024 float32 and a 21.2 MiB one of 2000 kept 105x105 images (75.1 / 58.9 MiB and
        100.8 / 63.5 MiB before streaming)."""
        n, shots = len(self._labels), sum(map(len, self._support))
        header = 512 + self._label_json + 2 * n  # the fields besides the labels take about 250 B
        return PERSIST_FIXED_BYTES + max(2 * header + 80 * shots + 9 * n, 24 * n + 24 * shots)

    def bytes_per_class(self, shots: int = 5, image_bytes: int | None = None, thumbnails: bool = False) -> int:
        """Memory one more class with `shots` shots takes in this store (what the planner multiplies).
        A store that keeps images needs `image_bytes`, the size of one raw image (the store does not
        know it: `edgemeta.runtime.budget.raw_image_bytes` reads it from the bundle's manifest). With
        `thumbnails`, a class's thumbnail at its largest (THUMBNAIL_CLASS_BYTES) is part of it."""
        if self.keep_support == "images" and image_bytes is None:
            raise ValueError("bytes_per_class of a store that keeps images needs image_bytes, the bytes of one raw "
                             "image (edgemeta.runtime.budget.raw_image_bytes(manifest)). Received: None")
        per_shot = {None: 0, "embeddings": 4 * self.embedding_size + SHOT_OBJECT_BYTES,
                    "images": (image_bytes or 0) + SHOT_OBJECT_BYTES}
        return (self.row_bytes + LABEL_BYTES + ROW_OBJECT_BYTES + shots * per_shot[self.keep_support]
                + (THUMBNAIL_CLASS_BYTES if thumbnails else 0))

    @property
    def row_bytes(self) -> int:
        """Bytes of one row of the arrays (prototype, scale, count, last use, wall-clock enrollment and use), a
        class's or a spare one."""
        return np.dtype(self.prototype_dtype).itemsize * self.embedding_size + 4 + 8 + 8 + 8 + 8

    @property
    def capacity(self) -> int:
        """Rows allocated (classes plus spare rows), which `nbytes` counts."""
        return len(self._means)

    # -- changing (each returns what `undo` needs) ----------------------------------------------
    def add(self, label: str, embeddings: np.ndarray, support: list[Any] | None = None) -> int:
        """Adds `embeddings` `(n, D)` as shots of `label`; returns the class's shot count. A new label is a
        non-empty str of at most MAX_LABEL_CHARS characters."""
        if label not in self._index:
            check_label(label)
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
            self._enrolled_at[i] = float(self.wall_clock())
        self._version += 1
        if self.keep_support == "embeddings":
            self._support[i].extend(np.asarray(e, np.float32) for e in embeddings)
        elif self.keep_support == "images" and support is not None:
            self._support[i].extend(support)
        self.touch([label])
        return int(self._counts[i])

    def remove(self, label: str) -> None:
        """Deletes `label`'s row and thumbnail (the last row moves into its place)."""
        i, last = self._row(label), len(self._labels) - 1
        if i != last:
            moved = self._labels[last]
            for array in self._arrays():
                array[i] = array[last]
            self._labels[i], self._support[i] = moved, self._support[last]
            self._index[moved] = i
        self._labels.pop(), self._support.pop()
        del self._index[label]  # the row past the end is spare capacity now
        self._label_nbytes -= self.label_bytes(label)
        self._label_json -= _json_length(label)
        self._put_thumbnail(label, None)
        self._version += 1

    def rename(self, old: str, new: str) -> None:
        """Gives class `old` the label `new`, with everything it holds (prototype, shots, times, thumbnail).
        KeyError when `old` is not enrolled; ValueError when `new` is not a label (`check_label`) or is
        enrolled already. Undone by `rename(new, old)`."""
        i = self._row(old)
        check_label(new)
        if new in self._index:
            raise ValueError(f"Cannot rename {old!r} to {new!r}: a class is enrolled under {new!r} already (forget it "
                             f"first, or pick another label). Received: {new!r}")
        self._labels[i] = new
        del self._index[old]
        self._index[new] = i
        self._label_nbytes += self.label_bytes(new) - self.label_bytes(old)
        self._label_json += _json_length(new) - _json_length(old)
        if old in self._thumbnails:  # the same bytes under the new key: the same cost
            self._thumbnails[new] = self._thumbnails.pop(old)
        self._version += 1

    def set_thumbnail(self, label: str, data: bytes | None) -> None:
        """Sets `label`'s thumbnail to `data` (`check_thumbnail`: JPEG bytes of at most THUMBNAIL_MAX_BYTES;
        None removes it). KeyError for an unknown label, ValueError for bytes that are not a thumbnail."""
        self._row(label)
        self._put_thumbnail(label, None if data is None else check_thumbnail(data))

    def shrink_to(self, capacity: int) -> None:
        """Frees the spare rows beyond `capacity` (never a class's): what an undone change gives back."""
        keep = max(capacity, len(self._labels))
        if keep < len(self._means):  # copies, so that the longer arrays are freed, not kept alive as bases
            (self._means, self._scales, self._counts, self._last_used, self._enrolled_at,
             self._used_at) = (array[:keep].copy() for array in self._arrays())

    def snapshot(self, label: str) -> _Row | None:
        """`label`'s row as it is now (None when absent), for `restore`."""
        if label not in self._index:
            return None
        i = self._index[label]
        return _Row(label, self._means[i].copy(), float(self._scales[i]), int(self._counts[i]),
                    int(self._last_used[i]), list(self._support[i]), float(self._enrolled_at[i]),
                    float(self._used_at[i]), self._thumbnails.get(label))

    def restore(self, label: str, row: _Row | None) -> None:
        """Puts `label` back as `snapshot` saw it (removing it if it did not exist)."""
        if label in self._index:
            self.remove(label)
        if row is None:
            return
        i = self._append_row(label)
        self._means[i], self._scales[i], self._counts[i], self._last_used[i] = row.mean, row.scale, row.count, row.last_used
        self._enrolled_at[i], self._used_at[i] = row.enrolled_at, row.used_at
        self._support[i] = row.support
        self._put_thumbnail(label, row.thumbnail)
        self._version += 1

    # -- persistence ---------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, lock: StoreLock | None = None) -> None:
        """Writes the store to `path` atomically: a reader, a SIGKILL or a power cut sees the old file or
        the new one, never a mix. Symbolic links are followed (a linked store stays a link); the file
        keeps its mode.

        One writer per store: under `lock`, the writer lock its caller holds for `path` (an adapter's),
        else under the lock taken for this save alone; `StoreLockedError` when another writer holds it."""
        from edgemeta.runtime.lock import StoreLock, resolve_store_path

        target = resolve_store_path(path)
        if lock is None:
            with StoreLock.acquire(target) as taken:
                self._write_file(taken.path)
        elif not lock.held or lock.path != target:
            raise StoreError(f"save(lock=...) needs the held lock of the file it writes. Received: the lock of "
                             f"{str(lock.path)!r} ({'held' if lock.held else 'released'}) for {str(target)!r}")
        else:
            self._write_file(target)

    def to_bytes(self) -> bytes:
        """The bytes `save` writes (built in memory: for tests and tools, not the board)."""
        buffer = io.BytesIO()
        self.write_to(buffer)
        return buffer.getvalue()

    def write_to(self, out: BinaryIO) -> int:
        """Writes the store file to `out` front to back in one pass: the header (label by label), each array
        from the store's own memory, then the sha256 of all of it, computed on the way. Returns the bytes
        written. The payload's length, which the header states, comes from a dry run that only counts."""
        members = self._members()
        payload_bytes = _write_npz(_Stream(None), members)
        prefix, suffix = self._header_parts(payload_bytes)
        n = len(self._labels)
        header_length = len(prefix) + self._label_json + 2 * max(n - 1, 0) + len(suffix)
        digest = sha256()
        head = _Stream(out, digest)
        head.write(MAGIC + struct.pack("<I", header_length) + prefix)
        for i, label in enumerate(self._labels):  # as json.dumps writes the list, without the whole string
            head.write((", " + json.dumps(label) if i else json.dumps(label)).encode("ascii"))
        head.write(suffix)
        if head.position != 12 + header_length:  # the label lengths kept by add/remove disagree: a bug, not a file
            raise RuntimeError(f"Store header length {head.position - 12} != the computed {header_length}")
        payload = _Stream(out, digest)  # its own positions: the zip's offsets count from the payload's start
        written = _write_npz(payload, members)
        out.write(digest.digest())
        return head.position + written + 32

    @classmethod
    def load(cls, path: str | os.PathLike, model_sha256: str | None = None) -> PrototypeStore:
        """Reads a store saved by `save` (or a version-1 or 2 file: no thumbnails, unknown times). Raises
        `StoreError` for a corrupt or inconsistent file (naming the field and what it holds), an unknown
        version, or (with `model_sha256`) a store taught with another model. Takes no lock and deletes nothing: a reader
        beside a live writer is safe (saves are atomic renames)."""
        path = Path(path)
        source = str(path)
        if path.is_dir():
            raise StoreError(f"{source} is a directory; expected a store file (e.g. {str(path / 'taught.store')!r}). "
                             "Received: a directory")
        with open(path, "rb") as f:  # one open file: the checksum and the arrays are read from the same bytes
            size = os.fstat(f.fileno()).st_size
            first = f.read(12)
            store = cls._from_v1(f, size, source) if first[:2] == b"PK" else cls._from_v2(f, first, size, source)
        if model_sha256 is not None and store.model_sha256 != model_sha256:
            raise StoreError(
                f"Store {str(path)!r} was taught with another model (sha256 {store.model_sha256[:12]}…); "
                f"this bundle's model is {model_sha256[:12]}…. Prototypes are not portable across models: "
                "re-enroll, or load the matching bundle."
            )
        return store

    @classmethod
    def _from_v2(cls, f: BinaryIO, first: bytes, size: int, source: str) -> PrototypeStore:
        """A version-2 or 3 store: the magic, the JSON header, the `.npz` payload and the checksum."""
        if first[:8] != MAGIC or len(first) < 12:
            read_header(first, source)  # raises: not a store
        (header_length,) = struct.unpack("<I", first[8:12])
        if size < 12 + header_length:
            raise StoreError(f"{source} is truncated: its header needs {12 + header_length} bytes. Received: {size}")
        header, payload_start = _parse_header(f.read(header_length), source), 12 + header_length
        version = header.get("format_version")
        if not _is_int(version) or version not in READ_VERSIONS:
            raise StoreError(f"{source} has store format version {version!r}; this edgemeta "
                             f"reads versions 1 to {FORMAT_VERSION}. Upgrade edgemeta.")
        _verify_checksum(f, size, source)
        embedding_size, model_sha, dtype, keep, labels, clock = _check_header(header, source)
        payload_length = size - 32 - payload_start
        if header["payload_bytes"] != payload_length:
            raise StoreError(f"{source} is corrupt: its header's 'payload_bytes' must be the arrays' length, "
                             f"{payload_length}. Received: {_show(header['payload_bytes'])}")
        n = len(labels)
        names = ["means", "scales", "counts", "last_used"]
        if version >= 3:
            names += ["enrolled_at", "used_at", "thumbnail_sizes", "thumbnail_data"]
        if keep is not None:
            names += ["support_rows", "support_shapes", "support_data"]
        support: list[list[Any]] = [[] for _ in labels]
        enrolled_at, used_at, thumbnails = np.full(n, np.nan), np.full(n, np.nan), {}  # version 2: not known
        with _open_npz(_Window(f, payload_start, payload_length), names, source, stored_only=True) as (zf, infos):
            means = _read_array(zf, infos, "means", np.dtype(dtype), (n, embedding_size), source)
            scales = _read_array(zf, infos, "scales", np.dtype(np.float32), (n,), source)
            counts = _read_array(zf, infos, "counts", np.dtype(np.int64), (n,), source)
            last_used = _read_array(zf, infos, "last_used", np.dtype(np.int64), (n,), source)
            _check_values(means, scales, counts, last_used, labels, dtype, source)
            if version >= 3:
                enrolled_at = _read_times(zf, infos, "enrolled_at", labels, source)
                used_at = _read_times(zf, infos, "used_at", labels, source)
                thumbnails = _read_thumbnails(zf, infos, labels, source)
            if keep is not None:
                support = _read_support(zf, infos, keep, n, embedding_size, size, source)
        store = cls(embedding_size, model_sha, dtype, keep)
        store._means, store._scales, store._counts, store._last_used = means, scales, counts, last_used
        store._enrolled_at, store._used_at = enrolled_at, used_at
        store._support, store._clock = support, clock
        store._set_labels(labels)
        for label, data in thumbnails.items():
            store._put_thumbnail(label, data)
        return store

    @classmethod
    def _from_v1(cls, f: BinaryIO, size: int, source: str) -> PrototypeStore:
        """A version-1 store: a bare `.npz` of a JSON header (labels, counts) and the per-class sums."""
        names = ["header", "sums"]
        with _open_npz(_Window(f, 0, size), names, source, stored_only=False) as (zf, infos):
            declared = sum(info.file_size for info in infos.values())
            if declared > size + V1_SLACK_BYTES:  # a zip bomb: refused before anything is inflated
                raise StoreError(f"{source} is a version-1 store whose arrays declare {declared} bytes in a {size}-byte "
                                 "file; edgemeta wrote them uncompressed. Refused before inflating. Received: "
                                 + ", ".join(f"{name} {info.file_size} B" for name, info in infos.items()))
            text = _read_array(zf, infos, "header", None, (), source)
            try:
                header = json.loads(str(text[()]))
            except (ValueError, RecursionError) as e:
                raise StoreError(f"{source} is corrupt (version-1 store): its header does not parse ({str(e)[:200]}).") from e
            if not isinstance(header, dict):
                raise StoreError(f"{source} is corrupt (version-1 store): its header is not a JSON object. "
                                 f"Received: {type(header).__name__}")
            if header.get("format_version") != 1:
                raise StoreError(f"{source}: unsupported store version. Received: {_show(header.get('format_version'))}")
            for key in ("model_sha256", "labels", "counts"):
                if key not in header:
                    raise StoreError(f"{source} is corrupt (version-1 store): its header lacks {key!r}. "
                                     f"Received keys: {sorted(map(str, header))[:20]}")
            model_sha = _check_sha(header["model_sha256"], source)
            labels = _check_labels(header["labels"], source)
            counts = header["counts"]
            if (not isinstance(counts, list) or len(counts) != len(labels)
                    or not all(_is_int(c) and c >= 1 for c in counts)):
                raise StoreError(f"{source} is corrupt (version-1 store): its header's 'counts' must be {len(labels)} "
                                 f"integers >= 1, one per label. Received: {_show(counts)}")
            sums = _read_array(zf, infos, "sums", np.dtype(np.float64), (len(labels), None), source)
        bad = _first_nonfinite(sums)
        if bad is not None:
            raise StoreError(f"{source} is corrupt (version-1 store): 'sums' must be finite. Received: a NaN or "
                             f"infinity in row {bad} (label {labels[bad]!r})")
        n = len(labels)
        store = cls(sums.shape[1], model_sha)
        store._means = (sums / np.asarray(counts, np.float64)[:, None]).astype(np.float32)
        store._scales, store._counts = np.zeros(n, np.float32), np.asarray(counts, np.int64)
        store._last_used = np.arange(1, n + 1, dtype=np.int64)  # the order version 1's loader touched them in
        store._enrolled_at, store._used_at = np.full(n, np.nan), np.full(n, np.nan)  # not known
        store._support, store._clock = [[] for _ in labels], n
        store._set_labels(labels)
        return store

    # -- internals -----------------------------------------------------------------------------
    def _write_file(self, target: Path) -> None:
        with atomic_writer(target) as f:
            self.write_to(f)

    def _header_parts(self, payload_bytes: int) -> tuple[bytes, bytes]:
        """The header's JSON before and after the labels' items (`..."labels": [` and `], "clock": ...}`)."""
        header = {"format": "edgemeta.store", "format_version": FORMAT_VERSION, "model_sha256": self.model_sha256,
                  "embedding_size": self.embedding_size, "prototype_dtype": self.prototype_dtype,
                  "keep_support": self.keep_support, "labels": [], "clock": self._clock, "payload_bytes": payload_bytes}
        text = json.dumps(header)  # the only unescaped '"labels": [' in it: quotes inside strings are escaped
        cut = text.index('"labels": [') + len('"labels": [')
        return text[:cut].encode("ascii"), text[cut:].encode("ascii")

    def _members(self) -> list[tuple[str, np.dtype, tuple[int, ...], Callable[[], Iterable[memoryview]]]]:
        """The payload's arrays as (name, dtype, shape, their bytes in order), read from the store's memory."""
        n, d = len(self._labels), self.embedding_size
        thumbnails = [self._thumbnails.get(label, b"") for label in self._labels]
        sizes = np.fromiter(map(len, thumbnails), np.int64, count=n)
        members = [("means", self._means.dtype, (n, d), _whole(self._means[:n])),
                   ("scales", self._scales.dtype, (n,), _whole(self._scales[:n])),
                   ("counts", self._counts.dtype, (n,), _whole(self._counts[:n])),
                   ("last_used", self._last_used.dtype, (n,), _whole(self._last_used[:n])),
                   ("enrolled_at", self._enrolled_at.dtype, (n,), _whole(self._enrolled_at[:n])),
                   ("used_at", self._used_at.dtype, (n,), _whole(self._used_at[:n])),
                   ("thumbnail_sizes", sizes.dtype, (n,), _whole(sizes)),
                   ("thumbnail_data", np.dtype(np.uint8), (int(sizes.sum()),),
                    lambda: (memoryview(data) for data in thumbnails if data))]
        if self.keep_support is not None:
            rows = np.fromiter(map(len, self._support), np.int64, count=n)
            shapes = np.zeros((int(rows.sum()), 3), np.int64)  # each shot's shape, zero-padded to 3 axes
            j, total = 0, 0
            for shots in self._support:
                for shot in shots:
                    shape = np.shape(shot)
                    shapes[j, : len(shape)] = shape
                    j, total = j + 1, total + int(np.prod(shape))
            dtype = SUPPORT_DTYPES[self.keep_support]
            members += [("support_rows", rows.dtype, (n,), _whole(rows)),
                        ("support_shapes", shapes.dtype, shapes.shape, _whole(shapes)),
                        ("support_data", dtype, (total,), lambda: _shot_chunks(self._support, dtype))]
        return members

    def _set_labels(self, labels: list[str]) -> None:
        self._labels = labels
        self._index = {label: i for i, label in enumerate(labels)}
        self._label_nbytes = sum(map(self.label_bytes, labels))
        self._label_json = sum(map(_json_length, labels))

    def _arrays(self) -> tuple[np.ndarray, ...]:
        """The per-row arrays, all of `capacity` rows."""
        return self._means, self._scales, self._counts, self._last_used, self._enrolled_at, self._used_at

    def _put_thumbnail(self, label: str, data: bytes | None) -> None:
        old = self._thumbnails.pop(label, None)
        if old is not None:
            self._thumbnail_nbytes -= _thumbnail_bytes(old)
        if data is not None:
            self._thumbnails[label] = data
            self._thumbnail_nbytes += _thumbnail_bytes(data)

    def _append_row(self, label: str) -> int:
        i = len(self._labels)
        if i == len(self._means):  # grow by a quarter: amortised O(1) appends, little spare memory
            grow = max(16, i // 4)
            (self._means, self._scales, self._counts, self._last_used, self._enrolled_at,
             self._used_at) = (np.concatenate([a, np.zeros((grow, *a.shape[1:]), a.dtype)]) for a in self._arrays())
        self._labels.append(label)
        self._index[label] = i
        self._support.append([])
        self._counts[i] = self._last_used[i] = 0
        self._enrolled_at[i] = self._used_at[i] = np.nan
        self._label_nbytes += self.label_bytes(label)
        self._label_json += _json_length(label)
        return i

    def _row(self, label: str) -> int:
        if label not in self._index:
            known = sorted(self._labels)
            shown = known if len(known) <= 20 else [*known[:20], f"... {len(known) - 20} more"]
            raise KeyError(f"Unknown label {label!r}. Received: {label!r}; enrolled labels: {shown}")
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


def check_label(label: Any) -> str:
    """`label` if it can name a class: a non-empty str of at most MAX_LABEL_CHARS characters, else ValueError."""
    if not isinstance(label, str) or not label:
        raise ValueError(f"A label must be a non-empty string. Received: {_show(label)}")
    if len(label) > MAX_LABEL_CHARS:
        raise ValueError(f"A label is at most {MAX_LABEL_CHARS} characters (a name, not data). "
                         f"Received: {len(label)} characters starting {label[:40]!r}")
    return label


def check_thumbnail(data: Any) -> bytes:
    """`data` if it can be a class's thumbnail: JPEG bytes (they start with the SOI marker and end with EOI) of at
    most THUMBNAIL_MAX_BYTES, else ValueError. (Made by `edgemeta.format.images.thumbnail_jpeg`.)"""
    if not isinstance(data, bytes):
        raise ValueError(f"A thumbnail is JPEG bytes. Received: {_show(data)}")
    if not 0 < len(data) <= THUMBNAIL_MAX_BYTES:
        raise ValueError(f"A thumbnail is 1 to {THUMBNAIL_MAX_BYTES} bytes. Received: {len(data)} bytes")
    if not _is_jpeg(data):
        raise ValueError(f"A thumbnail is a JPEG file (from FF D8 FF to FF D9). Received: bytes starting "
                         f"{data[:8]!r} and ending {data[-2:]!r}")
    return data


# -- writing ---------------------------------------------------------------------------------------
class _Stream:
    """A write-only, unseekable stream into `out` (None: count only) that feeds `digest` what passes.
    Unseekable, zipfile writes each member's sizes after its data instead of seeking back to patch
    them, so the file is written, and hashed, front to back."""

    def __init__(self, out: BinaryIO | None, digest: Any = None) -> None:
        self.out, self.digest, self.position = out, digest, 0

    def write(self, data: Any) -> int:
        if self.out is not None:
            self.out.write(data)
        if self.digest is not None:
            self.digest.update(data)
        size = memoryview(data).nbytes
        self.position += size
        return size

    def tell(self) -> int:
        return self.position

    def flush(self) -> None:
        pass


def _write_npz(stream: _Stream, members: list) -> int:
    """Writes `members` as an uncompressed `.npz` (what np.savez writes, readable by np.load) into `stream`;
    returns its length."""
    import zipfile

    with zipfile.ZipFile(stream, "w", zipfile.ZIP_STORED) as zf:  # type: ignore[arg-type]
        for name, dtype, shape, chunks in members:
            # A fixed time: the same store gives the same bytes, and a board whose clock says 1970 can save.
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array_header_1_0(
                    f, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
                        "shape": tuple(int(s) for s in shape)})
                for chunk in chunks():
                    f.write(chunk)
    return stream.position


def _whole(array: np.ndarray) -> Callable[[], list[memoryview]]:
    return lambda: [_bytes_of(array)]


def _bytes_of(array: np.ndarray) -> memoryview:
    """The bytes of a C-contiguous array, without a copy."""
    return memoryview(array.reshape(-1).view(np.uint8))


def _shot_chunks(support: list[list[Any]], dtype: np.dtype) -> Iterator[memoryview]:
    """The kept shots' values, in order, as `dtype`: each shot's own memory, or (another dtype, not
    contiguous) converted one first-axis slice at a time, never a whole copy."""
    for shots in support:
        for shot in shots:
            array = np.asarray(shot)
            if array.dtype == dtype and array.flags.c_contiguous:
                yield _bytes_of(array)
            else:
                for part in array.reshape(1, -1) if array.ndim < 2 else array:
                    yield _bytes_of(np.ascontiguousarray(part, dtype))


# -- reading ---------------------------------------------------------------------------------------
class _Window(io.RawIOBase):
    """`length` bytes of `f` from `start`, as a seekable read-only file: the zip reader's view of the payload."""

    def __init__(self, f: BinaryIO, start: int, length: int) -> None:
        super().__init__()
        self._f, self._start, self._length, self._position = f, start, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = 0) -> int:
        position = (0, self._position, self._length)[whence] + offset
        if position < 0:
            raise OSError(f"seek to {position} before the payload's start")
        self._position = position
        return position

    def readinto(self, buffer: Any) -> int:
        size = max(0, min(len(buffer), self._length - self._position))
        if not size:
            return 0
        self._f.seek(self._start + self._position)
        got = self._f.readinto(memoryview(buffer)[:size]) or 0
        self._position += got
        return got


def _verify_checksum(f: BinaryIO, size: int, source: str) -> None:
    """Compares the file's last 32 bytes with the sha256 of the rest, read in CHUNK_BYTES pieces."""
    digest, remaining = sha256(), size - 32
    view = memoryview(bytearray(min(CHUNK_BYTES, max(remaining, 1))))
    f.seek(0)
    while remaining > 0:
        got = f.readinto(view[: min(len(view), remaining)])
        if not got:
            break
        digest.update(view[:got])
        remaining -= got
    if remaining or f.read(32) != digest.digest():
        raise StoreError(f"{source} is corrupt: its contents do not match its checksum "
                         f"(Received {size} bytes; truncated or damaged).")


class _open_npz:
    """`with _open_npz(file, names, source, stored_only) as (zip, {name: info})`: the payload's zip, its
    members checked to be exactly `names` (`.npy` each), and with `stored_only` uncompressed, before any is
    read. Any zip or npy failure inside the block is a StoreError."""

    def __init__(self, file: _Window, names: list[str], source: str, stored_only: bool) -> None:
        self.file, self.names, self.source, self.stored_only = file, names, source, stored_only
        self.zip: zipfile.ZipFile | None = None

    def __enter__(self) -> tuple[zipfile.ZipFile, dict[str, zipfile.ZipInfo]]:
        import zipfile

        try:
            # The end record first: its entry count and directory size bound what zipfile will parse.
            self.file.seek(-22, 2)
            end = self.file.read(22)
            if end[:4] != b"PK\x05\x06":
                raise StoreError(f"{self.source} is corrupt: its arrays are not an .npz archive. Received: no zip end "
                                 "record at the end of the payload")
            entries, directory = struct.unpack("<HI", end[10:16])
            if entries != len(self.names) or directory > 1024 * len(self.names):
                raise StoreError(f"{self.source} is corrupt: its arrays must be {len(self.names)} members "
                                 f"{self.names}. Received: {entries} members in a {directory}-byte directory")
            self.zip = zipfile.ZipFile(self.file)
            infos = {info.filename.removesuffix(".npy"): info for info in self.zip.infolist()}
        except StoreError:
            raise
        except Exception as e:  # a damaged zip fails in many ways inside zipfile
            raise StoreError(f"{self.source} is corrupt: its arrays do not read ({type(e).__name__}: {e})") from e
        if sorted(infos) != sorted(self.names) or len(infos) != len(self.zip.infolist()):
            raise StoreError(f"{self.source} is corrupt: its arrays must be {self.names}. "
                             f"Received: {[i.filename for i in self.zip.infolist()]}")
        for name, info in infos.items():
            if self.stored_only and (info.compress_type != zipfile.ZIP_STORED or info.file_size != info.compress_size):
                raise StoreError(f"{self.source} is corrupt: array {name!r} is compressed (edgemeta stores them "
                                 f"uncompressed). Received: compression {info.compress_type}, {info.compress_size} B "
                                 f"for {info.file_size} B")
        return self.zip, infos

    def __exit__(self, kind: Any, error: BaseException | None, traceback: Any) -> bool:
        if self.zip is not None:
            self.zip.close()
        if error is not None and isinstance(error, Exception) and not isinstance(error, StoreError):
            raise StoreError(f"{self.source} is corrupt: its arrays do not read ({type(error).__name__}: "
                             f"{str(error)[:200]})") from error
        return False


def _read_array(zf: zipfile.ZipFile, infos: dict[str, zipfile.ZipInfo], name: str, dtype: np.dtype | None,
                shape: tuple[int | None, ...], source: str) -> np.ndarray:
    """Member `name` as an array, after its npy header was checked against `dtype` (None: any str dtype,
    version 1's header) and `shape` (None: any size up to MAX_EMBEDDING_SIZE) and its data size against
    the member's: no allocation before that, nothing unpickled (only plain dtypes pass), read in chunks."""
    info = infos[name]
    with zf.open(info) as member:
        got_shape, fortran, got_dtype = _member_header(member, info, name, dtype, shape, source)
        array = np.empty(got_shape, got_dtype, order="F" if fortran else "C")
        view = memoryview((array.T if fortran else array).reshape(-1).view(np.uint8))
        position = 0
        while position < len(view):
            chunk = member.read(min(CHUNK_BYTES, len(view) - position))
            if not chunk:
                raise StoreError(f"{source} is corrupt: array {name!r} is truncated. Received: {position} of {len(view)} bytes")
            view[position : position + len(chunk)] = chunk
            position += len(chunk)
        if member.read(1):  # also lets zipfile check the member's CRC
            raise StoreError(f"{source} is corrupt: array {name!r} has bytes beyond its shape {got_shape}.")
    return np.ascontiguousarray(array) if fortran else array  # (ascontiguousarray makes a 0-d array 1-d)


def _member_header(member: BinaryIO, info: zipfile.ZipInfo, name: str, dtype: np.dtype | None,
                   shape: tuple[int | None, ...], source: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran order, dtype) of member `name`'s npy header, checked against `dtype` and `shape` (as
    `_read_array` takes them) and its data's size against the member's, before anything is allocated."""
    version = np.lib.format.read_magic(member)
    read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}.get(version)
    if read is None:
        raise StoreError(f"{source} is corrupt: array {name!r} is npy version {version}. Received: expected 1.0 or 2.0")
    got_shape, fortran, got_dtype = read(member)
    want_dtype = got_dtype if dtype is None and got_dtype.kind == "U" else dtype
    shape_ok = len(got_shape) == len(shape) and all(
        (1 <= g <= MAX_EMBEDDING_SIZE) if w is None else g == w for g, w in zip(got_shape, shape))
    if got_dtype != want_dtype or not shape_ok:
        expected = "a str" if dtype is None else str(dtype)
        wanted = ", ".join("D" if s is None else str(s) for s in shape) + ("," if len(shape) == 1 else "")
        raise StoreError(f"{source} is corrupt: array {name!r} must be {expected} of shape ({wanted}) (from the "
                         f"header's labels). Received: {got_dtype} of shape {got_shape}")
    needed = int(np.prod(got_shape, dtype=np.float64)) * got_dtype.itemsize
    if needed > info.file_size:
        raise StoreError(f"{source} is corrupt: array {name!r} needs {needed} bytes. "
                         f"Received: a {info.file_size}-byte member")
    return got_shape, fortran, got_dtype


def _read_times(zf: zipfile.ZipFile, infos: dict, name: str, labels: list[str], source: str) -> np.ndarray:
    """A wall-clock column (`enrolled_at`, `used_at`): float64 per class, NaN (unknown) or Unix seconds."""
    times = _read_array(zf, infos, name, np.dtype(np.float64), (len(labels),), source)
    ok = np.isnan(times) | ((times >= 0) & (times <= MAX_TIMESTAMP))
    if not ok.all():
        i = int(np.argmin(ok))
        raise StoreError(f"{source} is corrupt: {name!r} must be Unix seconds from 0 to {MAX_TIMESTAMP:.0e} or NaN "
                         f"(unknown). Received: {times[i]} for label {labels[i]!r}")
    return times


def _read_thumbnails(zf: zipfile.ZipFile, infos: dict, labels: list[str], source: str) -> dict[str, bytes]:
    """The thumbnails by label: their sizes first (each at most THUMBNAIL_MAX_BYTES, 0 for none, adding up to
    the data member's shape), then each one's bytes read straight from the member and checked to be a JPEG."""
    sizes = _read_array(zf, infos, "thumbnail_sizes", np.dtype(np.int64), (len(labels),), source)
    ok = (sizes >= 0) & (sizes <= THUMBNAIL_MAX_BYTES)
    if not ok.all():
        i = int(np.argmin(ok))
        raise StoreError(f"{source} is corrupt: 'thumbnail_sizes' must be from 0 to {THUMBNAIL_MAX_BYTES} bytes. "
                         f"Received: {sizes[i]} for label {labels[i]!r}")
    total, info, thumbnails = int(sizes.sum()), infos["thumbnail_data"], {}
    with zf.open(info) as member:
        got_shape, _, _ = _member_header(member, info, "thumbnail_data", np.dtype(np.uint8), (total,), source)
        for label, size in zip(labels, sizes.tolist()):
            if not size:
                continue
            data = member.read(size)
            if len(data) != size:
                raise StoreError(f"{source} is corrupt: array 'thumbnail_data' is truncated. Received: {len(data)} of "
                                 f"{size} bytes for label {label!r}")
            if not _is_jpeg(data):
                raise StoreError(f"{source} is corrupt: the thumbnail of label {label!r} is not a JPEG. Received: "
                                 f"{size} bytes starting {data[:8]!r}")
            thumbnails[label] = data
        if member.read(1):  # also lets zipfile check the member's CRC
            raise StoreError(f"{source} is corrupt: array 'thumbnail_data' has bytes beyond its shape {got_shape}.")
    return thumbnails


def _read_support(zf: zipfile.ZipFile, infos: dict, keep: str, n: int, embedding_size: int, size: int,
                  source: str) -> list[list[np.ndarray]]:
    """The kept shots, each a view of the one data array, after rows, shapes and data were checked to agree."""
    rows = _read_array(zf, infos, "support_rows", np.dtype(np.int64), (n,), source)
    if n and rows.min() < 0:
        raise StoreError(f"{source} is corrupt: 'support_rows' must be >= 0. Received: {int(rows.min())}")
    shots = int(rows.sum(dtype=np.float64)) if n else 0
    if shots > size:  # each shot takes bytes of the file
        raise StoreError(f"{source} is corrupt: 'support_rows' counts {shots} shots in a {size}-byte file.")
    shapes = _read_array(zf, infos, "support_shapes", np.dtype(np.int64), (shots, 3), source)
    positive = shapes > 0
    if keep == "embeddings":
        valid = (shapes[:, 0] == embedding_size) & (shapes[:, 1] == 0) & (shapes[:, 2] == 0)
        what = f"[{embedding_size}, 0, 0] (an embedding)"
    else:  # an image: (H, W) or (H, W, C)
        valid = positive[:, 0] & positive[:, 1] & (shapes[:, 2] >= 0)
        what = "[H, W, 0] or [H, W, C] (an image)"
    if not valid.all():
        j = int(np.argmin(valid))
        raise StoreError(f"{source} is corrupt: 'support_shapes' row {j} must be {what}. Received: {shapes[j].tolist()}")
    sizes = np.where(positive, shapes, 1).astype(np.float64).prod(1)
    if sizes.sum() > size:
        raise StoreError(f"{source} is corrupt: 'support_shapes' add up to {sizes.sum():.0f} values in a {size}-byte file.")
    data = _read_array(zf, infos, "support_data", SUPPORT_DTYPES[keep], (int(sizes.sum()),), source)
    if keep == "embeddings" and _first_nonfinite(data) is not None:
        raise StoreError(f"{source} is corrupt: 'support_data' (kept embeddings) must be finite. Received: a NaN or infinity")
    return _unflatten_support(rows, shapes, data)


def _check_header(header: dict[str, Any], source: str) -> tuple[int, str, str, str | None, list[str], int]:
    """(embedding_size, model_sha256, prototype_dtype, keep_support, labels, clock) of a version-2 or 3 header,
    each checked; StoreError naming the first field that is missing or wrong."""
    missing = [key for key in HEADER_KEYS if key not in header]
    if missing:
        raise StoreError(f"{source} is corrupt: its header lacks {missing}. Received keys: {sorted(map(str, header))[:20]}")
    if header["format"] != "edgemeta.store":
        raise _field_error(source, "format", "'edgemeta.store'", header["format"])
    sha = _check_sha(header["model_sha256"], source)
    size = header["embedding_size"]
    if not _is_int(size) or not 1 <= size <= MAX_EMBEDDING_SIZE:
        raise _field_error(source, "embedding_size", f"an integer from 1 to {MAX_EMBEDDING_SIZE}", size)
    dtype, keep = header["prototype_dtype"], header["keep_support"]
    if not isinstance(dtype, str) or dtype not in PROTOTYPE_DTYPES:
        raise _field_error(source, "prototype_dtype", f"one of {PROTOTYPE_DTYPES}", dtype)
    if not (keep is None or isinstance(keep, str)) or keep not in KEEP_SUPPORT:
        raise _field_error(source, "keep_support", f"one of {KEEP_SUPPORT}", keep)
    labels = _check_labels(header["labels"], source)
    clock = header["clock"]
    if not _is_int(clock) or clock < 0:
        raise _field_error(source, "clock", "an integer >= 0", clock)
    if not _is_int(header["payload_bytes"]):
        raise _field_error(source, "payload_bytes", "an integer", header["payload_bytes"])
    return size, sha, dtype, keep, labels, clock


def _check_sha(value: Any, source: str) -> str:
    if not isinstance(value, str) or not _SHA256_HEX.fullmatch(value):
        raise _field_error(source, "model_sha256", "the model's sha256 as 64 lowercase hex digits", value)
    return value


def _check_labels(labels: Any, source: str) -> list[str]:
    if not isinstance(labels, list):
        raise _field_error(source, "labels", "a list of strings", labels)
    for i, label in enumerate(labels):
        try:
            check_label(label)
        except ValueError as e:
            raise StoreError(f"{source} is corrupt: its header's 'labels' item {i}: {e}") from None
    if len(set(labels)) != len(labels):
        seen: set[str] = set()
        twice = next(label for label in labels if label in seen or seen.add(label))
        raise StoreError(f"{source} is corrupt: its header's 'labels' must be unique. Received: {twice!r} twice or more")
    return labels


def _check_values(means: np.ndarray, scales: np.ndarray, counts: np.ndarray, last_used: np.ndarray,
                  labels: list[str], dtype: str, source: str) -> None:
    """The rows' values: finite means and scales (positive for int8), counts >= 1, last uses >= 0."""
    checks = [("counts", counts, counts >= 1, "integers >= 1 (a class has a shot)"),
              ("last_used", last_used, last_used >= 0, "integers >= 0")]
    if dtype == "int8":
        checks.append(("scales", scales, np.isfinite(scales) & (scales > 0), "finite and > 0 (int8 rows' scales)"))
    else:
        checks.append(("scales", scales, np.isfinite(scales), "finite"))
    for name, values, ok, what in checks:
        if not ok.all():
            i = int(np.argmin(ok))
            raise StoreError(f"{source} is corrupt: {name!r} must be {what}. Received: {values[i]} for label {labels[i]!r}")
    bad = _first_nonfinite(means) if dtype == "float32" else None
    if bad is not None:
        raise StoreError(f"{source} is corrupt: 'means' must be finite. Received: a NaN or infinity in the "
                         f"prototype of label {labels[bad]!r}")


def _first_nonfinite(array: np.ndarray) -> int | None:
    """The first row of `array` holding a NaN or an infinity (None: all finite), checked a chunk at a time."""
    if not len(array):
        return None
    step = max(1, CHUNK_BYTES // max(1, array[0].nbytes))
    for start in range(0, len(array), step):
        block = np.isfinite(array[start : start + step]).reshape(min(step, len(array) - start), -1).all(1)
        if not block.all():
            return start + int(np.argmin(block))
    return None


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


def _field_error(source: str, field: str, expected: str, value: Any) -> StoreError:
    return StoreError(f"{source} is corrupt: its header's {field!r} must be {expected}. Received: {_show(value)}")


def _show(value: Any) -> str:
    """`value` for a message: its type and a short repr."""
    text = repr(value)
    return f"{type(value).__name__} {text[:80] + '…' if len(text) > 80 else text}"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _json_length(label: str) -> int:
    return len(json.dumps(label))


def _shot_bytes(shot: Any) -> int:
    return np.asarray(shot).nbytes + SHOT_OBJECT_BYTES


def _thumbnail_bytes(data: bytes) -> int:
    return sys.getsizeof(data) + THUMBNAIL_ENTRY_BYTES


def _is_jpeg(data: bytes) -> bool:
    return data[:3] == b"\xff\xd8\xff" and data[-2:] == b"\xff\xd9"


def _seconds(value: float) -> float | None:
    """A saved wall-clock time as ClassInfo shows it: None for NaN (unknown)."""
    return None if np.isnan(value) else float(value)

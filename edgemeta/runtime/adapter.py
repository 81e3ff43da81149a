"""On-device few-shot learning: enroll classes from a few images, classify by nearest prototype, say
"unknown" beyond a calibrated distance, within a memory budget, safely from many threads."""

from __future__ import annotations

import os
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgemeta.presets import preset_path
from edgemeta.format.units import parse_bytes
from edgemeta.runtime.embedder import Embedder
from edgemeta.runtime.prototypes import for_metric, squared_norms
from edgemeta.runtime.store import (CLASS_BLOCK, CLASSIFY_CACHE_BYTES, LABEL_BYTES, RESIDENT_CLASSES, ROW_OBJECT_BYTES,
                                    PrototypeStore, StoreError)

ON_FULL = ("error", "evict")


class MemoryBudgetError(MemoryError):
    """Enrolling would exceed the adapter's memory budget; nothing was changed."""


@dataclass(frozen=True)
class Prediction:
    """The answer for one image.

    `label` is the nearest enrolled class, or None when the image is farther from every prototype
    than the open-set threshold ("I don't know"); `nearest` is the nearest class either way.
    `distance` is the squared Euclidean distance to that class's prototype (for a `cosine` bundle,
    between unit-length vectors: 2 - 2 cos), and `score` the softmax over negative distances (a
    probability among the enrolled classes)."""

    label: str | None
    distance: float
    score: float
    nearest: str = ""

    @property
    def unknown(self) -> bool:
        return self.label is None


class FewShotAdapter:
    """Learns new classes on the board. A class is its prototype: the running mean of its shots' embeddings.

    Example:
        >>> adapter = FewShotAdapter.from_preset("omniglot")
        >>> adapter.enroll("circle", np.pad(np.zeros((20, 20), np.uint8), 40, constant_values=255))
        1
        >>> adapter.labels
        ['circle']
        >>> adapter.classify(np.zeros((105, 105), np.uint8))[0].nearest
        'circle'

    Args:
        embedder: the bundle's model and preprocessing.
        state: a store file. What was taught is loaded from it if it exists and written back atomically
            after every `enroll`/`forget`, so a power cut or a kill never loses or corrupts it.
        memory_budget: bytes the whole process may hold (an int, or a string such as "48MB"). Enrolling
            past it raises `MemoryBudgetError` and changes nothing, or with `on_full="evict"` forgets the
            least recently used classes first.
        unknown_threshold: "calibrated" (the bundle's manifest threshold, when it has one), a distance,
            or None (always answer the nearest class).
        prototype_dtype: "float32", or "int8" for a quarter of the memory per class.
        keep_support: None, "embeddings" (for `fit_head`) or "images" (to re-enroll under a new model).
        max_batch: images per interpreter call; bounds the activation memory.
    """

    def __init__(self, embedder: Embedder, state: str | os.PathLike | None = None, *,
                 memory_budget: int | str | None = None, on_full: str = "error",
                 unknown_threshold: float | str | None = "calibrated", prototype_dtype: str = "float32",
                 keep_support: str | None = None, max_batch: int | None = None) -> None:
        if on_full not in ON_FULL:
            raise ValueError(f"on_full must be one of {ON_FULL}. Received: {on_full!r}")
        self.embedder = embedder
        self.metric = embedder.manifest.metric
        for_metric(np.zeros((1, 1)), self.metric)  # unknown metric: refuse the bundle now, not at classify
        if max_batch is not None:
            if not isinstance(max_batch, int) or max_batch < 1:
                raise ValueError(f"max_batch must be a positive integer. Received: {max_batch!r}")
            embedder.max_batch = max_batch
        self.on_full = on_full
        self._lock = threading.RLock()
        self._head = None
        self._cache: tuple | None = None  # see _prototype_cache
        self._float64: np.ndarray | None = None  # classify's float64 prototypes (_load_block)
        self._float32: np.ndarray | None = None  # a block of dequantized int8 prototypes
        self._resident = False
        self.state_path = Path(state) if state is not None else None
        sha = embedder.manifest.model_sha256
        if self.state_path is not None and self.state_path.exists():
            self._store = PrototypeStore.load(self.state_path, model_sha256=sha)
        else:
            self._store = PrototypeStore(embedder.embedding_size, sha, prototype_dtype, keep_support)
        self.unknown_threshold = self._threshold(unknown_threshold)
        self.memory_budget = parse_bytes(memory_budget, "memory_budget") if memory_budget is not None else None
        self._store_budget = None
        if self.memory_budget is not None:
            self._store_budget = self._bytes_for_classes(self.memory_budget)
            if self._class_bytes(self._store) > self._store_budget:
                raise MemoryBudgetError(
                    f"The loaded store needs {self._class_bytes(self._store) / 2**20:.2f} MB but the budget of "
                    f"{self.memory_budget / 2**20:.1f} MB leaves {max(self._store_budget, 0) / 2**20:.2f} MB for classes. "
                    "Raise memory_budget or forget classes in a process with a larger budget.")

    @classmethod
    def from_bundle(cls, path: str | os.PathLike, state: str | os.PathLike | None = None,
                    num_threads: int | None = None, delegate: str | None = None, verify: bool = True,
                    **options: Any) -> "FewShotAdapter":
        """The adapter of a bundle directory; `delegate="edgetpu"` runs the model on a Coral Edge TPU
        (CPU with a warning when its library is absent); `options` are the constructor's."""
        return cls(Embedder.from_bundle(path, num_threads, delegate=delegate, verify=verify), state, **options)

    @classmethod
    def from_preset(cls, name: str = "omniglot", state: str | os.PathLike | None = None,
                    num_threads: int | None = None, **options: Any) -> "FewShotAdapter":
        return cls.from_bundle(preset_path(name), state, num_threads, **options)

    @classmethod
    def for_device(cls, bundle: str | os.PathLike, device: str, state: str | os.PathLike | None = None,
                   **options: Any) -> "FewShotAdapter":
        """The adapter as a board profile (`edgemeta device list`) says: its threads, its delegate and
        its memory budget (each overridable through `options`)."""
        from edgemeta.profiles import load_profile

        profile = load_profile(device)
        options.setdefault("memory_budget", profile.budget_bytes)
        return cls.from_bundle(bundle, state, options.pop("num_threads", profile.threads),
                               options.pop("delegate", profile.delegate), **options)

    # -- reading -----------------------------------------------------------------------------------
    @property
    def labels(self) -> list[str]:
        with self._lock:
            return sorted(self._store.labels)

    @property
    def store(self) -> PrototypeStore:
        return self._store

    def shots(self, label: str) -> int:
        """How many images class `label` was enrolled with."""
        with self._lock:
            return self._store.count(label)

    def prototypes(self) -> tuple[list[str], np.ndarray]:
        """`(sorted labels, (n_classes, D) prototype matrix)`."""
        with self._lock:
            labels, means = self._store.prototypes()
            order = np.argsort(labels, kind="stable")
            return [labels[i] for i in order], np.asarray(means, np.float64)[order].reshape(-1, self.embedder.embedding_size)

    # -- learning ----------------------------------------------------------------------------------
    def enroll(self, label: str, images: Any) -> int:
        """Adds `images` as shots of `label` (a new class, or refining a known one's prototype).
        Returns the class's total number of shots. Bad input, a full budget or a failed save raise
        and change nothing."""
        if not isinstance(label, str) or not label.strip():
            raise ValueError(f"label must be a non-empty string. Received: {label!r}")
        raw = None
        if self._store.keep_support == "images":
            from edgemeta.format.preprocessing import as_image_list

            raw = [_raw_uint8(image) for image in as_image_list(images)]
            embeddings = self.embedder.embed(raw)
        else:
            embeddings = self.embedder.embed(images)
        embeddings = for_metric(embeddings.astype(np.float64), self.metric)
        with self._lock:
            before, capacity = {label: self._store.snapshot(label)}, self._store.capacity
            count = self._store.add(label, embeddings, raw)
            try:
                evicted = self._make_room(label, capacity)
                for victim in evicted:
                    before.setdefault(victim, self._store.snapshot(victim))
                    self._store.remove(victim)
                if evicted:
                    self._store.shrink_to(capacity)  # the evicted rows take back what the new class grew
                    if self._class_bytes(self._store) > self._store_budget:  # a safety net: _make_room's sum is exact
                        raise MemoryBudgetError(f"Evicting {evicted} left {self._class_bytes(self._store)} bytes "
                                                f"for classes, over {self._store_budget}. Nothing was changed.")
                self._persist()
            except BaseException:
                self._undo(before)
                self._store.shrink_to(capacity)  # the rows the refused class grew would leave it over budget
                raise
            self._head = None
            return count

    def forget(self, label: str) -> None:
        """Removes class `label`."""
        with self._lock:
            before = {label: self._store.snapshot(label)}
            self._store.remove(label)
            try:
                self._persist()
            except BaseException:
                self._undo(before)
                raise
            self._head = None

    def fit_head(self, steps: int = 50, **options: Any) -> dict:
        """Trains a softmax head, initialised from the prototypes, on the kept support embeddings
        (needs `keep_support="embeddings"`); `classify` then uses it. Returns the loss history."""
        from edgemeta.runtime.head import SoftmaxHead

        with self._lock:
            if self._store.keep_support != "embeddings":
                raise ValueError("fit_head trains on the stored shot embeddings: create the adapter with "
                                 f"keep_support='embeddings'. Received: keep_support={self._store.keep_support!r}")
            labels, protos = self._store.prototypes()
            if len(labels) < 2:
                raise RuntimeError(f"fit_head needs at least 2 enrolled classes. Received: {len(labels)}")
            x = np.stack([e for label in labels for e in self._store.support(label)])
            y = [label for label in labels for _ in self._store.support(label)]
            head = SoftmaxHead.from_prototypes(for_metric(np.asarray(protos, np.float64), self.metric), labels)
            history = head.fit(x, y, steps=steps, **options)
            self._head = head
            return history

    # -- predicting --------------------------------------------------------------------------------
    def classify(self, images: Any, unknown_threshold: float | None | str = "adapter") -> list[Prediction]:
        """One `Prediction` per image: the nearest enrolled class, or unknown (label None) when it is
        farther than the threshold (the adapter's, unless given here; None never rejects)."""
        queries = for_metric(self.embedder.embed(images), self.metric)
        threshold = self.unknown_threshold if unknown_threshold == "adapter" else unknown_threshold
        with self._lock:
            if not len(self._store):
                raise RuntimeError("No classes enrolled yet: call enroll(label, images) first.")
            labels, norms = self._prototype_cache()
            if unknown_threshold == "adapter" and self._open_set_table:
                threshold = self._threshold_for_classes(len(labels))
            d = self._distances(np.asarray(queries, np.float64), norms)
            rows = np.arange(len(d))
            if self._head is not None and list(self._head.labels) == labels:
                best, p = self._head.predict(queries)
                scores = p[rows, best]
            else:
                # The softmax over negative distances, read at the nearest class only (the same values
                # as the whole matrix's: one exp per distance, one sum per query).
                best = d.argmin(1)
                e = np.exp(d[rows, best][:, None] - d)
                scores = e[rows, best] / e.sum(1)
            self._store.touch_rows(set(best.tolist()))
        nearest = d[rows, best].tolist()
        return [Prediction(labels[j] if threshold is None or dist <= threshold else None, dist, score, labels[j])
                for j, dist, score in zip(best.tolist(), nearest, scores.tolist())]

    def _distances(self, x: np.ndarray, norms: np.ndarray) -> np.ndarray:
        """`(queries, classes)` squared distances: `squared_distances` of every block of classes, bit for
        bit, with the product per block and the rest of the formula once over all classes."""
        d = np.empty((len(x), len(norms)))
        twice = 2 * x
        for i in range(0, len(norms), CLASS_BLOCK):
            d[:, i : i + CLASS_BLOCK] = twice @ self._block64(i).T
        np.subtract(squared_norms(x)[:, None], d, out=d)
        d += norms
        return np.maximum(d, 0.0, out=d)

    def _prototype_cache(self) -> tuple[list[str], np.ndarray]:
        """The store's labels and its (metric-mapped) prototypes' squared norms, kept until the store
        changes, and with them, for up to RESIDENT_CLASSES classes, the prototypes as float64: classify
        then computes neither per call. Call with the lock held."""
        store = self._store
        cached = self._cache
        if cached is None or cached[0] is not store or cached[1] != store.version:
            self._cache = None
            n = len(store)
            self._resident = n <= RESIDENT_CLASSES
            rows = n if self._resident else CLASS_BLOCK
            if self._float64 is None or len(self._float64) < rows or self._float64.shape[1] != store.embedding_size:
                size = min(RESIDENT_CLASSES, max(16, 2 * rows))  # room to grow: not a new buffer per class
                self._float64 = np.empty((size, store.embedding_size), np.float64)
            norms = np.empty(n)
            for i in range(0, n, CLASS_BLOCK):
                block = self._load_block(i)
                norms[i : i + len(block)] = squared_norms(block)
            cached = self._cache = (store, store.version, store.labels, norms)
        return cached[2], cached[3]

    def _block64(self, start: int) -> np.ndarray:
        """Float64 prototypes `start:start + CLASS_BLOCK` (see `_prototype_cache`)."""
        if self._resident:
            return self._float64[start : min(start + CLASS_BLOCK, len(self._store))]
        return self._load_block(start)

    def _load_block(self, start: int) -> np.ndarray:
        """Copies prototypes `start:start + CLASS_BLOCK`, metric-mapped, into the float64 buffer: at
        their own rows while all classes fit in it, else at its start (one block at a time, per call).
        A buffer kept between calls, because a fresh array of a block's size (256 KB for 64-d
        embeddings) went to mmap and back on every call, page faults included."""
        store = self._store
        rows = min(len(store) - start, CLASS_BLOCK)
        scratch = None
        if store.prototype_dtype == "int8" and not self._resident:  # dequantized per call: a kept float32 buffer
            if self._float32 is None or self._float32.shape[1] != store.embedding_size:
                self._float32 = np.empty((CLASS_BLOCK, store.embedding_size), np.float32)
            scratch = self._float32
        block = store.prototype_block(start, start + CLASS_BLOCK, out=scratch)
        if self.metric != "squared_euclidean":
            block = for_metric(block, self.metric)
        out = self._float64[start : start + rows] if self._resident else self._float64[:rows]
        np.copyto(out, block)
        return out

    # -- persistence -------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Writes what was taught to `path` atomically (temporary file, fsync, rename, fsync directory)."""
        with self._lock:
            self._store.save(path)

    def load(self, path: str | os.PathLike) -> None:
        """Replaces the enrolled classes with those saved at `path`; a corrupt file, another model's
        store, or one over the budget is refused and changes nothing."""
        store = PrototypeStore.load(path, model_sha256=self.embedder.manifest.model_sha256)
        with self._lock:
            if self._store_budget is not None and self._class_bytes(store) > self._store_budget:
                raise MemoryBudgetError(f"{path} needs {self._class_bytes(store) / 2**20:.2f} MB for its classes; the budget "
                                        f"leaves {self._store_budget / 2**20:.2f} MB.")
            self._store, self._head = store, None

    # -- internals ---------------------------------------------------------------------------------
    def _threshold(self, value: float | str | None) -> float | None:
        self._open_set_table = False
        if value is None:
            return None
        if value == "calibrated":
            open_set = getattr(self.embedder.manifest, "open_set", None) or {}
            # With the calibration's per-class table the threshold follows the number of classes and
            # their shots (more classes: more chances for a stranger to land near one).
            self._open_set_table = bool(open_set.get("impostor_quantiles"))
            self._threshold_cache: dict[tuple[int, int], float] = {}
            return float(open_set["threshold"]) if "threshold" in open_set else None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value) and value >= 0:
            return float(value)
        raise ValueError(f"unknown_threshold must be 'calibrated', a distance >= 0 or None. Received: {value!r}")

    def _threshold_for_classes(self, n_classes: int) -> float:
        from edgemeta.runtime.threshold import threshold_for

        key = (n_classes, min(self._store.median_count(), 10))  # the typical class's shots
        if key not in self._threshold_cache:
            self._threshold_cache[key] = threshold_for(self.embedder.manifest.open_set, n_classes, k_shot=key[1])
        return self._threshold_cache[key]

    @staticmethod
    def _class_bytes(store: PrototypeStore) -> int:
        """What the classes hold: the store, and what classify keeps per class between calls."""
        return store.nbytes() + CLASSIFY_CACHE_BYTES * len(store)

    def _bytes_for_classes(self, budget: int) -> int:
        """The part of `budget` left for the classes: the budget minus what this process already holds,
        the activations and transients of one full batch, and classify's float64 prototype buffers."""
        from edgemeta.runtime.memory import current_rss_bytes, tensor_arena_bytes

        batch = self.embedder.max_batch
        arena = tensor_arena_bytes(self.embedder._interpreter, batch)
        working = batch * (105 * 105 * 9 + int(np.prod(self.embedder.preprocessing.input_shape)) * 5)
        size = self.embedder.embedding_size
        buffers = 8 * size * RESIDENT_CLASSES + (4 * size * CLASS_BLOCK if self._store.prototype_dtype == "int8" else 0)
        return budget - current_rss_bytes() - arena - working - buffers + self._class_bytes(self._store)

    def _make_room(self, enrolled: str, capacity: int) -> list[str]:
        """Classes to evict so the store fits its budget (raises when it cannot or may not). `capacity`:
        the store's rows before `enrolled` was added; evicting gives back the rows it grew, no others."""
        if self._store_budget is None or self._class_bytes(self._store) <= self._store_budget:
            return []
        if self.on_full == "error":
            raise MemoryBudgetError(
                f"Enrolling {enrolled!r} would need {self._class_bytes(self._store) / 2**20:.2f} MB for {len(self._store)} classes; "
                f"the memory budget of {self.memory_budget / 2**20:.1f} MB leaves {self._store_budget / 2**20:.2f} MB "
                "for classes. Nothing was changed. Forget classes, raise memory_budget, use "
                "prototype_dtype='int8', or pass on_full='evict' to forget the least recently used class.")
        victims, freed = [], 0
        order = self._store.by_last_use()
        per_class = LABEL_BYTES + ROW_OBJECT_BYTES + CLASSIFY_CACHE_BYTES  # its array row stays, as a spare
        grown = (self._store.capacity - capacity) * self._store.row_bytes  # freed by shrink_to(capacity)
        for label in order:
            if self._class_bytes(self._store) - freed <= self._store_budget:
                break
            if label != enrolled:
                victims.append(label)
                freed += (grown if len(victims) == 1 else 0) + per_class + self._store.support_bytes(label)
        if self._class_bytes(self._store) - freed > self._store_budget:
            raise MemoryBudgetError(f"{enrolled!r} alone does not fit the memory budget. Nothing was changed.")
        if victims:
            warnings.warn(f"Memory budget: evicted the least recently used class(es) {victims}.", RuntimeWarning,
                          stacklevel=3)
        return victims

    def _persist(self) -> None:
        if self.state_path is not None:
            self._store.save(self.state_path)

    def _undo(self, before: dict) -> None:
        for label, row in before.items():
            self._store.restore(label, row)


def _raw_uint8(image: Any) -> np.ndarray:
    """An image as the uint8 pixels a new model's preprocessing can start from again."""
    from edgemeta.format.preprocessing import _load, _to_unit_float

    array = _load(image)
    return array if array.dtype == np.uint8 else np.round(_to_unit_float(array) * 255).astype(np.uint8)


__all__ = ["FewShotAdapter", "MemoryBudgetError", "Prediction", "StoreError", "parse_bytes"]

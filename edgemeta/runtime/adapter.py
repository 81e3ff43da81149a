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

from edgemeta.format.units import parse_bytes
from edgemeta.presets import preset_path
from edgemeta.runtime.budget import MemoryBudget, MemoryBudgetError
from edgemeta.runtime.embedder import Embedder
from edgemeta.runtime.index import PrototypeIndex
from edgemeta.runtime.lock import StoreLock, resolve_store_path
from edgemeta.runtime.prototypes import for_metric
from edgemeta.runtime.store import THUMBNAIL_MAX_BYTES, THUMBNAIL_SIDE, ClassInfo, PrototypeStore, StoreError, StoreReadOnlyError
from edgemeta.runtime.threshold import UnknownThreshold, check_threshold, enrolled_probability

ON_FULL = ("error", "evict")


@dataclass(frozen=True)
class Prediction:
    """The answer for one image.

    `label` is the nearest enrolled class, or None when the image is farther from every prototype
    than the open-set threshold ("I don't know"); `nearest` is the nearest class either way.
    `distance` is the squared Euclidean distance to that class's prototype (for a `cosine` bundle,
    between unit-length vectors: 2 - 2 cos).

    `probability` is the calibrated probability that the image shows one of the enrolled classes at all
    (None when the bundle's calibration has no model for it; `edgemeta.runtime.threshold.enrolled_probability`),
    read with enrolled and never-enrolled images taken as equally likely. `score` (also `softmax`) is the
    softmax over negative distances: how the nearest class compares with the other enrolled classes, which is
    high for a stranger that is merely nearer one class than the rest."""

    label: str | None
    distance: float
    score: float
    nearest: str = ""
    probability: float | None = None

    @property
    def unknown(self) -> bool:
        return self.label is None

    @property
    def softmax(self) -> float:
        """The softmax over negative distances at the nearest class (a probability among the enrolled classes)."""
        return self.score


class FewShotAdapter:
    """Learns new classes on the board. A class is its prototype: the running mean of its shots' embeddings.

    `enroll` embeds the shots and adds them to the class's running mean in the `PrototypeStore`;
    `classify` embeds the queries and answers each with the nearest prototype (`PrototypeIndex`), or
    "unknown" beyond the open-set threshold (`UnknownThreshold`). `enroll`, `forget`, `rename` and
    `set_thumbnail` are transactions: a full memory budget (`MemoryBudget`) or a failed save undoes them.
    `classes()` lists the classes (shots, times, thumbnail) and `memory_report()` the budget, for a page.

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
            after every `enroll`/`forget`, so a power cut or a kill never loses or corrupts it. The
            adapter is the file's one writer: it holds the file's lock (`edgemeta.runtime.lock`) until
            `close()` (or the end of a `with` block, or the process's exit); a second writer of the file,
            in another process or this one, gets `StoreLockedError` naming the holder's PID. A symbolic
            link is followed (it stays a link to the updated file).
        memory_budget: bytes the whole process may hold (an int, or a string such as "48MB"). Enrolling
            past it raises `MemoryBudgetError` and changes nothing, or with `on_full="evict"` forgets the
            least recently used classes first.
        unknown_threshold: "calibrated" (the bundle's manifest threshold, when it has one), a distance,
            or None (always answer the nearest class).
        prototype_dtype: "float32", or "int8" for a quarter of the memory per class.
        keep_support: None, "embeddings" (for `fit_head`) or "images" (to re-enroll under a new model).
        max_batch: images per interpreter call; bounds the activation memory.
        max_pixels: the largest image accepted, in pixels (default: the bundle's,
            `edgemeta.format.images.max_pixels_for`; with a memory budget, at most `BOARD_MAX_PIXELS`);
            checked on a file's header before it is decoded, and set aside in the memory budget
            (converting an image takes ~30 bytes per pixel).
        read_only: load `state` without taking its lock (beside a running writer, e.g. the service);
            `enroll`, `forget` and saving over `state` then raise `StoreReadOnlyError`.
        thumbnails: keep a small JPEG per class (at most THUMBNAIL_SIDE pixels a side and THUMBNAIL_MAX_BYTES),
            made from the first image enrolled into a class that has none (`thumbnail`, `set_thumbnail`);
            stored, renamed and forgotten with the class, and counted in the memory budget.
    """

    def __init__(self, embedder: Embedder, state: str | os.PathLike | None = None, *,
                 memory_budget: int | str | None = None, on_full: str = "error",
                 unknown_threshold: float | str | None = "calibrated", prototype_dtype: str = "float32",
                 keep_support: str | None = None, max_batch: int | None = None, max_pixels: int | None = None,
                 read_only: bool = False, thumbnails: bool = False) -> None:
        if on_full not in ON_FULL:
            raise ValueError(f"on_full must be one of {ON_FULL}. Received: {on_full!r}")
        if not isinstance(thumbnails, bool):
            raise ValueError(f"thumbnails must be True or False. Received: {thumbnails!r}")
        self.thumbnails = thumbnails
        self.embedder = embedder
        self.metric = embedder.manifest.metric
        for_metric(np.zeros((1, 1)), self.metric)  # unknown metric: refuse the bundle now, not at classify
        if max_batch is not None:
            if not isinstance(max_batch, int) or max_batch < 1:
                raise ValueError(f"max_batch must be a positive integer. Received: {max_batch!r}")
            embedder.max_batch = max_batch
        if max_pixels is not None:
            if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
                raise ValueError(f"max_pixels must be a positive integer. Received: {max_pixels!r}")
            embedder.max_pixels = max_pixels
        elif memory_budget is not None:  # 4 MiP would set 120 MB aside: more than a small board's whole budget
            from edgemeta.profiles import BOARD_MAX_PIXELS

            embedder.max_pixels = min(embedder.max_pixels, BOARD_MAX_PIXELS)
        self.on_full = on_full
        self._lock = threading.RLock()
        self._head = None  # a SoftmaxHead fitted on the current classes (fit_head), else None
        self._index = PrototypeIndex(self.metric)
        self.state_path = Path(state) if state is not None else None
        self.read_only = bool(read_only)
        # The writer's lock before the file is read: what is loaded is then what this adapter's saves build on.
        self._writer = StoreLock.acquire(self.state_path) if self.state_path is not None and not read_only else None
        try:
            if self.state_path is not None and self.state_path.exists():
                self._store = self._load_store(self.state_path)
            else:
                self._store = PrototypeStore(embedder.embedding_size, embedder.manifest.model_sha256, prototype_dtype,
                                             keep_support)
        except BaseException:
            self.close()
            raise
        self.unknown_threshold = unknown_threshold
        self.memory_budget = parse_bytes(memory_budget, "memory_budget") if memory_budget is not None else None
        self._budget: MemoryBudget | None = None
        self._planned: MemoryBudget | None = None  # without a budget: what one would count, for memory_report
        if self.memory_budget is not None:
            self._budget = MemoryBudget.for_adapter(self.memory_budget, embedder, self._store)
            self._budget.check(self._store, "The loaded store")

    @classmethod
    def from_bundle(cls, path: str | os.PathLike, state: str | os.PathLike | None = None,
                    num_threads: int | None = None, delegate: str | None = None, verify: bool = True,
                    **options: Any) -> FewShotAdapter:
        """The adapter of a bundle directory; `delegate="edgetpu"` runs the model on a Coral Edge TPU
        (CPU with a warning when its library is absent); `options` are the constructor's."""
        return cls(Embedder.from_bundle(path, num_threads, delegate=delegate, verify=verify), state, **options)

    @classmethod
    def from_preset(cls, name: str = "omniglot", state: str | os.PathLike | None = None,
                    num_threads: int | None = None, **options: Any) -> FewShotAdapter:
        return cls.from_bundle(preset_path(name), state, num_threads, **options)

    @classmethod
    def for_device(cls, bundle: str | os.PathLike, device: str, state: str | os.PathLike | None = None,
                   **options: Any) -> FewShotAdapter:
        """The adapter as a board profile (`edgemeta device list`) says: its threads, its delegate, its
        memory budget, `board_batch(bundle)` images per call and images of up to `BOARD_MAX_PIXELS` pixels, what
        `edgemeta device check` plans for (each overridable through `options`)."""
        from edgemeta.profiles import BOARD_MAX_PIXELS, board_batch, load_profile

        profile = load_profile(device)
        options.setdefault("memory_budget", profile.budget_bytes)
        options.setdefault("max_batch", board_batch(bundle))
        options.setdefault("max_pixels", BOARD_MAX_PIXELS)
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

    @property
    def unknown_threshold(self) -> float | None:
        """The distance beyond which `classify` answers "unknown" (None: never). "calibrated" reads the
        bundle's calibration: with a per-shot-count table (`genuine_quantiles`) this is the one-shot
        threshold, and classify compares each query with its nearest class's own shot count's; with an
        older per-class table, classify uses the threshold for the classes enrolled at the time
        (`UnknownThreshold`). Settable with what the constructor takes."""
        return self._threshold.value

    @unknown_threshold.setter
    def unknown_threshold(self, value: float | str | None) -> None:
        self._threshold = UnknownThreshold(value, getattr(self.embedder.manifest, "open_set", None))

    def shots(self, label: str) -> int:
        """How many images class `label` was enrolled with."""
        with self._lock:
            return self._store.count(label)

    def thumbnail(self, label: str) -> bytes | None:
        """Class `label`'s thumbnail, JPEG bytes, or None when it has none; KeyError for an unknown label."""
        with self._lock:
            return self._store.thumbnail(label)

    def classes(self) -> list[ClassInfo]:
        """Every enrolled class, sorted by label: its shots, when it was enrolled and last used (Unix seconds;
        None for a store saved before these were kept), whether it has a thumbnail. A class is used when it
        is enrolled into or is classify's answer; that use is saved with the next change (or `save`)."""
        with self._lock:
            return sorted(self._store.classes(), key=lambda info: info.label)

    def memory_report(self) -> dict:
        """The memory budget as a status page shows it: `budget_bytes` (None without one), `used_bytes` (what
        the budget counts now: the fixed part of the plan, `MemoryBudget.for_adapter`, plus the classes,
        `class_bytes`), `classes`, and `classes_that_fit` (how many more classes of the typical shot count,
        with a thumbnail at its largest when the adapter keeps them, still fit; None without a budget).
        Without a budget the plan is made on the first call (measuring the runtime, once per machine)."""
        from edgemeta.runtime.budget import class_bytes, more_classes, raw_image_bytes

        with self._lock:
            budget = self._budget
            if budget is None:
                if self._planned is None:
                    self._planned = MemoryBudget.for_adapter(0, self.embedder, self._store)
                budget = self._planned
            used = budget.total - budget.for_classes + class_bytes(self._store, budget.batch)
            fit = None
            if self._budget is not None:
                fit = more_classes(self._store, self._budget, max(1, self._store.median_count()),
                                   raw_image_bytes(self.embedder.manifest), self.thumbnails)
            return {"budget_bytes": self.memory_budget, "used_bytes": int(used), "classes": len(self._store),
                    "classes_that_fit": fit}

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
        embeddings, raw, thumbnail = self._embed_shots(images, label)
        with self._lock:
            before, capacity = {label: self._store.snapshot(label)}, self._store.capacity
            count = self._store.add(label, embeddings, raw)
            try:
                if thumbnail is not None and not self._store.has_thumbnail(label):
                    self._store.set_thumbnail(label, thumbnail)
                self._evict_to_fit(label, capacity, before)
                self._persist()
            except BaseException:
                self._undo(before, capacity)
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

    def rename(self, old: str, new: str) -> None:
        """Gives class `old` the label `new`, with its shots, times and thumbnail; saved like `enroll`. KeyError
        when `old` is not enrolled, ValueError when `new` is not a label or is enrolled already; a full budget
        (a longer label) or a failed save undoes it. Renaming a class to its own label does nothing."""
        if not isinstance(new, str) or not new.strip():
            raise ValueError(f"The new label must be a non-empty string. Received: {new!r}")
        with self._lock:
            if not isinstance(old, str) or old not in self._store:
                raise KeyError(f"Cannot rename {old!r}: no class is enrolled under it. Received: {old!r}")
            if new == old:
                return
            self._store.rename(old, new)  # ValueError for a bad or taken label, before anything changed
            self._keep_or_undo(f"Renaming {old!r}", lambda: self._store.rename(new, old))
            self._head = None

    def set_thumbnail(self, label: str, image: Any) -> None:
        """Replaces class `label`'s thumbnail with one made from `image` (one image, in any form `enroll`
        takes; None removes it), whether or not the adapter makes thumbnails itself; saved like `enroll`.
        KeyError for an unknown label; bad input, a full budget or a failed save raise and change nothing."""
        thumbnail = None if image is None else _thumbnail(image, self.embedder.max_pixels)
        with self._lock:
            before = self._store.thumbnail(label)  # KeyError for an unknown label, before anything changed
            self._store.set_thumbnail(label, thumbnail)
            self._keep_or_undo(f"With the thumbnail of {label!r}, the store", lambda: self._store.set_thumbnail(label, before))

    def _keep_or_undo(self, what: str, undo: Any) -> None:
        """After a change to the store (under the lock): checks the budget and saves, or calls `undo` and re-raises."""
        try:
            if self._budget is not None:
                self._budget.check(self._store, what)
            self._persist()
        except BaseException:
            undo()
            raise

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
        if not (isinstance(unknown_threshold, str) and unknown_threshold == "adapter"):
            unknown_threshold = check_threshold(unknown_threshold, words=())
        queries = for_metric(self.embedder.embed(images), self.metric)
        step = self.embedder.max_batch  # (queries, classes) arrays of at most this many rows: what the budget counts
        best, nearest, scores = [], [], []
        with self._lock:
            if not len(self._store):
                raise RuntimeError("No classes enrolled yet: call enroll(label, images) first.")
            for start in range(0, len(queries), step):
                chunk = queries[start : start + step]
                labels, d = self._index.distances(self._store, chunk)
                rows, score = self._nearest(chunk, d, labels)
                best += rows.tolist()
                nearest += d[np.arange(len(d)), rows].tolist()
                scores += score.tolist()
            shots = self._store.counts_at(np.asarray(best, np.int64))
            if unknown_threshold != "adapter":
                thresholds = [unknown_threshold] * len(best)
            elif self._threshold.per_shot_count:  # each query against its nearest class's own shot count
                thresholds = self._threshold.for_shots(shots).tolist()
            else:
                thresholds = [self._threshold.for_classes(len(labels), self._store.median_count())] * len(best)
            probability = enrolled_probability(getattr(self.embedder.manifest, "open_set", None) or {},
                                               np.asarray(nearest), shots, len(labels))
            self._store.touch_rows(set(best))
        probability = [None] * len(best) if probability is None else probability.tolist()
        return [Prediction(labels[j] if t is None or dist <= t else None, dist, score, labels[j], p)
                for j, dist, score, t, p in zip(best, nearest, scores, thresholds, probability)]

    def _nearest(self, queries: np.ndarray, d: np.ndarray, labels: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Per query, the row of its nearest class and its score: the fitted head's probability when
        one was fitted on these classes, else the softmax over negative distances."""
        rows = np.arange(len(d))
        if self._head is not None and list(self._head.labels) == labels:
            best, p = self._head.predict(queries)
            return best, p[rows, best]
        # The softmax over negative distances, read at the nearest class only (the same values as the
        # whole matrix's: one exp per distance, one sum per query).
        best = d.argmin(1)
        e = np.exp(d[rows, best][:, None] - d)
        return best, e[rows, best] / e.sum(1)

    # -- persistence -------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Writes what was taught to `path` atomically (temporary file, fsync, rename, fsync directory), as
        that file's one writer: under this adapter's lock when `path` is its state, else under a lock taken
        for the save (`StoreLockedError` when another writer holds it). A read-only adapter may save a
        copy elsewhere, not over its state."""
        with self._lock:
            target = resolve_store_path(path)
            if self._writer is not None and target == self._writer.path:
                self._store.save(target, lock=self._writer)
                return
            if self.read_only and self.state_path is not None and target == resolve_store_path(self.state_path):
                raise StoreReadOnlyError(f"This adapter opened {str(self.state_path)!r} read-only: it does not save over "
                                         "it (its writer does). Save a copy elsewhere, or open the adapter without "
                                         f"read_only=True. Received: save({str(path)!r})")
            self._store.save(target)

    def load(self, path: str | os.PathLike) -> None:
        """Replaces the enrolled classes with those saved at `path`; a corrupt file, another model's
        store, or one over the budget is refused and changes nothing."""
        store = self._load_store(path)
        with self._lock:
            if self._budget is not None:
                self._budget.check(store, str(path))
            self._store, self._head = store, None

    def close(self) -> None:
        """Gives back the state file's writer lock, so that another adapter or process may write it. The
        adapter still classifies; `enroll` and `forget` then raise `StoreReadOnlyError`. A second call
        does nothing; the end of a `with` block and the process's exit close too."""
        with self._lock:  # not while a change is being saved
            writer, self._writer = self._writer, None
            if writer is not None:
                writer.release()

    def __enter__(self) -> FewShotAdapter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _load_store(self, path: str | os.PathLike) -> PrototypeStore:
        """The store at `path`, checked (`PrototypeStore.load`) and refused unless this bundle's model taught it."""
        store = PrototypeStore.load(path, model_sha256=self.embedder.manifest.model_sha256)
        if store.embedding_size != self.embedder.embedding_size:
            raise StoreError(f"Store {str(path)!r} holds {store.embedding_size}-d prototypes but this bundle's model makes "
                             f"{self.embedder.embedding_size}-d embeddings. Received: embedding_size {store.embedding_size}")
        return store

    # -- internals ---------------------------------------------------------------------------------
    def _embed_shots(self, images: Any, label: str) -> tuple[np.ndarray, list[np.ndarray] | None, bytes | None]:
        """The shots' metric-mapped float64 embeddings, their raw uint8 pixels when the store keeps images
        (to re-enroll under a new model), and with `thumbnails` the first image's thumbnail when class
        `label` has none yet (made after the embedder checked every image)."""
        from edgemeta.format.preprocessing import as_image_list

        raw, wants_thumbnail = None, self.thumbnails and not self._store.has_thumbnail(label)
        if self._store.keep_support == "images":
            images = raw = [_raw_uint8(image, self.embedder.max_pixels) for image in as_image_list(images)]
        elif wants_thumbnail:  # one pass over a generator: the embedder's limit on the images' count
            images = as_image_list(images, limit=self.embedder.preprocessing.max_images)
        embeddings = for_metric(self.embedder.embed(images).astype(np.float64), self.metric)
        thumbnail = _thumbnail(images[0], self.embedder.max_pixels) if wants_thumbnail else None
        return embeddings, raw, thumbnail

    def _evict_to_fit(self, enrolled: str, capacity: int, before: dict) -> None:
        """With a budget, forgets the least recently used classes until the store fits it, or raises
        (`MemoryBudget.make_room`). `before` receives the evicted rows, for `_undo`."""
        if self._budget is None:
            return
        evicted = self._budget.make_room(self._store, enrolled, capacity, evict=self.on_full == "evict")
        if not evicted:
            return
        warnings.warn(f"Memory budget: evicted the least recently used class(es) {evicted}.", RuntimeWarning,
                      stacklevel=3)
        for victim in evicted:
            before.setdefault(victim, self._store.snapshot(victim))
            self._store.remove(victim)
        self._store.shrink_to(capacity)  # the evicted rows take back what the new class grew
        self._budget.check(self._store, f"After evicting {evicted}, the store")  # a safety net: make_room's sum is exact

    def _persist(self) -> None:
        """Saves the change just made (under the writer's lock), or raises so that the caller undoes it."""
        if self.read_only:
            where = f" on {str(self.state_path)!r}" if self.state_path is not None else ""
            raise StoreReadOnlyError(f"This adapter was opened read-only{where}: enroll and forget are refused. Open it "
                                     "without read_only=True (as the store's one writer) to change what was taught. "
                                     "Received: a change")
        if self.state_path is None:
            return
        if self._writer is None:
            raise StoreReadOnlyError(f"This adapter was closed: it no longer holds the writer lock of {str(self.state_path)!r}, "
                                     "so a change could not be saved. Open a new adapter on the file. Received: a change "
                                     "after close()")
        self._store.save(self._writer.path, lock=self._writer)

    def _undo(self, before: dict, capacity: int | None = None) -> None:
        """Puts the rows in `before` back; with `capacity`, frees the rows a refused class grew (they
        would leave the store over its budget)."""
        for label, row in before.items():
            self._store.restore(label, row)
        if capacity is not None:
            self._store.shrink_to(capacity)


def _raw_uint8(image: Any, max_pixels: int, draft: tuple[int, int] | None = None) -> np.ndarray:
    """An image as the uint8 pixels a new model's preprocessing can start from again (`draft`: the size they
    will be reduced to, which lets a large JPEG file decode at 1/2..1/8 scale)."""
    from edgemeta.format.preprocessing import _check_unit_range, _load, _to_unit_float

    array = _load(image, max_pixels, draft)
    _check_unit_range(array)
    return array if array.dtype == np.uint8 else np.round(_to_unit_float(array) * 255).astype(np.uint8)


def _thumbnail(image: Any, max_pixels: int) -> bytes:
    """One image's thumbnail (`edgemeta.format.images.thumbnail_jpeg`), decoded within `max_pixels`."""
    from edgemeta.format.images import thumbnail_jpeg

    if isinstance(image, (list, tuple)) or (isinstance(image, np.ndarray) and image.ndim == 4):
        raise ValueError(f"A thumbnail is made from one image. Received: {type(image).__name__} of "
                         f"{len(image)} images")
    pixels = _raw_uint8(image, max_pixels, draft=(THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    return thumbnail_jpeg(pixels, THUMBNAIL_SIDE, THUMBNAIL_MAX_BYTES)


__all__ = ["ClassInfo", "FewShotAdapter", "MemoryBudgetError", "Prediction", "StoreError"]

"""The prototype index: what classify keeps of a `PrototypeStore` between calls, and the distances of
queries to every enrolled class, computed in blocks of classes so that temporary memory stays bounded.

Kept until the store changes: the labels and the (metric-mapped) prototypes' squared norms, and, for up
to `resident_classes(d)` classes of a d-dimensional embedding, the prototypes themselves as float64. Beyond that,
each call copies one block of `class_block(d)` prototypes at a time into a kept buffer. Both are bounded in bytes,
so a photo model's 1280-d prototypes keep as little as Omniglot's 64-d ones.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from edgemeta.runtime.prototypes import for_metric, squared_norms

if TYPE_CHECKING:
    from edgemeta.runtime.store import PrototypeStore

BLOCK_BYTES = 256 * 1024  # float64 prototypes compared per block in classify (bounds its temporary memory)
CLASSIFY_CACHE_BYTES = 16  # per class, kept by classify between calls: a float64 norm and a slot in a label list
CLASSIFY_ARRAYS = 6  # (batch, classes) float64 arrays alive at once in classify: distances, logits, exp, ...


def class_block(embedding_size: int) -> int:
    """Prototypes of `embedding_size` components compared per block: `BLOCK_BYTES` of float64, 16 to 512 classes
    (512 for a 64-d embedding, 25 for a 1280-d one)."""
    return max(16, min(512, BLOCK_BYTES // (8 * embedding_size)))


def resident_classes(embedding_size: int) -> int:
    """Up to this many classes, classify keeps their float64 prototypes between calls: two blocks (1024 classes of a
    64-d embedding, 512 KiB; 50 of a 1280-d one, where copying a block per call costs little beside the model)."""
    return 2 * class_block(embedding_size)


class PrototypeIndex:
    """Squared distances from queries to a store's prototypes, metric-mapped, as `squared_distances`
    computes them, with what does not change between calls kept (see the module docstring). Not
    thread-safe: the adapter calls it with its lock held."""

    def __init__(self, metric: str) -> None:
        self.metric = metric
        self._cache: tuple | None = None  # (store, its version, labels, squared norms)
        self._float64: np.ndarray | None = None  # the float64 prototypes (see _load_block)
        self._float32: np.ndarray | None = None  # a block of dequantized int8 prototypes
        self._resident = False

    def distances(self, store: PrototypeStore, queries: np.ndarray) -> tuple[list[str], np.ndarray]:
        """`(labels, (queries, classes) squared distances)` of metric-mapped `queries` to `store`'s
        classes, in the store's row order: `squared_distances` of every block of classes, bit for bit,
        with the product per block and the rest of the formula once over all classes."""
        labels, norms = self._refresh(store)
        x = np.asarray(queries, np.float64)
        d = np.empty((len(x), len(norms)))
        twice = 2 * x
        block = class_block(store.embedding_size)
        for i in range(0, len(norms), block):
            d[:, i : i + block] = twice @ self._block64(store, i).T
        np.subtract(squared_norms(x)[:, None], d, out=d)
        d += norms
        return labels, np.maximum(d, 0.0, out=d)

    def _refresh(self, store: PrototypeStore) -> tuple[list[str], np.ndarray]:
        """The store's labels and its prototypes' squared norms, recomputed only when the store changed
        (another store, or a new version of it)."""
        cached = self._cache
        if cached is None or cached[0] is not store or cached[1] != store.version:
            self._cache = None
            n, block, resident = len(store), class_block(store.embedding_size), resident_classes(store.embedding_size)
            self._resident = n <= resident
            rows = n if self._resident else block
            if self._float64 is None or len(self._float64) < rows or self._float64.shape[1] != store.embedding_size:
                size = min(resident, max(16, 2 * rows))  # room to grow: not a new buffer per class
                self._float64 = np.empty((size, store.embedding_size), np.float64)
            norms = np.empty(n)
            for i in range(0, n, block):
                block = self._load_block(store, i)
                norms[i : i + len(block)] = squared_norms(block)
            cached = self._cache = (store, store.version, store.labels, norms)
        return cached[2], cached[3]

    def _block64(self, store: PrototypeStore, start: int) -> np.ndarray:
        """Float64 prototypes of the block from `start` (kept, or loaded now)."""
        if self._resident:
            return self._float64[start : min(start + class_block(store.embedding_size), len(store))]
        return self._load_block(store, start)

    def _load_block(self, store: PrototypeStore, start: int) -> np.ndarray:
        """Copies the block of prototypes from `start` (`class_block`), metric-mapped, into the float64 buffer: at
        their own rows while all classes fit in it, else at its start (one block at a time, per call).
        A buffer kept between calls, because a fresh array of a block's size (256 KB for 64-d
        embeddings) went to mmap and back on every call, page faults included."""
        size = class_block(store.embedding_size)
        rows = min(len(store) - start, size)
        scratch = None
        if store.prototype_dtype == "int8" and not self._resident:  # dequantized per call: a kept float32 buffer
            if self._float32 is None or self._float32.shape != (size, store.embedding_size):
                self._float32 = np.empty((size, store.embedding_size), np.float32)
            scratch = self._float32
        block = store.prototype_block(start, start + size, out=scratch)
        if self.metric != "squared_euclidean":
            block = for_metric(block, self.metric)
        out = self._float64[start : start + rows] if self._resident else self._float64[:rows]
        np.copyto(out, block)
        return out

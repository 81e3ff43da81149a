"""The memory budget's arithmetic: what one class, one call's working set and classify's buffers cost, and
what a budget leaves for the classes. Image sizes come from the bundle's manifest, never a dataset's.

Used by `FewShotAdapter` (a budget enforced while enrolling: `MemoryBudget`) and by
`edgemeta.runtime.memory.plan_memory` (a budget planned before deployment).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from edgemeta.runtime.index import CLASS_BLOCK, CLASSIFY_CACHE_BYTES, RESIDENT_CLASSES
from edgemeta.runtime.store import LABEL_BYTES, ROW_OBJECT_BYTES

if TYPE_CHECKING:
    from edgemeta.format.bundle import Manifest
    from edgemeta.runtime.store import PrototypeStore


class MemoryBudgetError(MemoryError):
    """Enrolling would exceed the adapter's memory budget; nothing was changed."""


def raw_image_shape(manifest: Manifest) -> tuple[int, int, int]:
    """`(height, width, channels)` of the uint8 images the board is expected to be handed.

    The manifest's `raw_shape` when it records one (the raw images the model was trained on, e.g.
    Omniglot's 105x105 grayscale drawings). Otherwise the assumption is that images arrive at the
    model's input size, in its channels (the preprocessing's `input_shape`): a bundle for 224x224 RGB
    photos plans 224x224x3 per image. Images larger than that take proportionally more working memory
    than planned; a bundle exported with `raw_shape` plans for them.
    """
    return tuple(manifest.raw_shape or manifest.preprocessing.input_shape)


def raw_image_bytes(manifest: Manifest) -> int:
    """Bytes of one raw uint8 image (`raw_image_shape`): what a kept shot of `keep_support="images"` holds."""
    return math.prod(raw_image_shape(manifest))


def working_set_bytes(manifest: Manifest, batch: int) -> int:
    """The transient arrays of one call on `batch` images: the raw uint8 images and their float copies
    while preprocessing, the float input and its int8 copy, the embeddings; with patches
    (`manifest.input_patches`), the padded image and its patches in the model's input dtype, and the
    gather index of one image (8 bytes per patch value)."""
    input_values = math.prod(manifest.preprocessing.input_shape)
    working = batch * (raw_image_bytes(manifest) * (1 + 4 * 2) + input_values * (4 + 1) + 8 * manifest.embedding_size)
    if manifest.input_patches > 1:
        h, w, c = manifest.preprocessing.input_shape
        itemsize = np.dtype(manifest.quantization.get("input_dtype", "float32")).itemsize
        pad = manifest.input_patches - 1
        patch_values = math.prod(manifest.model_input_shape)
        working += batch * itemsize * ((h + pad) * (w + pad) * c + patch_values) + 8 * patch_values
    return working


def classify_buffer_bytes(embedding_size: int, prototype_dtype: str) -> int:
    """classify's float64 prototypes, kept for up to RESIDENT_CLASSES classes, and (int8 prototypes
    beyond them) its block of dequantized float32 ones (see `edgemeta.runtime.index`)."""
    return 8 * embedding_size * RESIDENT_CLASSES + (4 * embedding_size * CLASS_BLOCK if prototype_dtype == "int8" else 0)


def class_bytes(store: PrototypeStore) -> int:
    """What the enrolled classes hold: the store, and what classify keeps per class between calls."""
    return store.nbytes() + CLASSIFY_CACHE_BYTES * len(store)


def evicted_bytes(store: PrototypeStore, label: str) -> int:
    """What forgetting `label` gives back: its label, row objects, kept shots and classify's entry. Its
    array row stays, as a spare (the arrays do not shrink on remove)."""
    return LABEL_BYTES + ROW_OBJECT_BYTES + CLASSIFY_CACHE_BYTES + store.support_bytes(label)


class MemoryBudget:
    """A process's memory budget (`total` bytes) and the part of it left for the enrolled classes
    (`for_classes`, compared with `class_bytes(store)`)."""

    def __init__(self, total: int, for_classes: int) -> None:
        self.total, self.for_classes = total, for_classes

    @classmethod
    def for_adapter(cls, total: int, embedder: Any, store: PrototypeStore) -> MemoryBudget:
        """The budget of an adapter on `embedder` and `store`: `total` minus what this process already
        holds (less the classes, counted apart), the activations and the working set of one full batch
        (`embedder.max_batch`), and classify's prototype buffers."""
        from edgemeta.runtime.memory import current_rss_bytes, tensor_arena_bytes

        batch = embedder.max_batch
        arena = tensor_arena_bytes(embedder._interpreter, batch)
        working = working_set_bytes(embedder.manifest, batch)
        buffers = classify_buffer_bytes(store.embedding_size, store.prototype_dtype)
        return cls(total, total - current_rss_bytes() - arena - working - buffers + class_bytes(store))

    def check(self, store: PrototypeStore, what: str) -> None:
        """Raises `MemoryBudgetError` when `store`'s classes (`what`, e.g. "The loaded store") do not fit."""
        needed = class_bytes(store)
        if needed > self.for_classes:
            raise MemoryBudgetError(
                f"{what} needs {needed / 2**20:.2f} MB for {len(store)} classes but the budget of "
                f"{self.total / 2**20:.1f} MB leaves {max(self.for_classes, 0) / 2**20:.2f} MB for classes. "
                "Nothing was changed. Raise memory_budget or forget classes in a process with a larger budget.")

    def make_room(self, store: PrototypeStore, enrolled: str, capacity: int, evict: bool) -> list[str]:
        """The classes to forget, least recently used first, so that `store` (with `enrolled` just added)
        fits; [] when it fits. Raises `MemoryBudgetError` when it does not and `evict` is False, or when
        even evicting every other class would not do. `capacity`: the store's rows before `enrolled` was
        added; evicting gives back the rows it grew (`shrink_to(capacity)`), no others."""
        needed = class_bytes(store)
        if needed <= self.for_classes:
            return []
        if not evict:
            raise MemoryBudgetError(
                f"Enrolling {enrolled!r} would need {needed / 2**20:.2f} MB for {len(store)} classes; "
                f"the memory budget of {self.total / 2**20:.1f} MB leaves {self.for_classes / 2**20:.2f} MB "
                "for classes. Nothing was changed. Forget classes, raise memory_budget, use "
                "prototype_dtype='int8', or pass on_full='evict' to forget the least recently used class.")
        victims, freed = [], 0
        grown = (store.capacity - capacity) * store.row_bytes  # freed by shrink_to(capacity)
        for label in store.by_last_use():
            if needed - freed <= self.for_classes:
                break
            if label != enrolled:
                victims.append(label)
                freed += (grown if len(victims) == 1 else 0) + evicted_bytes(store, label)
        if needed - freed > self.for_classes:
            raise MemoryBudgetError(f"{enrolled!r} alone does not fit the memory budget. Nothing was changed.")
        return victims

"""The memory budget's arithmetic: what one class, one call's working set and classify's buffers cost, and
what a budget leaves for the classes. Image sizes come from the bundle's manifest, never a dataset's.

Used by `FewShotAdapter` (a budget enforced while enrolling: `MemoryBudget`) and by
`edgemeta.runtime.memory.plan_memory` (a budget planned before deployment).
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from edgemeta.runtime.index import CLASSIFY_ARRAYS, CLASSIFY_CACHE_BYTES, class_block, resident_classes
from edgemeta.runtime.store import ROW_OBJECT_BYTES

if TYPE_CHECKING:
    from edgemeta.format.bundle import Manifest
    from edgemeta.runtime.store import PrototypeStore


# Peak memory per decoded pixel while the runtime converts an image to a model's input, by the model's channels
# (uint8 pixels, then one float32 channel at a time, resized as it is made; for 1 channel, the gray plane beside it).
# Images are decoded one at a time, but the largest is converted whole: a budget sets aside this much per pixel of
# the largest image the adapter accepts (`Embedder.max_pixels`). Measured on a 1000x1000 RGB PNG, peak RSS over the
# process's before (`benchmarks/pixel_memory.py`): 15.5 B for a 3-channel model, 17.2 B for a 1-channel one (its gray
# plane made a band of rows at a time); set with a margin. (Converting all channels to float32 at once took 27.5 B.)
PIXEL_BYTES = {1: 20, 3: 18}


def pixel_bytes(channels: int) -> int:
    """Bytes set aside per decoded pixel of the largest image, for a model taking `channels` channels (1 or 3)."""
    if channels not in PIXEL_BYTES:
        raise ValueError(f"channels must be one of {sorted(PIXEL_BYTES)}. Received: {channels!r}")
    return PIXEL_BYTES[channels]


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
    """classify's float64 prototypes, kept for up to `resident_classes` classes, and (int8 prototypes
    beyond them) its block of dequantized float32 ones (see `edgemeta.runtime.index`)."""
    float32_block = 4 * embedding_size * class_block(embedding_size) if prototype_dtype == "int8" else 0
    return 8 * embedding_size * resident_classes(embedding_size) + float32_block


def class_bytes(store: PrototypeStore, batch: int = 0) -> int:
    """What the enrolled classes hold: the store (labels at their real size), the transient peak of
    saving or loading it (`persist_peak_bytes`), what classify keeps per class between calls, and (with
    `batch`, the queries classify compares at once) its `(batch, classes)` float64 arrays."""
    return store.nbytes() + store.persist_peak_bytes() + (CLASSIFY_CACHE_BYTES + 8 * CLASSIFY_ARRAYS * batch) * len(store)


def persist_bytes_per_class(shots: int, keeps_support: bool) -> int:
    """What one more class of a typical label (`LABEL_BYTES`' 16 characters) adds to a store's
    `persist_peak_bytes`: twice its label's JSON, 9 bytes (its thumbnail's size among them), and 80 B per
    kept shot; for the plan."""
    return 2 * (len(json.dumps("x" * 16)) + 2) + 9 + (80 * shots if keeps_support else 0)


def more_classes(store: PrototypeStore, budget: MemoryBudget, shots: int, image_bytes: int, thumbnails: bool) -> int:
    """How many more classes of `shots` shots and a typical label (`LABEL_BYTES`' 16 characters), each with a
    thumbnail at its largest when `thumbnails`, `budget` accepts beside `store`'s: what `MemoryBudget.make_room`
    would let `enroll` add one by one (without evicting), the store's arrays growing by a quarter when full.
    `image_bytes`: one raw image (`raw_image_bytes`), for a store that keeps images."""
    per_class = (store.bytes_per_class(shots, image_bytes, thumbnails) - store.row_bytes  # its row: below
                 + persist_bytes_per_class(shots, store.keep_support is not None)
                 + CLASSIFY_CACHE_BYTES + 8 * CLASSIFY_ARRAYS * budget.batch)
    free, n, capacity, fit = budget.for_classes - class_bytes(store, budget.batch), len(store), store.capacity, 0
    while True:  # one growth of the arrays at a time: a few dozen rounds for thousands of classes
        if n == capacity:
            grow = max(16, n // 4)  # as PrototypeStore._append_row grows them
            free, capacity = free - grow * store.row_bytes, capacity + grow
        k = max(0, min(capacity - n, free // per_class))
        fit, n, free = fit + k, n + k, free - k * per_class
        if n < capacity or k == 0:
            return fit


def evicted_bytes(store: PrototypeStore, label: str, batch: int = 0) -> int:
    """What forgetting `label` gives back: its label, row objects, kept shots, thumbnail, classify's entry and
    its columns. Its array row stays, as a spare (the arrays do not shrink on remove); what it took of the
    save's transient peak is not counted (a few bytes: evicting errs on the side of one class more)."""
    return (store.label_bytes(label) + ROW_OBJECT_BYTES + CLASSIFY_CACHE_BYTES + 8 * CLASSIFY_ARRAYS * batch
            + store.support_bytes(label) + store.thumbnail_bytes(label))


class MemoryBudget:
    """A process's memory budget (`total` bytes) and the part of it left for the enrolled classes
    (`for_classes`, compared with `class_bytes(store, batch)`)."""

    def __init__(self, total: int, for_classes: int, batch: int = 0, before_classes: str = "") -> None:
        self.total, self.for_classes, self.batch = total, for_classes, batch
        self.before_classes = before_classes  # what the budget holds before any class, for the error

    @classmethod
    def for_adapter(cls, total: int, embedder: Any, store: PrototypeStore) -> MemoryBudget:
        """The budget of an adapter on `embedder` and `store`: `total` minus the memory plan's fixed part
        for this model at `embedder.max_batch` (`edgemeta.runtime.memory.plan_for`, what `edgemeta
        device check` computes) and classify's buffers; minus, too, any anonymous memory this process
        holds beyond what the plan expects of a runtime (a caller's own arrays, say). Shared library
        pages are counted at the plan's measured figure, not read live (see `edgemeta.runtime.memory`)."""
        from edgemeta.runtime.memory import anonymous_rss_bytes, plan_for

        batch = embedder.max_batch
        plan = plan_for(embedder.manifest, embedder.model_size, embedder.activation_bytes(batch), batch, 0,
                        store.prototype_dtype, store.keep_support, max_pixels=embedder.max_pixels)
        expected = plan.runtime_anonymous + plan.model + plan.arena + class_bytes(store, batch)
        beyond_plan = max(0, anonymous_rss_bytes() - expected)
        parts = [("runtime", plan.runtime), ("model", plan.model), (f"activations at batch {batch}", plan.arena),
                 (f"working arrays of {batch} images", plan.working),
                 (f"converting the largest image ({embedder.max_pixels} pixels, max_pixels)", plan.request),
                 ("classify's buffers", plan.block * plan.resident_classes),
                 ("this process's own memory beyond the plan", beyond_plan)]
        needed = sum(value for _, value in parts)
        before = (f"{needed / 2**20:.1f} MB before any class: "
                  + ", ".join(f"{name} {value / 2**20:.2f}" for name, value in parts if value) + " MB")
        return cls(total, total - needed, batch, before)

    def check(self, store: PrototypeStore, what: str) -> None:
        """Raises `MemoryBudgetError` when `store`'s classes (`what`, e.g. "The loaded store") do not fit."""
        needed = class_bytes(store, self.batch)
        if self.for_classes < 0:
            raise MemoryBudgetError(
                f"The memory budget of {self.total / 2**20:.1f} MB is too small for this bundle: the adapter needs "
                f"{self.before_classes}. Nothing was changed. Raise memory_budget, or lower max_pixels or max_batch.")
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
        needed = class_bytes(store, self.batch)
        if needed <= self.for_classes:
            return []
        if not evict:
            raise MemoryBudgetError(
                f"Enrolling {enrolled!r} would need {needed / 2**20:.2f} MB for {len(store)} classes; "
                f"the memory budget of {self.total / 2**20:.1f} MB leaves {self.for_classes / 2**20:.2f} MB "
                "for classes. Nothing was changed. Forget classes, raise memory_budget, use "
                "prototype_dtype='int8', or pass on_full='evict' to forget the least recently used class"
                + (f" (thumbnails take {store.thumbnail_bytes() / 2**20:.2f} MB of it)." if store.thumbnail_bytes() else "."))
        victims, freed = [], 0
        grown = (store.capacity - capacity) * store.row_bytes  # freed by shrink_to(capacity)
        for label in store.by_last_use():
            if needed - freed <= self.for_classes:
                break
            if label != enrolled:
                victims.append(label)
                freed += (grown if len(victims) == 1 else 0) + evicted_bytes(store, label, self.batch)
        if needed - freed > self.for_classes:
            raise MemoryBudgetError(f"{enrolled!r} alone does not fit the memory budget. Nothing was changed.")
        return victims

"""An in-memory labelled image set: preprocessed images, class names and each class's group."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from edgemeta.format.preprocessing import Preprocessing

# Above this many bytes of preprocessed float32, `from_raw` keeps the raw pixels and preprocesses on read
# (`PreprocessedImages`): mini-ImageNet's `train` upscaled to 224x224 would be 11.6 GB in memory, its raw pixels are 0.4 GB.
EAGER_LIMIT_BYTES = 1 << 30


class PreprocessedImages:
    """Raw images that are preprocessed when read: a read-only stand-in for the `(n, H, W, C)` float32 array of a
    large dataset, holding only the raw pixels. Indexing with an int gives one image, with a slice or an index array
    a float32 batch, each made by `preprocessing` exactly as the runtime makes it; `take` selects images
    without preprocessing them.

    Example:
        >>> pre = Preprocessing(4, 4, 3)
        >>> lazy = PreprocessedImages([np.zeros((2, 2, 3), np.uint8)] * 5, pre)
        >>> lazy.shape, lazy[[0, 3]].shape, lazy.take([1, 2]).shape
        ((5, 4, 4, 3), (2, 4, 4, 3), (2, 4, 4, 3))
    """

    dtype = np.dtype(np.float32)
    ndim = 4

    def __init__(self, raw: Sequence[Any], preprocessing: Preprocessing) -> None:
        self.raw, self.preprocessing = list(raw), preprocessing
        self.shape = (len(self.raw), *preprocessing.input_shape)

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, index: Any) -> np.ndarray:
        if isinstance(index, (int, np.integer)):
            return self.preprocessing.one(self.raw[index])
        indices = np.arange(len(self.raw))[index]
        if indices.ndim != 1:
            raise IndexError(f"PreprocessedImages takes an int, a slice or a 1-D index array. Received: {index!r}")
        batch = np.empty((len(indices), *self.shape[1:]), np.float32)
        for row, i in enumerate(indices):
            batch[row] = self.preprocessing.one(self.raw[i])
        return batch

    def take(self, indices: Any, axis: int = 0) -> PreprocessedImages:
        """The images at `indices`, still preprocessed on read (numpy's `take` along the first axis)."""
        if axis != 0:
            raise ValueError(f"PreprocessedImages selects images (axis 0) only. Received: axis={axis}")
        return PreprocessedImages([self.raw[i] for i in np.asarray(indices).reshape(-1)], self.preprocessing)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        batch = self[:]
        return batch if dtype is None else batch.astype(dtype)


def map_in_batches(fn: Any, images: np.ndarray | PreprocessedImages, batch: int = 256) -> np.ndarray:
    """`fn` (a batch of preprocessed images -> a row per image) over all of `images`: in one call for an array, a
    batch at a time for images preprocessed on read, which are never all in memory at once."""
    if isinstance(images, np.ndarray):
        return fn(images)
    return np.concatenate([fn(images[i : i + batch]) for i in range(0, len(images), batch)])


@dataclass(frozen=True)
class ImageClassDataset:
    """Images already preprocessed for the model, with per-image class labels.

    `groups[c]` is the group of class `c` (Omniglot: its alphabet) so episodes can be drawn within
    one group. `raw` keeps each image as a user would hand it to the runtime (an array or a path),
    so the on-device path can be evaluated on exactly the same images. `raw_shape` is the largest raw
    image `(height, width, channels)` it was built from, what a board will be handed (None when unknown,
    e.g. files of any size); exports record it so the board's memory plan knows its images.
    """

    images: np.ndarray | PreprocessedImages  # float32 (n, H, W, C), preprocessed (on read when large)
    labels: np.ndarray  # int32 (n,) in [0, num_classes)
    class_names: tuple[str, ...]
    groups: tuple[str, ...]
    preprocessing: Preprocessing
    name: str
    raw: Sequence[Any] | None = None
    raw_shape: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        if len(self.images) != len(self.labels):
            raise ValueError(f"images and labels differ in length. Received: {len(self.images)} and {len(self.labels)}")
        if len(self.class_names) != len(self.groups):
            raise ValueError("class_names and groups must have one entry per class.")
        if self.raw is not None and len(self.raw) != len(self.images):
            raise ValueError("raw must have one entry per image.")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return (
            f"ImageClassDataset(name={self.name!r}, images={len(self)}, classes={self.num_classes}, "
            f"groups={len(set(self.groups))}, shape={self.images.shape[1:]})"
        )

    def subset(self, groups: Sequence[str] | None = None, classes: Sequence[int] | None = None) -> ImageClassDataset:
        """Keeps the classes in `groups` (by name) or with indices `classes`; classes are renumbered."""
        if (groups is None) == (classes is None):
            raise ValueError("Pass exactly one of `groups` or `classes`.")
        if groups is not None:
            unknown = sorted(set(groups) - set(self.groups))
            if unknown:
                raise ValueError(f"Unknown group(s) {unknown}. Expected some of: {sorted(set(self.groups))}")
            keep = [c for c in range(self.num_classes) if self.groups[c] in set(groups)]
        else:
            keep = sorted(set(int(c) for c in classes))
            if keep and (keep[0] < 0 or keep[-1] >= self.num_classes):
                raise ValueError(f"Class indices must be in [0, {self.num_classes}). Received: {list(classes)}")
        remap = np.full(self.num_classes, -1, np.int64)
        remap[keep] = np.arange(len(keep))
        mask = remap[self.labels] >= 0
        idx = np.flatnonzero(mask)
        return replace(
            self,
            images=self.images.take(idx, axis=0),
            labels=remap[self.labels[idx]].astype(np.int32),
            class_names=tuple(self.class_names[c] for c in keep),
            groups=tuple(self.groups[c] for c in keep),
            raw=None if self.raw is None else [self.raw[i] for i in idx],
        )

    def with_rotations(self, angles: Sequence[int] = (90, 180, 270)) -> ImageClassDataset:
        """Adds each class rotated by `angles` as new classes (in the same group), as in Omniglot
        meta-training since Santoro et al. 2016. Rotated classes have no raw images (`raw_shape` stays:
        the board is still handed images of that size)."""
        for a in angles:
            if a % 90 or not 0 < a < 360:
                raise ValueError(f"Rotation angles must be 90, 180 or 270. Received: {a}")
        images, labels = [self.images], [self.labels]
        names, groups = list(self.class_names), list(self.groups)
        for a in angles:
            images.append(np.rot90(self.images, k=a // 90, axes=(1, 2)))
            labels.append(self.labels + len(names))
            names += [f"{n}@rot{a}" for n in self.class_names]
            groups += list(self.groups)
        return replace(
            self,
            images=np.ascontiguousarray(np.concatenate(images)),
            labels=np.concatenate(labels).astype(np.int32),
            class_names=tuple(names),
            groups=tuple(groups),
            raw=None,
        )


def from_raw(
    raw: Sequence[Any],
    labels: Sequence[int],
    class_names: Sequence[str],
    groups: Sequence[str],
    preprocessing: Preprocessing,
    name: str,
    keep_raw: bool = True,
) -> ImageClassDataset:
    """Builds a dataset by preprocessing raw images with the same code the runtime uses."""
    if len(raw) == 0:
        raise ValueError(f"Dataset {name!r} has no images.")
    # Written into one array as they are made: mini-ImageNet's 19,200 images at 84x84x3 are 1.6 GB in float32,
    # which a list of arrays stacked (and cast) afterwards would hold two or three times over.
    first = preprocessing.one(raw[0])
    if len(raw) * first.nbytes > EAGER_LIMIT_BYTES:
        images = PreprocessedImages(raw, preprocessing)
    else:
        images = np.empty((len(raw), *first.shape), np.float32)
        images[0] = first
        for i in range(1, len(raw)):
            images[i] = preprocessing.one(raw[i])
    return ImageClassDataset(
        images=images,
        labels=np.asarray(labels, np.int32),
        class_names=tuple(class_names),
        groups=tuple(groups),
        preprocessing=preprocessing,
        name=name,
        raw=list(raw) if keep_raw else None,
        raw_shape=_largest_shape(raw),
    )


def _largest_shape(raw: Sequence[Any]) -> tuple[int, int, int] | None:
    """`(height, width, channels)` covering every raw array; None when any raw image is not an array."""
    shapes = [np.shape(r) for r in raw]
    if not all(isinstance(r, np.ndarray) and len(s) in (2, 3) for r, s in zip(raw, shapes)):
        return None
    return (max(s[0] for s in shapes), max(s[1] for s in shapes), max(s[2] if len(s) == 3 else 1 for s in shapes))

"""tf.data pipelines of N-way K-shot episodes for Keras: the numpy `EpisodeIndices` gathered into images.

An episode is `(support, support_labels, query, query_labels)`: support is class-major (the K shots of
class 0, then of class 1, ...), labels are episode-local in [0, N). Episode `i` of a sampler depends
only on `(seed, i)` (`edgemeta.data.episodes.EpisodeIndices`), so two samplers with one seed yield the
same episodes, and so does the TensorFlow-free bundle evaluation: the Keras model and the on-device
runtime are compared on identical tasks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgemeta.data.dataset import PreprocessedImages
from edgemeta.data.episodes import EpisodeIndices
from edgemeta.format.preprocessing import Preprocessing
from edgemeta.train.backend import tf

# Folded into an episode's augmentation seed for the photo augmentation, so its draws are independent of
# `random_affine`'s (and a run with only the affine augmentation draws exactly what it drew before).
_PHOTO_STREAM = 0x70686F74


@dataclass(frozen=True)
class PhotoAugment:
    """Photo augmentation of training episodes (`EpisodeSampler.episodes(photo=...)`), each image on its own
    draws: a random resized crop (a region of `area` of the image's area, of aspect ratio (width / height) in
    `ratio`, scaled back to the image's size, bilinear), a horizontal flip with probability `flip`, and colour
    jitter: brightness, contrast and saturation each multiplied by a factor in [1 - x, 1 + x] (saturation
    only on colour images), in that order, the pixels clipped to [0, 1] after each step. The defaults are
    those of common few-shot photo recipes: a crop of at least half the image, flips, 0.4 jitter."""

    area: tuple[float, float] = (0.5, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: float = 0.5
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4

    def __post_init__(self) -> None:
        lo, hi = self.area
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"area must be (low, high) with 0 < low <= high <= 1. Received: {self.area!r}")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio must be (low, high) with 0 < low <= high. Received: {self.ratio!r}")
        if not 0 <= self.flip <= 1:
            raise ValueError(f"flip must be a probability in [0, 1]. Received: {self.flip!r}")
        for name in ("brightness", "contrast", "saturation"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1). Received: {getattr(self, name)!r}")


class EpisodeSampler(EpisodeIndices):
    """`EpisodeIndices` (same arguments, same episodes) with tf.data views: `indices()` and Keras-ready
    `episodes()`.

    Example:
        >>> sampler = EpisodeSampler(ds, n_way=5, k_shot=1, n_query=5, seed=0)  # doctest: +SKIP
        >>> model.fit(sampler.episodes(), steps_per_epoch=100)  # doctest: +SKIP
    """

    def _sample(self, index: tf.Tensor):
        """Episode `index` (a scalar int64 tensor) as four int32 tensors, drawn by the numpy description."""
        n_support, n_query = self.n_way * self.k_shot, self.n_way * self.n_query
        episode = tf.numpy_function(lambda i: tuple(self[i]), [index], [tf.int32] * 4, stateful=False)
        for tensor, size in zip(episode, (n_support, n_support, n_query, n_query)):
            tensor.set_shape([size])
        return tuple(episode)

    def indices(self, start: int = 0) -> tf.data.Dataset:
        """Infinite dataset of `(support_idx, support_labels, query_idx, query_labels)` into the dataset."""
        return tf.data.Dataset.counter(start).map(self._sample, num_parallel_calls=tf.data.AUTOTUNE)

    def episodes(self, episodes_per_batch: int = 1, start: int = 0, input_context: tf.distribute.InputContext | None = None,
                 photo: PhotoAugment | None = None, **augment: float) -> tf.data.Dataset:
        """Infinite dataset of `((support, support_labels, query), query_labels)` batches, ready for
        `fit`/`evaluate`. Training augmentation, of support and query images alike, drawn from `(seed,
        episode index)` only (the same episodes are augmented the same way on every run and any number of
        workers): `photo` applies `photo_augment` (crop, flip, colour jitter); `augment` (`max_shift`,
        `max_rotation`, `max_scale`, `max_shear`) applies `random_affine` after it. Without either, images
        are the dataset's as they are (evaluation).

        Step `s` is made of episodes `start + s * episodes_per_batch + [0, episodes_per_batch)`. With a
        `tf.distribute.InputContext` (from `distribute_datasets_from_function`) this input pipeline
        assembles only its own share of each step's global batch, batched per replica: replica r of
        the run gets the r-th slice of whole episodes, so any number of workers and devices train on
        exactly the episodes one device would (and no worker assembles episodes it then discards)."""
        augment = {k: float(v) for k, v in augment.items() if v}
        images = self.dataset.images
        if isinstance(images, PreprocessedImages):  # a large dataset: its images are preprocessed as episodes read them
            shape = images.shape[1:]

            def take(indices):
                batch = tf.numpy_function(lambda i: images[i], [indices], tf.float32, stateful=False)
                batch.set_shape([indices.shape[0], *shape])
                return batch
        else:
            images = tf.constant(images)

            def take(indices):
                return tf.gather(images, indices)
        seed = self.seed
        global_batch, batch, pipelines, pipeline = episodes_per_batch, episodes_per_batch, 1, 0
        if input_context is not None:
            batch = input_context.get_per_replica_batch_size(episodes_per_batch)  # raises unless divisible
            pipelines, pipeline = input_context.num_input_pipelines, input_context.input_pipeline_id
        share = global_batch // pipelines  # episodes this pipeline assembles per step

        preprocessing = self.dataset.preprocessing

        def gather(index):
            support, support_labels, query, query_labels = self._sample(index)
            s, q = take(support), take(query)
            if photo is not None:
                key = tf.random.experimental.stateless_fold_in(tf.stack([tf.constant(~seed, tf.int64), index]), _PHOTO_STREAM)
                photo_seed = tf.random.experimental.stateless_split(key, 2)
                s = photo_augment(s, photo_seed[0], photo, preprocessing)
                q = photo_augment(q, photo_seed[1], photo, preprocessing)
            if augment:
                aug_seed = tf.random.experimental.stateless_split(tf.stack([tf.constant(~seed, tf.int64), index]), 2)
                s = random_affine(s, aug_seed[0], **augment)
                q = random_affine(q, aug_seed[1], **augment)
            return (s, support_labels, q), query_labels

        def episode_index(i):
            return start + (i // share) * global_batch + pipeline * share + i % share

        ds = tf.data.Dataset.counter().map(episode_index).map(gather, num_parallel_calls=tf.data.AUTOTUNE)
        return ds.batch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def labelled_batches(dataset, batch_size: int, seed: int = 0, start: int = 0, photo: PhotoAugment | None = None,
                     input_context: tf.distribute.InputContext | None = None, **augment: float) -> tf.data.Dataset:
    """Infinite dataset of `(images, labels)` batches of `dataset` for learners that train by classification
    (`Classifier`): batch `b` is `batch_size` distinct images drawn uniformly from `(seed, b)` alone (so a resumed or
    distributed run sees the batches one uninterrupted run would), augmented as `EpisodeSampler.episodes` augments
    episodes. Labels are the dataset's class indices. With an `input_context`, this pipeline makes its replicas'
    slices of each global batch."""
    augment = {k: float(v) for k, v in augment.items() if v}
    images, labels, n = dataset.images, np.asarray(dataset.labels, np.int32), len(dataset)
    if batch_size < 1 or batch_size > n:
        raise ValueError(f"batch_size must be in [1, {n}] (the dataset's images). Received: {batch_size}")
    batch, pipelines, pipeline = batch_size, 1, 0
    if input_context is not None:
        batch = input_context.get_per_replica_batch_size(batch_size)
        pipelines, pipeline = input_context.num_input_pipelines, input_context.input_pipeline_id
    share = batch_size // pipelines

    def indices(b):
        chosen = np.random.default_rng([seed, int(b)]).choice(n, batch_size, replace=False)
        return chosen[pipeline * share : (pipeline + 1) * share].astype(np.int64)

    lazy = isinstance(images, PreprocessedImages)
    table = None if lazy else tf.constant(images)

    def make(b):
        idx = tf.numpy_function(indices, [b], tf.int64, stateful=False)
        idx.set_shape([share])
        if lazy:
            x = tf.numpy_function(lambda i: images[i], [idx], tf.float32, stateful=False)
            x.set_shape([share, *images.shape[1:]])
        else:
            x = tf.gather(table, idx)
        key = tf.stack([tf.constant(~seed, tf.int64), b])
        if photo is not None:
            x = photo_augment(x, tf.random.experimental.stateless_fold_in(key, _PHOTO_STREAM), photo, dataset.preprocessing)
        if augment:
            x = random_affine(x, key, **augment)
        return x, tf.gather(labels, idx)

    ds = tf.data.Dataset.counter(start).map(make, num_parallel_calls=tf.data.AUTOTUNE)
    if batch != share:  # several replicas per pipeline: each gets its own slice, batched
        ds = ds.unbatch().batch(batch, drop_remainder=True)
    return ds.prefetch(tf.data.AUTOTUNE)


def random_affine(images: tf.Tensor, seed: tf.Tensor, max_shift: float = 0.0, max_rotation: float = 0.0,
                  max_scale: float = 0.0, max_shear: float = 0.0) -> tf.Tensor:
    """Applies an independent random affine map to each image of `(n, H, W, C)`: translation up to
    `max_shift` pixels, rotation up to `max_rotation` degrees, scaling by up to +/-`max_scale` and
    shear up to `max_shear` radians, about the centre; uncovered pixels become 0 (the background
    after preprocessing). One vectorised `ImageProjectiveTransformV3` call, as Keras' random layers use."""
    n = tf.shape(images)[0]
    h, w = images.shape[1], images.shape[2]
    u = tf.random.stateless_uniform([n, 5], seed, -1.0, 1.0)
    theta = u[:, 0] * (max_rotation * np.pi / 180.0)
    scale = 1.0 + u[:, 1] * max_scale
    shear = u[:, 2] * max_shear
    tx, ty = u[:, 3] * max_shift, u[:, 4] * max_shift
    cos, sin = tf.cos(theta) / scale, tf.sin(theta) / scale
    # Output pixel (x, y) samples input M @ ((x, y) - c) + c + t, with M = rotation . shear / scale.
    m00, m01 = cos, -sin + cos * tf.tan(shear)
    m10, m11 = sin, cos + sin * tf.tan(shear)
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    a2 = cx - m00 * cx - m01 * cy + tx
    b2 = cy - m10 * cx - m11 * cy + ty
    zeros = tf.zeros_like(m00)
    transforms = tf.stack([m00, m01, a2, m10, m11, b2, zeros, zeros], axis=1)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=tf.constant([h, w]), fill_value=0.0,
        interpolation="BILINEAR", fill_mode="CONSTANT")


def photo_augment(images: tf.Tensor, seed: tf.Tensor, params: PhotoAugment = PhotoAugment(),
                  preprocessing: Preprocessing | None = None) -> tf.Tensor:
    """`params`' crop, flip and colour jitter (see `PhotoAugment`) of each image of `(n, H, W, C)`, drawn from
    `seed` (stateless: the same seed, the same images). Images normalized by `preprocessing` (its `mean` and
    `std`) are jittered in [0, 1] and normalized again, so the jitter means the same for every normalization."""
    n = tf.shape(images)[0]
    h, w, c = images.shape[1], images.shape[2], images.shape[3]
    u = tf.random.stateless_uniform([n, 8], seed, 0.0, 1.0)
    # Random resized crop: area fraction a and aspect r (log-uniform) give the box's height and width as
    # fractions of the image's; the box is placed uniformly inside it. A flip swaps the box's x ends, which
    # crop_and_resize reads as a mirrored crop.
    area = params.area[0] + u[:, 0] * (params.area[1] - params.area[0])
    ratio = tf.exp(np.log(params.ratio[0]) + u[:, 1] * (np.log(params.ratio[1]) - np.log(params.ratio[0])))
    box_h = tf.minimum(1.0, tf.sqrt(area / ratio * (w / h)))
    box_w = tf.minimum(1.0, tf.sqrt(area * ratio * (h / w)))
    y0, x0 = u[:, 2] * (1.0 - box_h), u[:, 3] * (1.0 - box_w)
    x_start, x_end = x0, x0 + box_w
    flipped = u[:, 4] < params.flip
    boxes = tf.stack([y0, tf.where(flipped, x_end, x_start), y0 + box_h, tf.where(flipped, x_start, x_end)], axis=1)
    x = images
    normalized = preprocessing is not None and preprocessing.mean is not None
    if normalized:
        mean, std = tf.constant(preprocessing.mean, tf.float32), tf.constant(preprocessing.std, tf.float32)
        x = x * std + mean
    x = tf.image.crop_and_resize(x, boxes, tf.range(n), [h, w], method="bilinear")

    def factor(i: int, strength: float) -> tf.Tensor:  # per image, broadcast over (H, W, C)
        return tf.reshape(1.0 - strength + 2.0 * strength * u[:, i], [-1, 1, 1, 1])

    if params.brightness:
        x = tf.clip_by_value(x * factor(5, params.brightness), 0.0, 1.0)
    luma = tf.constant([0.299, 0.587, 0.114], tf.float32)
    if params.contrast:
        gray = tf.reduce_sum(x * luma, axis=-1, keepdims=True) if c == 3 else x
        centre = tf.reduce_mean(gray, axis=[1, 2, 3], keepdims=True)
        x = tf.clip_by_value(centre + (x - centre) * factor(6, params.contrast), 0.0, 1.0)
    if params.saturation and c == 3:
        gray = tf.reduce_sum(x * luma, axis=-1, keepdims=True)
        x = tf.clip_by_value(gray + (x - gray) * factor(7, params.saturation), 0.0, 1.0)
    if normalized:
        x = (x - mean) / std
    return x

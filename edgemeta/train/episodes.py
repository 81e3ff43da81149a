"""Seeded tf.data pipelines of N-way K-shot episodes drawn from an `ImageClassDataset`.

An episode is `(support, support_labels, query, query_labels)`: support is class-major (the K shots of
class 0, then of class 1, ...), labels are episode-local in [0, N). Episode `i` of a sampler depends
only on `(seed, i)` (stateless random ops), so two samplers with one seed yield the same episodes —
which is how the Keras model and the on-device runtime are compared on identical tasks.
"""

from __future__ import annotations

import numpy as np

from edgemeta.train.backend import tf
from edgemeta.data.dataset import ImageClassDataset


class EpisodeSampler:
    """Draws N-way K-shot Q-query episodes; `within_group=True` keeps each episode inside one group
    (Omniglot: one alphabet, as in Lake et al.'s one-shot protocol).

    Example:
        >>> sampler = EpisodeSampler(ds, n_way=5, k_shot=1, n_query=5, seed=0)  # doctest: +SKIP
        >>> model.fit(sampler.episodes(), steps_per_epoch=100)  # doctest: +SKIP
    """

    def __init__(
        self,
        dataset: ImageClassDataset,
        n_way: int,
        k_shot: int,
        n_query: int,
        within_group: bool = False,
        seed: int = 0,
    ) -> None:
        for name, value in (("n_way", n_way), ("k_shot", k_shot), ("n_query", n_query)):
            if int(value) < 1:
                raise ValueError(f"{name} must be at least 1. Received: {value}")
        counts = np.bincount(dataset.labels, minlength=dataset.num_classes)
        need = k_shot + n_query
        if counts.min() < need:
            worst = int(np.argmin(counts))
            raise ValueError(
                f"Every class needs k_shot + n_query = {need} images. Received: class "
                f"{dataset.class_names[worst]!r} has {counts[worst]}."
            )
        group_names = sorted(set(dataset.groups))
        group_of_class = np.array([group_names.index(g) for g in dataset.groups], np.int32)
        classes_per_group = np.bincount(group_of_class, minlength=len(group_names))
        eligible = np.flatnonzero(classes_per_group >= n_way).astype(np.int32)
        if within_group and len(eligible) == 0:
            raise ValueError(
                f"within_group needs a group with at least n_way={n_way} classes. Received: groups with at most "
                f"{classes_per_group.max()} classes."
            )
        if n_way > dataset.num_classes:
            raise ValueError(f"n_way={n_way} exceeds the dataset's {dataset.num_classes} classes.")
        self.dataset = dataset
        self.n_way, self.k_shot, self.n_query = int(n_way), int(k_shot), int(n_query)
        self.within_group, self.seed = bool(within_group), int(seed)
        table = np.full((dataset.num_classes, counts.max()), -1, np.int32)
        for c in range(dataset.num_classes):
            members = np.flatnonzero(dataset.labels == c)
            table[c, : len(members)] = members
        self._table = tf.constant(table)
        self._group_of_class = tf.constant(group_of_class)
        self._eligible_groups = tf.constant(eligible)

    def _sample(self, index: tf.Tensor):
        seeds = tf.random.experimental.stateless_split(tf.stack([tf.constant(self.seed, tf.int64), index]), 3)
        num_classes = tf.shape(self._table)[0]
        u = tf.random.stateless_uniform([num_classes], seeds[0])
        if self.within_group:
            pick = tf.random.stateless_uniform([], seeds[1], 0, tf.size(self._eligible_groups), tf.int32)
            u = tf.where(self._group_of_class == self._eligible_groups[pick], u, 2.0)
        classes = tf.argsort(u)[: self.n_way]
        rows = tf.gather(self._table, classes)
        v = tf.random.stateless_uniform(tf.shape(rows), seeds[2])
        order = tf.argsort(tf.where(rows >= 0, v, 2.0), axis=1)[:, : self.k_shot + self.n_query]
        chosen = tf.gather(rows, order, batch_dims=1)
        support = tf.reshape(chosen[:, : self.k_shot], [-1])
        query = tf.reshape(chosen[:, self.k_shot :], [-1])
        support_labels = tf.repeat(tf.range(self.n_way), self.k_shot)
        query_labels = tf.repeat(tf.range(self.n_way), self.n_query)
        return support, support_labels, query, query_labels

    def indices(self, start: int = 0) -> tf.data.Dataset:
        """Infinite dataset of `(support_idx, support_labels, query_idx, query_labels)` into the dataset."""
        return tf.data.Dataset.counter(start).map(self._sample, num_parallel_calls=tf.data.AUTOTUNE)

    def episodes(self, episodes_per_batch: int = 1, start: int = 0, input_context: tf.distribute.InputContext | None = None,
                 **augment: float) -> tf.data.Dataset:
        """Infinite dataset of `((support, support_labels, query), query_labels)` batches, ready for
        `fit`/`evaluate`. `augment` (`max_shift`, `max_rotation`, `max_scale`, `max_shear`) applies
        `random_affine` to every image (training augmentation).

        Step `s` is made of episodes `start + s * episodes_per_batch + [0, episodes_per_batch)`. With a
        `tf.distribute.InputContext` (from `distribute_datasets_from_function`) this input pipeline
        assembles only its own share of each step's global batch, batched per replica: replica r of
        the run gets the r-th slice of whole episodes, so any number of workers and devices train on
        exactly the episodes one device would (and no worker assembles episodes it then discards)."""
        augment = {k: float(v) for k, v in augment.items() if v}
        images = tf.constant(self.dataset.images)
        seed = self.seed
        global_batch, batch, pipelines, pipeline = episodes_per_batch, episodes_per_batch, 1, 0
        if input_context is not None:
            batch = input_context.get_per_replica_batch_size(episodes_per_batch)  # raises unless divisible
            pipelines, pipeline = input_context.num_input_pipelines, input_context.input_pipeline_id
        share = global_batch // pipelines  # episodes this pipeline assembles per step

        def gather(index):
            support, support_labels, query, query_labels = self._sample(index)
            s, q = tf.gather(images, support), tf.gather(images, query)
            if augment:
                aug_seed = tf.random.experimental.stateless_split(tf.stack([tf.constant(~seed, tf.int64), index]), 2)
                s = random_affine(s, aug_seed[0], **augment)
                q = random_affine(q, aug_seed[1], **augment)
            return (s, support_labels, q), query_labels

        def episode_index(i):
            return start + (i // share) * global_batch + pipeline * share + i % share

        ds = tf.data.Dataset.counter().map(episode_index).map(gather, num_parallel_calls=tf.data.AUTOTUNE)
        return ds.batch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


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

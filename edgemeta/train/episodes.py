"""tf.data pipelines of N-way K-shot episodes for Keras: the numpy `EpisodeIndices` gathered into images.

An episode is `(support, support_labels, query, query_labels)`: support is class-major (the K shots of
class 0, then of class 1, ...), labels are episode-local in [0, N). Episode `i` of a sampler depends
only on `(seed, i)` (`edgemeta.data.episodes.EpisodeIndices`), so two samplers with one seed yield the
same episodes, and so does the TensorFlow-free bundle evaluation: the Keras model and the on-device
runtime are compared on identical tasks.
"""

from __future__ import annotations

import numpy as np

from edgemeta.data.episodes import EpisodeIndices
from edgemeta.train.backend import tf


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

"""Distillation of an embedding into a smaller or faster student that keeps the teacher's geometry on episodes."""

from __future__ import annotations

import os

from edgemeta.train.backend import keras, tf
from edgemeta.train.learners.base import register_learner
from edgemeta.train.learners.protonet import ProtoNet, squared_distances


def relative_distances(embeddings: tf.Tensor) -> tf.Tensor:
    """`(B, M, D)` -> `(B, M, M)` squared distances between all pairs, divided by their mean: comparable
    between embeddings of different width and scale."""
    d = squared_distances(embeddings, embeddings)
    return d / (tf.reduce_mean(d, axis=[1, 2], keepdims=True) + 1e-8)


@register_learner("distill")
class Distiller(ProtoNet):
    """Trains `backbone` (the student, what is exported) as a ProtoNet (`metric`, `scale` as ProtoNet's), plus a
    term that makes the student's pairwise distances over each episode's images match the frozen `teacher`'s
    (relational distillation, Park et al. 2019): nearest-prototype decisions on unseen classes depend on exactly
    those distances. With `metric="cosine"` both are compared as unit vectors.

    `teacher` is a Keras embedding model or a run directory (`edgemeta train`'s, whose `embedding.keras` is loaded:
    `edgemeta train --learner distill --option teacher=runs/photos`). The student may take smaller images than the
    teacher (a faster student at a lower resolution): the teacher then sees the episode's images resized to its
    input, bilinear. Both must take the same channels and normalization.

    Example:
        >>> net = Distiller(conv4(filters=32), teacher_backbone)  # doctest: +SKIP
        >>> fit_episodes(net, train_set, config)  # doctest: +SKIP
    """

    def __init__(self, backbone: keras.Model, teacher: keras.Model | str | os.PathLike | None = None,
                 geometry_weight: float = 1.0, metric: str = "squared_euclidean", scale: float = 10.0, **kwargs) -> None:
        super().__init__(backbone, metric=metric, scale=scale, **kwargs)
        if teacher is None:
            raise ValueError("Distiller needs a teacher: a Keras embedding model or a run directory. Received: None")
        if isinstance(teacher, (str, os.PathLike)):
            from edgemeta.train.training import load_run

            teacher, _ = load_run(teacher)
        student_shape, teacher_shape = tuple(backbone.input_shape[1:]), tuple(teacher.input_shape[1:])
        if student_shape[-1] != teacher_shape[-1]:
            raise ValueError(f"Student and teacher must take images of the same channels. Received: student input "
                             f"{student_shape}, teacher input {teacher_shape}")
        self.teacher = teacher
        self.teacher.trainable = False
        self.geometry_weight = float(geometry_weight)
        self._teacher_size = None if student_shape == teacher_shape else list(teacher_shape[:2])

    def call(self, inputs, training=None):
        support, support_labels, query = inputs
        support_labels = tf.cast(support_labels, tf.int32)
        support_emb, query_emb = self.embed_episode(self.backbone, support, query, training)
        if training and self.geometry_weight:
            if self._teacher_size is not None:
                support, query = self._for_teacher(support), self._for_teacher(query)
            teacher_support, teacher_query = self.embed_episode(self.teacher, support, query, False)
            student_all = tf.concat([support_emb, query_emb], 1)
            teacher_all = tf.concat([teacher_support, teacher_query], 1)
            if self.metric == "cosine":
                student_all, teacher_all = tf.math.l2_normalize(student_all, -1), tf.math.l2_normalize(teacher_all, -1)
            mismatch = relative_distances(student_all) - tf.stop_gradient(relative_distances(teacher_all))
            self.add_loss(self.geometry_weight * tf.reduce_mean(tf.square(mismatch)))
        return self.logits(support_emb, support_labels, query_emb)

    def _for_teacher(self, images):
        """`(B, M, H, W, C)` student-sized images resized to the teacher's input."""
        shape = tf.shape(images)
        flat = tf.reshape(images, tf.concat([[-1], shape[2:]], 0))
        resized = tf.image.resize(flat, self._teacher_size, method="bilinear")
        return tf.reshape(resized, tf.concat([shape[:2], tf.shape(resized)[1:]], 0))

"""Distillation of an embedding into a smaller student that keeps the teacher's geometry on episodes."""

from __future__ import annotations

from edgemeta.train.backend import keras, tf
from edgemeta.train.learners.base import Learner
from edgemeta.train.learners.protonet import prototypes, squared_distances


def relative_distances(embeddings: tf.Tensor) -> tf.Tensor:
    """`(B, M, D)` -> `(B, M, M)` squared distances between all pairs, divided by their mean: comparable
    between embeddings of different width and scale."""
    d = squared_distances(embeddings, embeddings)
    return d / (tf.reduce_mean(d, axis=[1, 2], keepdims=True) + 1e-8)


class Distiller(Learner):
    """Trains `student` (the exported backbone) as a ProtoNet, plus a term that makes the student's pairwise
    distances over each episode's images match the frozen `teacher`'s (relational distillation, Park et
    al. 2019): nearest-prototype decisions on unseen classes depend on exactly those distances.

    Example:
        >>> net = Distiller(conv4(filters=32), teacher_backbone)  # doctest: +SKIP
        >>> fit_episodes(net, train_set, config)  # doctest: +SKIP
    """

    def __init__(self, student: keras.Model, teacher: keras.Model, geometry_weight: float = 1.0, **kwargs) -> None:
        super().__init__(student, **kwargs)
        if tuple(student.input_shape[1:]) != tuple(teacher.input_shape[1:]):
            raise ValueError(f"Student and teacher must take the same images. Received: student input "
                             f"{student.input_shape[1:]}, teacher input {teacher.input_shape[1:]}")
        self.teacher = teacher
        self.teacher.trainable = False
        self.geometry_weight = geometry_weight

    def call(self, inputs, training=None):
        support, support_labels, query = inputs
        support_labels = tf.cast(support_labels, tf.int32)
        support_emb, query_emb = self.embed_episode(self.backbone, support, query, training)
        if training and self.geometry_weight:
            teacher_support, teacher_query = self.embed_episode(self.teacher, support, query, False)
            student_all = tf.concat([support_emb, query_emb], 1)
            teacher_all = tf.concat([teacher_support, teacher_query], 1)
            mismatch = relative_distances(student_all) - tf.stop_gradient(relative_distances(teacher_all))
            self.add_loss(self.geometry_weight * tf.reduce_mean(tf.square(mismatch)))
        return -squared_distances(query_emb, prototypes(support_emb, support_labels, self.way(support_labels)))

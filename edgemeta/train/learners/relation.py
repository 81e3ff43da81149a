"""Relation Networks (Sung et al., 2018): a learned relation module scores each (query, class) pair."""

from __future__ import annotations

from edgemeta.train.backend import keras, tf
from edgemeta.train.learners.base import Learner, register_learner
from edgemeta.train.learners.protonet import prototypes


def relation_mse(y_true, scores):
    """The paper's loss: mean squared error between sigmoid relation scores and the one-hot target."""
    n_way = tf.shape(scores)[-1]
    target = tf.one_hot(tf.cast(tf.reshape(y_true, tf.shape(scores)[:-1]), tf.int32), n_way)
    return tf.reduce_mean(tf.square(tf.sigmoid(scores) - target), axis=-1)


@register_learner("relation")
class RelationNet(Learner):
    """Relation score r(x, n) = sigmoid(g([f(x), c_n])) for query embedding f(x) and class embedding
    c_n (the mean of the class's support embeddings; the paper sums feature maps, a mean keeps the
    scale independent of K). Logits are the pre-sigmoid scores, so argmax and `evaluate` work as for
    any learner; the training loss is the paper's MSE.

    The paper's relation module is two conv blocks over 5x5 feature maps; Conv-4 on 28x28 pools to
    1x1 maps, where those convolutions reduce to this MLP (`hidden` units, ReLU, one output).
    """

    def __init__(self, backbone: keras.Model, hidden: int = 64, **kwargs) -> None:
        super().__init__(backbone, **kwargs)
        self.relation = keras.Sequential([keras.layers.Dense(hidden, activation="relu"), keras.layers.Dense(1)], name="relation")

    def episode_loss(self):
        return relation_mse

    def call(self, inputs, training=None):
        support, support_labels, query = inputs
        support_labels = tf.cast(support_labels, tf.int32)
        support_emb, query_emb = self.embed_episode(self.backbone, support, query, training)
        classes = prototypes(support_emb, support_labels, self.way(support_labels))  # (B, N, D)
        n_query, n_way = tf.shape(query_emb)[1], tf.shape(classes)[1]
        pairs = tf.concat([tf.repeat(query_emb[:, :, None], n_way, axis=2),
                           tf.repeat(classes[:, None], n_query, axis=1)], -1)  # (B, M, N, 2D)
        return self.relation(pairs)[..., 0]

"""Prototypical Networks (Snell et al., 2017) as a Keras model trained with plain `fit` on episodes."""

from __future__ import annotations

from edgemeta.backend import keras, tf


def prototypes(embeddings: tf.Tensor, labels: tf.Tensor, n_way: tf.Tensor) -> tf.Tensor:
    """Mean embedding per class: `(B, S, D)`, labels `(B, S)` -> `(B, N, D)`."""
    one_hot = tf.one_hot(labels, n_way, dtype=embeddings.dtype)
    sums = tf.einsum("bsn,bsd->bnd", one_hot, embeddings)
    return sums / tf.reduce_sum(one_hot, axis=1)[..., None]


def squared_distances(queries: tf.Tensor, protos: tf.Tensor) -> tf.Tensor:
    """`(B, Q, D)` x `(B, N, D)` -> `(B, Q, N)` squared Euclidean distances."""
    qq = tf.reduce_sum(tf.square(queries), -1)[..., None]
    pp = tf.reduce_sum(tf.square(protos), -1)[:, None, :]
    return tf.maximum(qq - 2.0 * tf.einsum("bqd,bnd->bqn", queries, protos) + pp, 0.0)


@keras.saving.register_keras_serializable(package="edgemeta")
class ProtoNet(keras.Model):
    """Embeds support and query, averages support embeddings into class prototypes, and returns
    logits = negative squared distances of each query to each prototype.

    Inputs are batches of episodes `(support (B, N*K, H, W, C), support_labels (B, N*K), query
    (B, M, H, W, C))`; targets are query labels `(B, M)`. So training is stock Keras:

    >>> net = ProtoNet(conv4())  # doctest: +SKIP
    >>> net.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), ["accuracy"])  # doctest: +SKIP
    >>> net.fit(EpisodeSampler(ds, 5, 1, 5).episodes(), steps_per_epoch=100, epochs=10)  # doctest: +SKIP

    The way N is read from the labels at run time, so one model serves 5-way and 20-way episodes;
    that dynamic shape keeps XLA out (`jit_compile=False`), which on CPU is also the faster choice:
    `benchmarks/jit_compile.py` measured XLA 3.9x slower for a Conv-4 step on 2 cores.
    """

    metric = "squared_euclidean"

    def __init__(self, backbone: keras.Model, **kwargs) -> None:
        super().__init__(**kwargs)
        self.backbone = backbone

    def call(self, inputs, training=None):
        support, support_labels, query = inputs
        support_labels = tf.cast(support_labels, tf.int32)  # numpy callers pass int64
        batch, n_support, n_query = tf.shape(support)[0], tf.shape(support)[1], tf.shape(query)[1]
        image_shape = tf.shape(support)[2:]
        # One backbone pass over support and query together (one set of BatchNorm batch statistics).
        images = tf.concat([tf.reshape(support, tf.concat([[-1], image_shape], 0)),
                            tf.reshape(query, tf.concat([[-1], image_shape], 0))], 0)
        embeddings = self.backbone(images, training=training)
        dim = tf.shape(embeddings)[-1]
        support_emb = tf.reshape(embeddings[: batch * n_support], [batch, n_support, dim])
        query_emb = tf.reshape(embeddings[batch * n_support :], [batch, n_query, dim])
        n_way = tf.reduce_max(support_labels) + 1
        return -squared_distances(query_emb, prototypes(support_emb, support_labels, n_way))

    def get_config(self):
        return {**super().get_config(), "backbone": keras.saving.serialize_keras_object(self.backbone)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        backbone = keras.saving.deserialize_keras_object(config.pop("backbone"))
        return cls(backbone, **config)

"""Prototypical Networks (Snell et al., 2017): class prototypes are mean support embeddings."""

from __future__ import annotations

from edgemeta.train.backend import tf
from edgemeta.train.learners.base import Learner, register_learner


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


@register_learner("protonet")
class ProtoNet(Learner):
    """Logits are negative squared distances of each query to each class prototype.

    Training is stock Keras on episodes:

    >>> net = ProtoNet(conv4())  # doctest: +SKIP
    >>> net.compile("adam", net.episode_loss(), ["accuracy"])  # doctest: +SKIP
    >>> net.fit(EpisodeSampler(ds, 5, 1, 5).episodes(), steps_per_epoch=100, epochs=10)  # doctest: +SKIP

    The way N is read from the labels at run time, so one model serves 5-way and 20-way episodes;
    that dynamic shape keeps XLA out, which on CPU is also the faster choice (`benchmarks/jit_compile.py`).

    `metric="cosine"` compares unit-length embeddings (the prototype of unit vectors, as the runtime builds it
    for a cosine bundle), with logits `-scale x squared distance`: pretrained photo backbones, whose features'
    norms vary from image to image, train and classify better so (docs/photos.md). `scale` is the softmax's
    inverse temperature; unit vectors' distances lie in [0, 4], so without it the loss barely moves.
    """

    def __init__(self, backbone, metric: str = "squared_euclidean", scale: float = 10.0, **kwargs) -> None:
        super().__init__(backbone, **kwargs)
        if metric not in ("squared_euclidean", "cosine"):
            raise ValueError(f"metric must be 'squared_euclidean' or 'cosine'. Received: {metric!r}")
        if not scale > 0:
            raise ValueError(f"scale must be positive. Received: {scale!r}")
        self.metric, self.scale = metric, float(scale)

    def call(self, inputs, training=None):
        support, support_labels, query = inputs
        support_labels = tf.cast(support_labels, tf.int32)  # numpy callers pass int64
        support_emb, query_emb = self.embed_episode(self.backbone, support, query, training)
        return self.logits(support_emb, support_labels, query_emb)

    def logits(self, support_emb, support_labels, query_emb):
        """Query logits `(B, M, N)` from embedded support `(B, S, D)` (labels `(B, S)`) and queries `(B, M, D)`."""
        if self.metric == "cosine":
            support_emb, query_emb = tf.math.l2_normalize(support_emb, -1), tf.math.l2_normalize(query_emb, -1)
            protos = tf.math.l2_normalize(prototypes(support_emb, support_labels, self.way(support_labels)), -1)
            return -self.scale * squared_distances(query_emb, protos)
        return -squared_distances(query_emb, prototypes(support_emb, support_labels, self.way(support_labels)))

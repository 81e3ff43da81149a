"""Matching Networks (Vinyals et al., 2016): cosine attention over the support set, optional full-context embeddings."""

from __future__ import annotations

from edgemeta.train.backend import keras, tf
from edgemeta.train.learners.base import Learner, register_learner


def cosine_similarities(queries: tf.Tensor, support: tf.Tensor) -> tf.Tensor:
    """`(B, M, D)` x `(B, S, D)` -> `(B, M, S)` cosine similarities."""
    return tf.einsum("bmd,bsd->bms", tf.math.l2_normalize(queries, -1), tf.math.l2_normalize(support, -1))


@register_learner("matching")
class MatchingNet(Learner):
    """P(y | x) = sum over support items of softmax(scale * cos(f(x), g(x_i))) * onehot(y_i); the logits
    returned are log P (so cross-entropy `from_logits` is exactly the paper's loss).

    `scale` is a learned inverse temperature (initialised to `scale`): with the paper's raw cosines in
    [-1, 1] the attention is nearly uniform and training crawls. With `fce=True` the support is
    re-embedded by a bidirectional LSTM (g) and each query by an attention LSTM over the support run
    for `fce_steps` (f), as in the paper. FCE depends on the whole support set, so the board, which
    embeds one image at a time, uses the backbone alone; the benchmark reports what that costs.
    The runtime compares prototypes by cosine (`metric = "cosine"`), the geometry this learner trains.
    """

    metric = "cosine"

    def __init__(self, backbone: keras.Model, scale: float = 10.0, fce: bool = False, fce_steps: int = 3, **kwargs) -> None:
        super().__init__(backbone, **kwargs)
        if fce_steps < 1:
            raise ValueError(f"fce_steps must be >= 1. Received: {fce_steps}")
        self.fce, self.fce_steps = fce, fce_steps
        self.log_scale = self.add_weight(name="log_scale", shape=(),
                                         initializer=keras.initializers.Constant(tf.math.log(float(scale))))
        if fce:
            dim = self.embedding_dim
            self.support_lstm = keras.layers.Bidirectional(keras.layers.LSTM(dim, return_sequences=True), merge_mode="sum")
            self.query_cell = keras.layers.LSTMCell(dim)

    def call(self, inputs, training=None):
        support, support_labels, query = inputs
        support_labels = tf.cast(support_labels, tf.int32)
        support_emb, query_emb = self.embed_episode(self.backbone, support, query, training)
        if self.fce:
            support_emb, query_emb = self._full_context(support_emb, query_emb)
        attention = tf.exp(self.log_scale) * cosine_similarities(query_emb, support_emb)  # (B, M, S)
        one_hot = tf.one_hot(support_labels, self.way(support_labels), dtype=attention.dtype)  # (B, S, N)
        # log sum_{i in class n} softmax(attention)_i, computed stably: logsumexp over the class's items.
        masked = attention[..., None] + tf.math.log(one_hot)[:, None]  # (B, M, S, N), -inf off-class
        return tf.reduce_logsumexp(masked, axis=2) - tf.reduce_logsumexp(attention, axis=2)[..., None]

    def _full_context(self, support_emb, query_emb):
        support_emb = support_emb + self.support_lstm(support_emb)  # g: skip connection + BiLSTM
        batch, n_query, dim = tf.shape(query_emb)[0], tf.shape(query_emb)[1], tf.shape(query_emb)[2]
        flat = tf.reshape(query_emb, [-1, dim])
        h, c = tf.zeros_like(flat), tf.zeros_like(flat)
        hidden = flat
        for _ in range(self.fce_steps):  # f: attention LSTM over the support, K read steps
            h3 = tf.reshape(hidden, [batch, n_query, dim])
            read = tf.einsum("bms,bsd->bmd", tf.nn.softmax(tf.einsum("bmd,bsd->bms", h3, support_emb)), support_emb)
            h, (_, c) = self.query_cell(tf.concat([flat, tf.reshape(read, [-1, dim])], -1), [hidden, c])
            hidden = h + flat
        return support_emb, tf.reshape(hidden, [batch, n_query, dim])

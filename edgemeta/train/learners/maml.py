"""MAML (Finn et al., 2017) with true second-order meta-gradients; FOMAML is its `first_order` flag."""

from __future__ import annotations

from edgemeta.train.backend import keras, tf
from edgemeta.train.learners.base import Learner, register_learner
from edgemeta.train.learners.functional import calibrate_batchnorm, check_backbone, forward
from edgemeta.train.learners.protonet import prototypes


@register_learner("fomaml", first_order=True)
@register_learner("maml")
class MAML(Learner):
    """Adapts the whole network to each task's support set with `inner_steps` SGD steps
    (`eval_inner_steps` at evaluation, by default the same), then returns the adapted network's query logits.

    - **Second order.** The inner loop runs on a *functional* copy of the backbone
      (`functional.forward`) under its own `GradientTape`, nested inside the one `fit` records with,
      so the meta-gradient flows through the inner gradients (Hessian-vector products included).
      `first_order=True` (registered as `fomaml`) stops the gradient at the inner gradients.
    - **BatchNorm** uses each batch's statistics at training *and* test time (the MAML paper's
      transductive setting). The exported embedding model needs moving statistics, so
      `finish_training` computes them from the training images with the meta-learned weights.
    - **Head.** `head_init="meta"`: the classifier is initialised for every task by replicating one
      meta-learned weight vector and bias across the N classes (as in "UnicornMAML", Ye & Chao 2022).
      It is permutation invariant, and one model serves any way N; the inner loop makes the class rows
      differ. `head_init="prototypes"` is Proto-MAML (Triantafillou et al., 2020): row k starts as
      `2 c_k`, bias `-|c_k|^2`, with c_k the mean support embedding of class k, i.e. exactly the
      nearest-prototype classifier the board runs; the inner loop refines it, and the meta-gradient
      also flows through the prototypes (first order included).

    Memory: second order keeps every inner step's activations and their gradients alive for the
    outer backward pass, so memory grows with `inner_steps` and is about 2-3x first order; on small
    hosts use `fomaml` (see docs/learners.md for the measured figures).
    """

    def __init__(self, backbone: keras.Model, inner_steps: int = 1, eval_inner_steps: int | None = None, inner_lr: float = 0.4,
                 first_order: bool = False, head_init: str = "meta", adapt: str = "all", **kwargs) -> None:
        super().__init__(backbone, **kwargs)
        check_backbone(backbone)
        eval_inner_steps = inner_steps if eval_inner_steps is None else eval_inner_steps
        if inner_steps < 1 or eval_inner_steps < 1:
            raise ValueError(f"inner_steps and eval_inner_steps must be >= 1. Received: {inner_steps}, {eval_inner_steps}")
        if adapt not in ("all", "head"):
            raise ValueError(f"adapt must be 'all' (MAML) or 'head' (ANIL). Received: {adapt!r}")
        if head_init not in ("meta", "prototypes"):
            raise ValueError("head_init must be 'meta' (a meta-learned head) or 'prototypes' (Proto-MAML). "
                             f"Received: {head_init!r}")
        self.inner_steps, self.eval_inner_steps, self.inner_lr = inner_steps, eval_inner_steps, inner_lr
        self.first_order, self.adapt, self.head_init = first_order, adapt, head_init
        if head_init == "meta":  # with prototypes the head comes from the support set: nothing to meta-learn
            self.head_kernel = self.add_weight(name="head_kernel", shape=(self.embedding_dim,), initializer="zeros")
            self.head_bias = self.add_weight(name="head_bias", shape=(), initializer="zeros")

    # -- the pieces subclasses vary ------------------------------------------------------------
    def step_sizes(self, params: list) -> list:
        """Inner learning rate per adapted parameter (Meta-SGD learns these)."""
        return [self.inner_lr] * len(params)

    # -- inner loop ----------------------------------------------------------------------------
    def _logits(self, body, head, images, features=None):
        if features is None:
            features = forward(self.backbone, body, images)
        return tf.matmul(features, head[0]) + head[1]

    def adapt_to(self, support, support_labels, n_way, steps: int, first_order: bool, prototype_count: int | None = None):
        """Runs the inner loop on one task; returns `(body_weights, head_weights, support_features)`.
        `support_features` is set when only the head adapts (ANIL): the body is then fixed, so support
        features are computed once. A prototype head is built from the first `prototype_count` support
        items (default: all of them)."""
        body = list(self.backbone.trainable_weights)
        features = forward(self.backbone, body, support) if self.adapt == "head" else None
        if self.head_init == "prototypes":
            count = prototype_count or support.shape[0]
            # Embedded with the whole adaptation batch, so BatchNorm's batch statistics match the inner loop's.
            seen = (features if features is not None else forward(self.backbone, body, support))[:count]
            centres = prototypes(seen[None], support_labels[None, :count], n_way)[0]
            head = [2.0 * tf.transpose(centres), -tf.reduce_sum(tf.square(centres), -1)]
        else:
            head = [tf.tile(self.head_kernel[:, None], [1, n_way]), tf.tile(self.head_bias[None], [n_way])]
        sizes = self.step_sizes(body + head)
        for _ in range(steps):
            params = head if self.adapt == "head" else body + head
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(params)
                logits = self._logits(body, head, support, features)
                loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(support_labels, logits))
            grads = tape.gradient(loss, params)
            if first_order:
                grads = [tf.stop_gradient(g) for g in grads]
            step = sizes[-len(params) :]
            updated = [p - a * g for p, a, g in zip(params, step, grads)]
            if self.adapt == "head":
                head = updated
            else:
                body, head = updated[: len(body)], updated[len(body) :]
        return body, head, features

    def call(self, inputs, training=None):
        support, support_labels, query = inputs
        support_labels = tf.cast(support_labels, tf.int32)
        steps = self.inner_steps if training else self.eval_inner_steps
        first_order = self.first_order or not training
        logits = []
        # Tasks are adapted one at a time; the batch of episodes is static in `fit`, so this unrolls.
        for b in range(self.static_batch(support)):
            n_way = tf.reduce_max(support_labels[b]) + 1
            body, head, _ = self.adapt_to(support[b], support_labels[b], n_way, steps, first_order)
            logits.append(self._logits(body, head, query[b]))
        return tf.stack(logits)

    @staticmethod
    def static_batch(support) -> int:
        if support.shape[0] is None:
            raise ValueError("Gradient-based learners adapt each episode of a batch separately and need a static "
                             "number of episodes per batch: batch with drop_remainder=True (EpisodeSampler.episodes "
                             f"does). Received: support of shape {support.shape}")
        return int(support.shape[0])

    def finish_training(self, images) -> None:
        calibrate_batchnorm(self.backbone, images)

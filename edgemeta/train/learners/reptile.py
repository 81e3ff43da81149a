"""Reptile (Nichol et al., 2018): move the initialisation towards the weights each task's SGD reaches."""

from __future__ import annotations

from edgemeta.train.backend import keras, tf
from edgemeta.train.learners.base import register_learner
from edgemeta.train.learners.maml import MAML


@register_learner("reptile")
class Reptile(MAML):
    """Per task, `inner_steps` SGD steps on the task's data (support and query together, as in the
    paper) from the current initialisation theta give phi; the meta-"gradient" handed to the
    optimizer is the mean of (theta - phi) over the batch of tasks, so `SGD(epsilon)` is exactly the
    paper's update theta += epsilon * mean(phi - theta). No second-order terms, no outer tape.

    At evaluation it adapts like MAML: `eval_inner_steps` steps on the support set, transductive
    BatchNorm. The replicated head's meta-update uses the mean over classes of its adapted rows; with
    `head_init="prototypes"` the head is rebuilt from each task's prototypes and only the body moves.
    """

    def __init__(self, backbone: keras.Model, inner_steps: int = 5, eval_inner_steps: int = 10, inner_lr: float = 0.1,
                 head_init: str = "meta", **kwargs) -> None:
        super().__init__(backbone, inner_steps, eval_inner_steps, inner_lr, first_order=True, head_init=head_init, **kwargs)

    def make_optimizer(self, learning_rate):
        return keras.optimizers.SGD(learning_rate)

    def train_step(self, data):
        (support, support_labels, query), query_labels = data
        support_labels, query_labels = tf.cast(support_labels, tf.int32), tf.cast(query_labels, tf.int32)
        meta_head = self.head_init == "meta"  # with prototypes the head is rebuilt per task: only the body is meta-learned
        variables = list(self.backbone.trainable_weights) + ([self.head_kernel, self.head_bias] if meta_head else [])
        deltas = [tf.zeros_like(v) for v in variables]
        logits = []
        for b in range(self.static_batch(support)):
            n_way = tf.reduce_max(support_labels[b]) + 1
            images = tf.concat([support[b], query[b]], 0)
            labels = tf.concat([support_labels[b], query_labels[b]], 0)
            # A prototype head comes from the support part only: prototypes of the very images the inner
            # loop then fits would classify them almost perfectly and leave no signal to learn from.
            body, head, _ = self.adapt_to(images, labels, n_way, self.inner_steps, first_order=True,
                                          prototype_count=support.shape[1])
            # Progress metrics: query logits of phi, i.e. accuracy on tasks it has just trained on.
            logits.append(self._logits(body, head, query[b]))
            phi = body + ([tf.reduce_mean(head[0], 1), tf.reduce_mean(head[1])] if meta_head else [])
            deltas = [d + (v - p) for d, v, p in zip(deltas, variables, phi)]
        # apply_gradients sums over tf.distribute replicas: divide by all tasks of the global batch, so the
        # update is the mean over every replica's tasks, whatever the replica count.
        n_tasks = float(self.static_batch(support) * tf.distribute.get_strategy().num_replicas_in_sync)
        # The deltas are weight differences, not gradients of a loss: a float16 run's loss scaling does not apply.
        optimizer = getattr(self.optimizer, "inner_optimizer", self.optimizer)
        optimizer.apply_gradients(zip([d / n_tasks for d in deltas], variables))
        logits = tf.stack(logits)
        self.compute_loss((support, support_labels, query), query_labels, logits)
        return self.compute_metrics((support, support_labels, query), query_labels, logits, None)

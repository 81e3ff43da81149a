"""Pretraining by classification: a cosine classifier over every training class, whose backbone the board uses by prototypes."""

from __future__ import annotations

from edgemeta.train.backend import keras, tf
from edgemeta.train.learners.base import register_learner
from edgemeta.train.learners.protonet import ProtoNet


@register_learner("classifier")
class Classifier(ProtoNet):
    """Trains the backbone to classify labelled batches of all `num_classes` training classes with a cosine
    classifier (logits `scale x cos(embedding, class weight)`: Chen et al. 2019's "Baseline++"), the
    pretraining the field's simple baselines use (Tian et al. 2020, Wang et al. 2019). Every step sees
    `batch_size` images of any classes, so on a CPU it learns a from-scratch embedding in far fewer image
    passes than episodes do; the board then classifies new classes by cosine prototypes over that embedding.

    On episodes (evaluation, `call`) it is the cosine ProtoNet it inherits. `train` sets `num_classes` from the data.

    Example:
        >>> net = Classifier(conv4((84, 84, 3)), num_classes=64)  # doctest: +SKIP
        >>> net.fit(labelled_batches(train_set, 128), steps_per_epoch=150, epochs=20)  # doctest: +SKIP
    """

    trains_on = "batches"  # fit_episodes feeds it (images, labels) batches instead of episodes

    def __init__(self, backbone: keras.Model, num_classes: int = 0, scale: float = 10.0, **kwargs) -> None:
        super().__init__(backbone, metric="cosine", scale=scale, **kwargs)
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int of at least 2 (the training classes). Received: {num_classes!r}")
        self.num_classes = num_classes
        self.class_weights = self.add_weight(name="class_weights", shape=(num_classes, self.embedding_dim),
                                             initializer="glorot_uniform")

    def classify(self, images, training=None):
        """`(n, H, W, C)` -> `(n, num_classes)` logits: `scale` times each image's cosine to each class."""
        embeddings = tf.cast(self.backbone(images, training=training), tf.float32)
        return self.scale * tf.matmul(tf.math.l2_normalize(embeddings, -1),
                                      tf.math.l2_normalize(self.class_weights, -1), transpose_b=True)

    def train_step(self, data):
        images, labels = data
        with tf.GradientTape() as tape:
            logits = self.classify(images, training=True)
            loss = self.compute_loss(images, labels, logits)
        self.optimizer.minimize(loss, self.trainable_variables, tape=tape)
        return self.compute_metrics(images, labels, logits, None)

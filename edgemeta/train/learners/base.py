"""The learner interface every meta-learner implements, and the registry of learner names."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from edgemeta.train.backend import keras, tf

LEARNERS: dict[str, Callable[..., Learner]] = {}


def register_learner(name: str, **defaults: Any) -> Callable[[type], type]:
    """Class decorator: makes a learner buildable by `name` (CLI `--learner NAME`). `defaults` register a
    variant under that name (e.g. FOMAML is MAML with `first_order=True`)."""

    def decorate(cls: type) -> type:
        def build(backbone: keras.Model, **options: Any) -> Learner:
            return cls(backbone, **{**defaults, **options})

        build.learner_class, build.defaults = cls, defaults
        LEARNERS[name] = build
        return cls

    return decorate


def learner_options(name: str) -> dict[str, Any]:
    """The options learner `name` accepts, with their defaults (its constructor's keyword arguments)."""
    build = _builder(name)
    params = inspect.signature(build.learner_class.__init__).parameters
    options = {k: p.default for k, p in params.items() if k not in ("self", "backbone") and p.kind == p.POSITIONAL_OR_KEYWORD}
    return {**options, **build.defaults}


def build_learner(name: str, backbone: keras.Model, **options: Any) -> Learner:
    """Builds learner `name` over `backbone`. Unknown names or options raise with what is accepted."""
    build = _builder(name)
    allowed = learner_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"Learner {name!r} has no option(s) {unknown}. Expected some of {sorted(allowed)}. Received: {options}")
    learner = build(backbone, **options)
    learner.learner_name = name
    return learner


def _builder(name: str):
    if name not in LEARNERS:
        raise ValueError(f"Unknown learner {name!r}. Expected one of {sorted(LEARNERS)}.")
    return LEARNERS[name]


class Learner(keras.Model):
    """A meta-learner over an embedding `backbone` (the part exported to the board).

    Contract, shared by every learner so training, evaluation, compression and export treat them alike:

    - `call((support, support_labels, query))` with support `(B, N*K, H, W, C)`, labels `(B, N*K)` and
      query `(B, M, H, W, C)` returns query logits `(B, M, N)` after the learner's *own* adaptation to
      the support set (prototypes, attention, relation scores or an inner loop), so `fit`/`evaluate`
      work on `EpisodeSampler.episodes()` unchanged.
    - `episode_loss()` is the loss `compile` gets (cross-entropy over logits unless the method says
      otherwise).
    - `backbone` is the embedding model exported to a bundle; on the board the adapter classifies by
      nearest prototype over it (`metric`).
    - `finish_training(images)` runs once after `fit` (e.g. to fix BatchNorm statistics of learners
      whose inner loop never updates them).
    """

    metric = "squared_euclidean"
    learner_name = "learner"

    def __init__(self, backbone: keras.Model, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.backbone = backbone

    @property
    def embedding_dim(self) -> int:
        return int(self.backbone.output_shape[-1])

    def episode_loss(self) -> keras.losses.Loss:
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def make_optimizer(self, learning_rate) -> keras.optimizers.Optimizer:
        return keras.optimizers.Adam(learning_rate)

    def finish_training(self, images) -> None:
        """Called once after meta-training with the (preprocessed) training images."""

    def build_from_episode(self, support_shape, n_way: int = 2) -> None:
        """Creates every variable by running one dummy episode (needed before `load_weights`)."""
        support = tf.zeros([1, n_way, *support_shape])
        self((support, tf.range(n_way)[None], support), training=False)

    @staticmethod
    def embed_episode(backbone, support, query, training=None):
        """One backbone pass over all support and query images: `(B, S, D)`, `(B, M, D)`."""
        batch, n_support, n_query = tf.shape(support)[0], tf.shape(support)[1], tf.shape(query)[1]
        image_shape = tf.shape(support)[2:]
        images = tf.concat([tf.reshape(support, tf.concat([[-1], image_shape], 0)),
                            tf.reshape(query, tf.concat([[-1], image_shape], 0))], 0)
        embeddings = backbone(images, training=training)
        if embeddings.dtype in (tf.float16, tf.bfloat16):  # mixed precision: distances and losses in float32
            embeddings = tf.cast(embeddings, tf.float32)
        dim = tf.shape(embeddings)[-1]
        return (tf.reshape(embeddings[: batch * n_support], [batch, n_support, dim]),
                tf.reshape(embeddings[batch * n_support :], [batch, n_query, dim]))

    @staticmethod
    def way(support_labels) -> tf.Tensor:
        return tf.reduce_max(support_labels) + 1

"""Few-shot evaluation of Keras models over many seeded episodes: mean accuracy with a 95 % confidence interval.

A sampler's seed gives the same episodes to the Keras model here and to the on-device runtime
(`edgemeta.runtime.evaluation`, TensorFlow-free), so their accuracies are compared on identical tasks.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from edgemeta.data.episodes import EpisodeIndices
from edgemeta.runtime.evaluation import EvalResult
from edgemeta.runtime.prototypes import class_prototypes, for_metric, squared_distances

if TYPE_CHECKING:
    from edgemeta.train.episodes import EpisodeSampler

__all__ = ["EvalResult", "evaluate_embedding", "evaluate_keras", "evaluate_learner", "nearest_prototype_accuracy"]


def nearest_prototype_accuracy(support: np.ndarray, support_labels: np.ndarray, query: np.ndarray, query_labels: np.ndarray,
                               metric: str = "squared_euclidean") -> float:
    """Fraction of queries whose nearest class prototype under `metric` is their own class (as the runtime
    adapter computes it)."""
    classes, protos = class_prototypes(support, support_labels, metric)
    return float(np.mean(classes[squared_distances(for_metric(query, metric), protos).argmin(1)] == query_labels))


def evaluate_embedding(
    embed: Callable[[np.ndarray], np.ndarray],
    sampler: EpisodeIndices,
    episodes: int = 600,
    metric: str = "squared_euclidean",
) -> EvalResult:
    """Evaluates an embedding function (preprocessed images -> embeddings) on `episodes` episodes.

    Every image of the dataset is embedded once (inference is per-image, so this equals embedding
    per episode) and episodes index into those embeddings.
    """
    embeddings = np.asarray(embed(sampler.dataset.images))
    accs = []
    for s_idx, s_lab, q_idx, q_lab in sampler.take(episodes):
        accs.append(nearest_prototype_accuracy(embeddings[s_idx], s_lab, embeddings[q_idx], q_lab, metric))
    return EvalResult.from_accuracies(accs, sampler.n_way, sampler.k_shot, sampler.n_query)


def evaluate_keras(backbone: Any, sampler: EpisodeIndices, episodes: int = 600, batch_size: int = 512,
                   metric: str = "squared_euclidean") -> EvalResult:
    """Evaluates a Keras embedding model (inference mode) by nearest prototype on the sampler's episodes:
    what the board's adapter does, in float."""
    return evaluate_embedding(lambda images: embed_once(backbone, images, batch_size), sampler, episodes, metric)


def embed_once(backbone: Any, images: Any, batch_size: int = 512) -> np.ndarray:
    """A Keras embedding model's (inference mode) embeddings of every image of a dataset; one preprocessed on read
    (`PreprocessedImages`) is read a batch at a time."""
    from edgemeta.data.dataset import map_in_batches

    return map_in_batches(lambda x: backbone.predict(x, batch_size=batch_size, verbose=0), images, batch_size)


def evaluate_learner(learner: Any, sampler: EpisodeSampler, episodes: int = 600) -> EvalResult:
    """Evaluates a learner with its *own* adaptation (inner loop, attention, relation module) on the
    sampler's episodes, one episode at a time (the same episodes `evaluate_keras` sees)."""
    from edgemeta.train.backend import tf

    predict = tf.function(lambda x: learner(x, training=False))  # one shape per sampler: traced once
    accs = []
    for x, y in sampler.episodes(1).take(episodes):
        accs.append(float(np.mean(np.argmax(predict(x).numpy(), -1) == y.numpy())))
    return EvalResult.from_accuracies(accs, sampler.n_way, sampler.k_shot, sampler.n_query)


def __getattr__(name: str) -> Any:
    # The TensorFlow-free bundle evaluation moved to the runtime in 0.2; the old names warn until 0.3.
    if name in ("evaluate_adapter", "evaluate_adapter_on_episodes"):
        warnings.warn(f"edgemeta.train.evaluation.{name} moved to edgemeta.runtime.evaluation.{name}; the old path "
                      "stops working in edgemeta 0.3.", DeprecationWarning, stacklevel=2)
        from edgemeta.runtime import evaluation

        return getattr(evaluation, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

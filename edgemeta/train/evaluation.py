"""Few-shot evaluation over many seeded episodes: mean accuracy with a 95 % confidence interval.

The same `EpisodeSampler` seed gives the same episodes to the Keras model and to the on-device
runtime, so their accuracies are compared on identical tasks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np


@dataclass(frozen=True)
class EvalResult:
    """Accuracy over `episodes` episodes: mean and 95 % confidence half-width (1.96 standard errors)."""

    accuracy: float
    ci95: float
    episodes: int
    n_way: int
    k_shot: int
    n_query: int
    per_episode: tuple[float, ...] = ()

    @classmethod
    def from_accuracies(cls, accuracies, n_way: int, k_shot: int, n_query: int) -> "EvalResult":
        a = np.asarray(accuracies, np.float64)
        ci = 1.96 * a.std(ddof=1) / np.sqrt(len(a)) if len(a) > 1 else float("nan")
        return cls(float(a.mean()), float(ci), len(a), n_way, k_shot, n_query, tuple(a.tolist()))

    def __str__(self) -> str:
        return (
            f"{self.n_way}-way {self.k_shot}-shot: {100 * self.accuracy:.2f} ± {100 * self.ci95:.2f} % "
            f"({self.episodes} episodes, {self.n_query} queries/class)"
        )

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("accuracy", "ci95", "episodes", "n_way", "k_shot", "n_query")}


def nearest_prototype_accuracy(support: np.ndarray, support_labels: np.ndarray, query: np.ndarray, query_labels: np.ndarray,
                               metric: str = "squared_euclidean") -> float:
    """Fraction of queries whose nearest class-mean under `metric` is their own class (as the runtime
    adapter computes it)."""
    from edgemeta.runtime.prototypes import for_metric, squared_distances

    support, query = for_metric(support, metric), for_metric(query, metric)
    classes = np.unique(support_labels)
    protos = for_metric(np.stack([support[support_labels == c].mean(0) for c in classes]), metric)
    return float(np.mean(classes[squared_distances(query, protos).argmin(1)] == query_labels))


def evaluate_embedding(
    embed: Callable[[np.ndarray], np.ndarray],
    sampler,
    episodes: int = 600,
    metric: str = "squared_euclidean",
) -> EvalResult:
    """Evaluates an embedding function (preprocessed images -> embeddings) on `episodes` episodes.

    Every image of the dataset is embedded once (inference is per-image, so this equals embedding
    per episode) and episodes index into those embeddings.
    """
    embeddings = np.asarray(embed(sampler.dataset.images))
    accs = []
    for s_idx, s_lab, q_idx, q_lab in sampler.indices().take(episodes).as_numpy_iterator():
        accs.append(nearest_prototype_accuracy(embeddings[s_idx], s_lab, embeddings[q_idx], q_lab, metric))
    return EvalResult.from_accuracies(accs, sampler.n_way, sampler.k_shot, sampler.n_query)


def evaluate_keras(backbone, sampler, episodes: int = 600, batch_size: int = 512, metric: str = "squared_euclidean") -> EvalResult:
    """Evaluates a Keras embedding model (inference mode) by nearest prototype on the sampler's episodes:
    what the board's adapter does, in float."""
    return evaluate_embedding(lambda x: backbone.predict(x, batch_size=batch_size, verbose=0), sampler, episodes, metric)


def evaluate_learner(learner, sampler, episodes: int = 600) -> EvalResult:
    """Evaluates a learner with its *own* adaptation (inner loop, attention, relation module) on the
    sampler's episodes, one episode at a time (the same episodes `evaluate_keras` sees)."""
    from edgemeta.train.backend import tf

    predict = tf.function(lambda x: learner(x, training=False))  # one shape per sampler: traced once
    accs = []
    for x, y in sampler.episodes(1).take(episodes):
        accs.append(float(np.mean(np.argmax(predict(x).numpy(), -1) == y.numpy())))
    return EvalResult.from_accuracies(accs, sampler.n_way, sampler.k_shot, sampler.n_query)


def evaluate_adapter(make_adapter: Callable[[], Any], sampler, episodes: int = 600) -> EvalResult:
    """Evaluates the on-device path on the sampler's episodes; see `evaluate_adapter_on_episodes`."""
    if sampler.dataset.raw is None:
        raise ValueError("evaluate_adapter needs a dataset with raw images (not one with added rotations).")
    indices = list(sampler.indices().take(episodes).as_numpy_iterator())
    return evaluate_adapter_on_episodes(make_adapter, sampler.dataset.raw, indices, sampler.n_way, sampler.k_shot, sampler.n_query)


def evaluate_adapter_on_episodes(make_adapter: Callable[[], Any], raw, episodes, n_way: int, k_shot: int,
                                 n_query: int) -> EvalResult:
    """For each episode `(support_idx, support_labels, query_idx, query_labels)` a fresh `FewShotAdapter`
    enrolls the support set's *raw* images (as a board would receive them) and classifies the raw query
    images. Closed-set accuracy: every query belongs to an enrolled class, so the nearest class counts
    even where the open-set threshold would answer "unknown" (that rate is `edgemeta.train.openset`'s measure).
    Needs no TensorFlow, so it can run where TensorFlow is absent."""
    accs = []
    for s_idx, s_lab, q_idx, q_lab in episodes:
        adapter = make_adapter()
        for c in np.unique(s_lab):
            adapter.enroll(str(c), [raw[i] for i in s_idx[s_lab == c]])
        predicted = [p.nearest for p in adapter.classify([raw[i] for i in q_idx])]
        accs.append(float(np.mean(np.array(predicted) == np.asarray(q_lab).astype(str))))
    return EvalResult.from_accuracies(accs, n_way, k_shot, n_query)

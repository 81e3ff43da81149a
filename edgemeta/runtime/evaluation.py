"""Few-shot accuracy of a bundle through the runtime, TensorFlow-free: seeded episodes, mean and 95 % interval.

The episodes come from `edgemeta.data.episodes.EpisodeIndices`, the description the Keras evaluation
(`edgemeta.train.evaluation`) draws from too, so one seed gives both the same tasks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgemeta.data.episodes import EpisodeIndices
from edgemeta.runtime.adapter import FewShotAdapter
from edgemeta.runtime.embedder import Embedder


def ci95(values: Sequence[float] | np.ndarray) -> float:
    """Half-width of the 95 % confidence interval of the mean of `values`: 1.96 standard errors (sample
    standard deviation). NaN for fewer than two values: one episode says nothing about the spread."""
    a = np.asarray(values, np.float64)
    return float(1.96 * a.std(ddof=1) / np.sqrt(len(a))) if len(a) > 1 else float("nan")


@dataclass(frozen=True)
class EvalResult:
    """Accuracy over `episodes` episodes: mean and 95 % confidence half-width (`ci95`; NaN for one episode)."""

    accuracy: float
    ci95: float
    episodes: int
    n_way: int
    k_shot: int
    n_query: int
    per_episode: tuple[float, ...] = ()

    @classmethod
    def from_accuracies(cls, accuracies: Iterable[float], n_way: int, k_shot: int, n_query: int) -> EvalResult:
        a = np.asarray(list(accuracies), np.float64)
        if not len(a):
            raise ValueError("An evaluation needs at least one episode. Received: none")
        return cls(float(a.mean()), ci95(a), len(a), n_way, k_shot, n_query, tuple(a.tolist()))

    def __str__(self) -> str:
        return (
            f"{self.n_way}-way {self.k_shot}-shot: {100 * self.accuracy:.2f} ± {100 * self.ci95:.2f} % "
            f"({self.episodes} episodes, {self.n_query} queries/class)"
        )

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("accuracy", "ci95", "episodes", "n_way", "k_shot", "n_query")}


class MemoizedEmbedder:
    """For evaluation over many episodes of one image set: `embedder`, except that an image object embedded once is
    not embedded again (its embedding does not depend on the episode). The adapter's own code path (enroll,
    prototypes, classify) runs unchanged on exactly the embeddings the runtime computes; 600 episodes of 80 photos
    at 224x224 then cost 1,600 model calls instead of 48,000. Keys are the image objects themselves (held, so
    Python cannot reuse their ids).

    Example:
        >>> embedder = MemoizedEmbedder(Embedder.from_bundle("bundle"))  # doctest: +SKIP
        >>> evaluate_adapter(lambda: FewShotAdapter(embedder), sampler)  # doctest: +SKIP
    """

    def __init__(self, embedder: Any) -> None:
        object.__setattr__(self, "_embedder", embedder)
        object.__setattr__(self, "_cache", {})

    def __getattr__(self, name: str) -> Any:
        return getattr(self._embedder, name)

    def __setattr__(self, name: str, value: Any) -> None:  # e.g. the adapter's max_batch: the embedder's own setting
        setattr(self._embedder, name, value)

    def embed(self, images: Any) -> np.ndarray:
        if isinstance(images, np.ndarray) and images.ndim == 4:
            images = list(images)
        images = list(images) if isinstance(images, (list, tuple)) else [images]
        missing = list({id(x): x for x in images if self._cache.get(id(x), (None,))[0] is not x}.values())
        if missing:
            for x, e in zip(missing, self._embedder.embed(missing)):
                self._cache[id(x)] = (x, e)
        return np.stack([self._cache[id(x)][1] for x in images])


def evaluate_adapter(make_adapter: Callable[[], FewShotAdapter], sampler: EpisodeIndices, episodes: int = 600) -> EvalResult:
    """Evaluates the on-device path on the first `episodes` episodes of `sampler` (an `EpisodeIndices`, or
    the tf.data `EpisodeSampler` built on it) over its dataset's raw images; see `evaluate_adapter_on_episodes`."""
    if sampler.dataset.raw is None:
        raise ValueError("evaluate_adapter needs a dataset with raw images (not one with added rotations).")
    return evaluate_adapter_on_episodes(make_adapter, sampler.dataset.raw, sampler.take(episodes), sampler.n_way,
                                        sampler.k_shot, sampler.n_query)


def evaluate_adapter_on_episodes(make_adapter: Callable[[], FewShotAdapter], raw: Sequence[Any],
                                 episodes: Iterable[Sequence[np.ndarray]], n_way: int, k_shot: int,
                                 n_query: int) -> EvalResult:
    """For each episode `(support_idx, support_labels, query_idx, query_labels)` a fresh `FewShotAdapter`
    enrolls the support set's *raw* images (as a board would receive them) and classifies the raw query
    images. Closed-set accuracy: every query belongs to an enrolled class, so the nearest class counts
    even where the open-set threshold would answer "unknown" (that rate is `edgemeta.train.openset`'s measure)."""
    accs = []
    for s_idx, s_lab, q_idx, q_lab in episodes:
        adapter = make_adapter()
        for c in np.unique(s_lab):
            adapter.enroll(str(c), [raw[i] for i in s_idx[s_lab == c]])
        predicted = [p.nearest for p in adapter.classify([raw[i] for i in q_idx])]
        accs.append(float(np.mean(np.array(predicted) == np.asarray(q_lab).astype(str))))
    return EvalResult.from_accuracies(accs, n_way, k_shot, n_query)


def per_image_latency_ms(embedder: Embedder, image: np.ndarray, repeats: int = 200) -> float:
    """Median wall time of embedding one raw image with `embedder` (preprocessing + model),
    in milliseconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        embedder.embed(image)
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))

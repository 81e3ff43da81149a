"""The one description of N-way K-shot episodes: seeded numpy index arrays into an `ImageClassDataset`.

Episode `i` depends only on `(seed, i)` (its own `numpy.random.Generator`), so every consumer of one
seed sees the same tasks: the tf.data training pipeline (`edgemeta.train.episodes.EpisodeSampler`
builds on this class), the Keras evaluation and the TensorFlow-free bundle evaluation on a board.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np

from edgemeta.data.dataset import ImageClassDataset


class Episode(NamedTuple):
    """Indices into the dataset; support is class-major (the K shots of class 0, then of class 1, ...),
    labels are episode-local in [0, N)."""

    support: np.ndarray  # int32 (n_way * k_shot,)
    support_labels: np.ndarray  # int32 (n_way * k_shot,)
    query: np.ndarray  # int32 (n_way * n_query,)
    query_labels: np.ndarray  # int32 (n_way * n_query,)


class EpisodeIndices:
    """Draws N-way K-shot Q-query episodes as index arrays; `within_group=True` keeps each episode inside
    one group (Omniglot: one alphabet, as in Lake et al.'s one-shot protocol).

    Example:
        >>> episodes = EpisodeIndices(ds, n_way=5, k_shot=1, n_query=5, seed=1)  # doctest: +SKIP
        >>> support, support_labels, query, query_labels = episodes[0]  # doctest: +SKIP
    """

    def __init__(self, dataset: ImageClassDataset, n_way: int, k_shot: int, n_query: int, within_group: bool = False,
                 seed: int = 0) -> None:
        for name, value in (("n_way", n_way), ("k_shot", k_shot), ("n_query", n_query)):
            if int(value) < 1:
                raise ValueError(f"{name} must be at least 1. Received: {value}")
        counts = np.bincount(dataset.labels, minlength=dataset.num_classes)
        need = k_shot + n_query
        if counts.min() < need:
            worst = int(np.argmin(counts))
            raise ValueError(
                f"Every class needs k_shot + n_query = {need} images. Received: class "
                f"{dataset.class_names[worst]!r} has {counts[worst]}."
            )
        group_names = sorted(set(dataset.groups))
        group_of_class = np.array([group_names.index(g) for g in dataset.groups], np.int32)
        classes_per_group = np.bincount(group_of_class, minlength=len(group_names))
        eligible = np.flatnonzero(classes_per_group >= n_way).astype(np.int32)
        if within_group and len(eligible) == 0:
            raise ValueError(
                f"within_group needs a group with at least n_way={n_way} classes. Received: groups with at most "
                f"{classes_per_group.max()} classes."
            )
        if n_way > dataset.num_classes:
            raise ValueError(f"n_way={n_way} exceeds the dataset's {dataset.num_classes} classes.")
        self.dataset = dataset
        self.n_way, self.k_shot, self.n_query = int(n_way), int(k_shot), int(n_query)
        self.within_group, self.seed = bool(within_group), int(seed)
        # Row c: the dataset indices of class c's images, padded with -1 (classes differ in size).
        self._table = np.full((dataset.num_classes, counts.max()), -1, np.int32)
        for c in range(dataset.num_classes):
            members = np.flatnonzero(dataset.labels == c)
            self._table[c, : len(members)] = members
        self._group_of_class = group_of_class
        self._eligible_groups = eligible
        self._support_labels = np.repeat(np.arange(self.n_way, dtype=np.int32), self.k_shot)
        self._query_labels = np.repeat(np.arange(self.n_way, dtype=np.int32), self.n_query)

    def __getitem__(self, index: int) -> Episode:
        """Episode `index` (any non-negative integer: the sequence is endless)."""
        index = int(index)
        if index < 0:
            raise IndexError(f"Episode indices start at 0. Received: {index}")
        # SeedSequence takes non-negative words: a negative seed maps to its 64-bit two's complement.
        rng = np.random.default_rng([self.seed % 2**64, index])
        u = rng.random(len(self._table))
        if self.within_group:
            group = self._eligible_groups[rng.integers(len(self._eligible_groups))]
            u[self._group_of_class != group] = 2.0  # sorts after every class of the group
        classes = np.argsort(u, kind="stable")[: self.n_way]
        rows = self._table[classes]
        v = np.where(rows >= 0, rng.random(rows.shape), 2.0)  # padding sorts last
        order = np.argsort(v, axis=1, kind="stable")[:, : self.k_shot + self.n_query]
        chosen = np.take_along_axis(rows, order, axis=1)
        return Episode(chosen[:, : self.k_shot].ravel(), self._support_labels.copy(),
                       chosen[:, self.k_shot :].ravel(), self._query_labels.copy())

    def take(self, count: int, start: int = 0) -> Iterator[Episode]:
        """Episodes `start`, `start + 1`, ..., `start + count - 1`."""
        if int(count) < 0:
            raise ValueError(f"count must be a non-negative number of episodes. Received: {count}")
        return (self[i] for i in range(int(start), int(start) + int(count)))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.dataset.name!r}, n_way={self.n_way}, k_shot={self.k_shot}, "
                f"n_query={self.n_query}, within_group={self.within_group}, seed={self.seed})")


def __getattr__(name: str) -> Any:
    # Deprecated alias: the tf.data sampler lived here before 0.2. By name, so that this board module does
    # not import the workstation side unless someone still asks for the old path.
    if name == "EpisodeSampler":
        warnings.warn("edgemeta.data.episodes.EpisodeSampler moved to edgemeta.train.episodes.EpisodeSampler; the old "
                      "path stops working in edgemeta 0.3.", DeprecationWarning, stacklevel=2)
        return importlib.import_module("edgemeta.train.episodes").EpisodeSampler
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

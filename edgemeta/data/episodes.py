"""The one description of N-way K-shot episodes: seeded numpy index arrays into an `ImageClassDataset`.

Episode `i` depends only on `(seed, i)` (its own `numpy.random.Generator`), so every consumer of one
seed sees the same tasks: the tf.data training pipeline (`edgemeta.train.episodes.EpisodeSampler`
builds on `EpisodeIndices`), the Keras evaluation and the TensorFlow-free bundle evaluation on a board.
`OpenSetEpisodes` draws its classes and images the same way and adds impostors, images of classes an
episode does not enroll, for the open-set calibration (`edgemeta.train.openset`).
"""

from __future__ import annotations

import importlib
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any, Generic, NamedTuple, TypeVar

import numpy as np

from edgemeta.data.dataset import ImageClassDataset


class Episode(NamedTuple):
    """Indices into the dataset; support is class-major (the K shots of class 0, then of class 1, ...),
    labels are episode-local in [0, N)."""

    support: np.ndarray  # int32 (n_way * k_shot,)
    support_labels: np.ndarray  # int32 (n_way * k_shot,)
    query: np.ndarray  # int32 (n_way * n_query,)
    query_labels: np.ndarray  # int32 (n_way * n_query,)


_E = TypeVar("_E")


class _EpisodeSequence(ABC, Generic[_E]):
    """An endless sequence of episodes in which episode `i` depends only on `(seed, i)`."""

    @abstractmethod
    def __getitem__(self, index: int) -> _E:
        """Episode `index` (any non-negative integer: the sequence is endless)."""

    def take(self, count: int, start: int = 0) -> Iterator[_E]:
        """Episodes `start`, `start + 1`, ..., `start + count - 1`."""
        if int(count) < 0:
            raise ValueError(f"count must be a non-negative number of episodes. Received: {count}")
        return (self[i] for i in range(int(start), int(start) + int(count)))


class _ClassIndex:
    """A dataset's classes as episodes draw them: each class's image indices and group, and the one draw
    of an episode's classes and images both samplers share."""

    def __init__(self, dataset: ImageClassDataset) -> None:
        self.dataset = dataset
        self.counts = np.bincount(dataset.labels, minlength=dataset.num_classes)
        self.group_names = sorted(set(dataset.groups))
        self.group_of_class = np.array([self.group_names.index(g) for g in dataset.groups], np.int32)
        self.classes_per_group = np.bincount(self.group_of_class, minlength=len(self.group_names))
        # Row c: the dataset indices of class c's images, padded with -1 (classes differ in size).
        self.table = np.full((dataset.num_classes, self.counts.max()), -1, np.int32)
        for c in range(dataset.num_classes):
            members = np.flatnonzero(dataset.labels == c)
            self.table[c, : len(members)] = members

    def check_images(self, k_shot: int, n_query: int) -> None:
        """Raises unless every class has `k_shot + n_query` images."""
        need = k_shot + n_query
        if self.counts.min() < need:
            worst = int(np.argmin(self.counts))
            raise ValueError(
                f"Every class needs k_shot + n_query = {need} images. Received: class "
                f"{self.dataset.class_names[worst]!r} has {self.counts[worst]}."
            )

    def draw(self, seed: int, index: int, n_way: int, per_class: int,
             groups: np.ndarray | None) -> tuple[np.random.Generator, np.ndarray, np.ndarray]:
        """Episode `index` of `seed`: its generator (for whatever the caller draws next), every class
        ranked (the first `n_way` are the episode's; with `groups`, one of these group ids is drawn and its
        classes rank before all others) and `per_class` distinct images of each of them, `(n_way, per_class)`."""
        index = int(index)
        if index < 0:
            raise IndexError(f"Episode indices start at 0. Received: {index}")
        # SeedSequence takes non-negative words: a negative seed maps to its 64-bit two's complement.
        rng = np.random.default_rng([seed % 2**64, index])
        u = rng.random(len(self.table))
        if groups is not None:
            group = groups[rng.integers(len(groups))]
            u[self.group_of_class != group] = 2.0  # sorts after every class of the group
        ranked = np.argsort(u, kind="stable")
        rows = self.table[ranked[:n_way]]
        v = np.where(rows >= 0, rng.random(rows.shape), 2.0)  # padding sorts last
        order = np.argsort(v, axis=1, kind="stable")[:, :per_class]
        return rng, ranked, np.take_along_axis(rows, order, axis=1)


class EpisodeIndices(_EpisodeSequence[Episode]):
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
        classes = _ClassIndex(dataset)
        classes.check_images(k_shot, n_query)
        eligible = np.flatnonzero(classes.classes_per_group >= n_way).astype(np.int32)
        if within_group and len(eligible) == 0:
            raise ValueError(
                f"within_group needs a group with at least n_way={n_way} classes. Received: groups with at most "
                f"{classes.classes_per_group.max()} classes."
            )
        if n_way > dataset.num_classes:
            raise ValueError(f"n_way={n_way} exceeds the dataset's {dataset.num_classes} classes.")
        self.dataset = dataset
        self.n_way, self.k_shot, self.n_query = int(n_way), int(k_shot), int(n_query)
        self.within_group, self.seed = bool(within_group), int(seed)
        self._classes = classes
        self._eligible_groups = eligible
        self._support_labels = np.repeat(np.arange(self.n_way, dtype=np.int32), self.k_shot)
        self._query_labels = np.repeat(np.arange(self.n_way, dtype=np.int32), self.n_query)

    def __getitem__(self, index: int) -> Episode:
        """Episode `index` (any non-negative integer: the sequence is endless)."""
        _, _, chosen = self._classes.draw(self.seed, index, self.n_way, self.k_shot + self.n_query,
                                          self._eligible_groups if self.within_group else None)
        return Episode(chosen[:, : self.k_shot].ravel(), self._support_labels.copy(),
                       chosen[:, self.k_shot :].ravel(), self._query_labels.copy())

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.dataset.name!r}, n_way={self.n_way}, k_shot={self.k_shot}, "
                f"n_query={self.n_query}, within_group={self.within_group}, seed={self.seed})")


class OpenSetEpisode(NamedTuple):
    """Indices into the dataset of one open-set episode: the enrolled classes' shots and genuine queries,
    and impostors, images of classes the episode does not enroll."""

    shots: np.ndarray  # int32 (n_way, shots): row c holds enrolled class c's shots; shots[:, :k] is a k-shot support
    genuine: np.ndarray  # int32 (n_way * n_query,): new images of the enrolled classes, class-major
    impostors: np.ndarray  # int32 (up to n_way * n_query,): images of classes not enrolled in the episode


class OpenSetEpisodes(_EpisodeSequence[OpenSetEpisode]):
    """N-way episodes with impostors, drawn as `EpisodeIndices` draws its episodes (episode `i` from
    `(seed, i)` alone): `n_way` enrolled classes, their shots and `n_query` genuine queries each, then as
    many impostors as genuine queries (fewer if the classes left over lack images), drawn from the classes
    not enrolled — within the episode's group if `within_group`, so a group needs more than `n_way` classes.

    `shots_needed` (default `k_shot`) draws more shots per class, as many as the smallest class allows
    after its queries (`shots` says how many), so one episode serves every shot count up to it with the
    same genuine queries and impostors.

    Example:
        >>> episodes = OpenSetEpisodes(ds, n_way=20, k_shot=1, n_query=5, within_group=True)  # doctest: +SKIP
        >>> shots, genuine, impostors = episodes[0]  # doctest: +SKIP
    """

    def __init__(self, dataset: ImageClassDataset, n_way: int, k_shot: int, n_query: int, within_group: bool = False,
                 seed: int = 0, shots_needed: int | None = None) -> None:
        for name, value in (("n_way", n_way), ("k_shot", k_shot), ("n_query", n_query)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer. Received: {value!r}")
        shots_needed = k_shot if shots_needed is None else shots_needed
        if isinstance(shots_needed, bool) or not isinstance(shots_needed, (int, np.integer)) or shots_needed < k_shot:
            raise ValueError(f"shots_needed must be an integer of at least k_shot={k_shot}. Received: {shots_needed!r}")
        if not hasattr(dataset, "images") or not hasattr(dataset, "labels"):
            raise TypeError(f"Expected an edgemeta ImageClassDataset. Received: {type(dataset).__name__}")
        classes = _ClassIndex(dataset)
        classes.check_images(k_shot, n_query)
        sizes = classes.classes_per_group if within_group else np.array([dataset.num_classes])
        # An episode needs at least one class left over to draw impostors from.
        eligible = np.flatnonzero(sizes > n_way).astype(np.int32)
        if len(eligible) == 0:
            where = (f"any group (largest: {sizes.max()} classes)" if within_group
                     else f"the dataset ({dataset.num_classes} classes)")
            raise ValueError(f"Open-set episodes need more than n_way={n_way} classes in {where}, so that some are "
                             f"never enrolled. Received: {dataset!r}")
        self.dataset = dataset
        self.n_way, self.k_shot, self.n_query = int(n_way), int(k_shot), int(n_query)
        self.within_group, self.seed = bool(within_group), int(seed)
        self.shots = min(int(shots_needed), int(classes.counts.min()) - self.n_query)
        self._classes = classes
        self._eligible_groups = eligible if within_group else None
        used = [classes.group_names[g] for g in eligible] if within_group else classes.group_names
        n_classes = int(sizes[eligible].sum())
        impostors = "impostors from the enrolled classes' own group" if within_group else "impostors from any other class"
        self.description = f"{dataset.name}: {n_classes} classes in {len(used)} group(s) ({', '.join(used)}), {impostors}"

    def __getitem__(self, index: int) -> OpenSetEpisode:
        """Episode `index` (any non-negative integer: the sequence is endless)."""
        rng, ranked, chosen = self._classes.draw(self.seed, index, self.n_way, self.shots + self.n_query,
                                                 self._eligible_groups)
        others = ranked[self.n_way :]
        if self.within_group:
            group_of_class = self._classes.group_of_class
            others = others[group_of_class[others] == group_of_class[ranked[0]]]
        pool = self._classes.table[others]
        pool = pool[pool >= 0]
        impostors = rng.choice(pool, min(len(pool), self.n_way * self.n_query), replace=False)
        # Genuine queries come after the largest shot count, so every k uses the same queries.
        return OpenSetEpisode(chosen[:, : self.shots], chosen[:, self.shots :].ravel(), impostors.astype(np.int32))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.dataset.name!r}, n_way={self.n_way}, k_shot={self.k_shot}, "
                f"n_query={self.n_query}, within_group={self.within_group}, seed={self.seed}, shots={self.shots})")


def __getattr__(name: str) -> Any:
    # Deprecated alias: the tf.data sampler lived here before 0.2. By name, so that this board module does
    # not import the workstation side unless someone still asks for the old path.
    if name == "EpisodeSampler":
        warnings.warn("edgemeta.data.episodes.EpisodeSampler moved to edgemeta.train.episodes.EpisodeSampler; the old "
                      "path stops working in edgemeta 0.3.", DeprecationWarning, stacklevel=2)
        return importlib.import_module("edgemeta.train.episodes").EpisodeSampler
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

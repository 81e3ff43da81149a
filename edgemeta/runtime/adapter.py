"""On-device few-shot learning: enroll classes from a few images, classify by nearest prototype."""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgemeta.atomic import atomic_write
from edgemeta.presets import preset_path
from edgemeta.runtime.embedder import Embedder
from edgemeta.runtime.metric import for_metric, squared_distances

STATE_FORMAT_VERSION = 1


@dataclass(frozen=True)
class Prediction:
    """The nearest class of one image: its `label`, squared Euclidean `distance` to that class's
    prototype (for a `cosine` bundle, between unit-length vectors: 2 - 2 cos), and `score`, the softmax over negative distances (a probability among enrolled classes)."""

    label: str
    distance: float
    score: float


class FewShotAdapter:
    """Learns new classes on the board. A class is its prototype: the mean embedding of its shots.

    Example:
        >>> adapter = FewShotAdapter.from_preset("omniglot")
        >>> adapter.enroll("circle", np.pad(np.zeros((20, 20), np.uint8), 40, constant_values=255))
        1
        >>> adapter.labels
        ['circle']
        >>> adapter.classify(np.zeros((105, 105), np.uint8))[0].label
        'circle'

    With `state=PATH`, what was taught is loaded from `PATH` if it exists and written back atomically
    after every `enroll`/`forget`, so a power cut never loses or corrupts it.
    """

    def __init__(self, embedder: Embedder, state: str | os.PathLike | None = None) -> None:
        self.embedder = embedder
        self.metric = embedder.manifest.metric
        for_metric(np.zeros((1, 1)), self.metric)  # unknown metric: refuse the bundle now, not at classify
        self._sums: dict[str, np.ndarray] = {}
        self._counts: dict[str, int] = {}
        self.state_path = Path(state) if state is not None else None
        if self.state_path is not None and self.state_path.exists():
            self.load(self.state_path)

    @classmethod
    def from_bundle(cls, path: str | os.PathLike, state: str | os.PathLike | None = None,
                    num_threads: int | None = None) -> "FewShotAdapter":
        return cls(Embedder.from_bundle(path, num_threads), state)

    @classmethod
    def from_preset(cls, name: str = "omniglot", state: str | os.PathLike | None = None,
                    num_threads: int | None = None) -> "FewShotAdapter":
        return cls.from_bundle(preset_path(name), state, num_threads)

    @property
    def labels(self) -> list[str]:
        return sorted(self._sums)

    def shots(self, label: str) -> int:
        """How many images class `label` was enrolled with."""
        return self._counts[self._known(label)]

    def enroll(self, label: str, images: Any) -> int:
        """Adds `images` as shots of `label` (a new class, or refining a known one's prototype).
        Returns the class's total number of shots. Bad input raises and changes nothing."""
        if not isinstance(label, str) or not label.strip():
            raise ValueError(f"label must be a non-empty string. Received: {label!r}")
        embeddings = for_metric(self.embedder.embed(images).astype(np.float64), self.metric)
        sums, counts = dict(self._sums), dict(self._counts)
        sums[label] = sums.get(label, 0.0) + embeddings.sum(0)
        counts[label] = counts.get(label, 0) + len(embeddings)
        self._commit(sums, counts)
        return counts[label]

    def forget(self, label: str) -> None:
        """Removes class `label`."""
        self._known(label)
        sums, counts = dict(self._sums), dict(self._counts)
        del sums[label], counts[label]
        self._commit(sums, counts)

    def prototypes(self) -> tuple[list[str], np.ndarray]:
        """`(labels, (n_classes, D) prototype matrix)`."""
        labels = self.labels
        return labels, np.stack([self._sums[k] / self._counts[k] for k in labels]) if labels else np.zeros((0, self.embedder.embedding_size))

    def classify(self, images: Any) -> list[Prediction]:
        """One `Prediction` per image: the nearest enrolled class."""
        if not self._sums:
            raise RuntimeError("No classes enrolled yet: call enroll(label, images) first.")
        labels, protos = self.prototypes()
        d = squared_distances(for_metric(self.embedder.embed(images), self.metric), for_metric(protos, self.metric))
        logits = -d - (-d).max(1, keepdims=True)
        p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        best = d.argmin(1)
        return [Prediction(labels[j], float(d[i, j]), float(p[i, j])) for i, j in enumerate(best)]

    # -- persistence -------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Writes what was taught to `path` atomically (write to a temporary file, fsync, rename)."""
        labels = self.labels
        header = {"format_version": STATE_FORMAT_VERSION, "model_sha256": self.embedder.manifest.model_sha256,
                  "labels": labels, "counts": [self._counts[k] for k in labels]}
        buffer = io.BytesIO()
        sums = np.stack([self._sums[k] for k in labels]) if labels else np.zeros((0, self.embedder.embedding_size))
        np.savez(buffer, header=np.array(json.dumps(header)), sums=sums)
        atomic_write(path, buffer.getvalue())

    def load(self, path: str | os.PathLike) -> None:
        """Replaces the enrolled classes with those saved at `path` (by `save` or `state=`)."""
        with np.load(path, allow_pickle=False) as data:
            header = json.loads(str(data["header"]))
            sums = data["sums"]
        if header.get("format_version") != STATE_FORMAT_VERSION:
            raise ValueError(f"Unsupported adapter state version in {str(path)!r}. Received: {header.get('format_version')!r}")
        if header["model_sha256"] != self.embedder.manifest.model_sha256:
            raise ValueError(
                f"Adapter state {str(path)!r} was taught with another model (sha256 {header['model_sha256'][:12]}…); "
                f"this bundle's model is {self.embedder.manifest.model_sha256[:12]}…. Prototypes are not portable "
                "across models: re-enroll, or load the matching bundle."
            )
        self._sums = {k: sums[i].astype(np.float64) for i, k in enumerate(header["labels"])}
        self._counts = {k: int(c) for k, c in zip(header["labels"], header["counts"])}

    def _commit(self, sums: dict[str, np.ndarray], counts: dict[str, int]) -> None:
        # Persist first: if saving fails, memory keeps the old state too.
        if self.state_path is not None:
            previous = (self._sums, self._counts)
            self._sums, self._counts = sums, counts
            try:
                self.save(self.state_path)
            except BaseException:
                self._sums, self._counts = previous
                raise
        else:
            self._sums, self._counts = sums, counts

    def _known(self, label: str) -> str:
        if label not in self._sums:
            raise KeyError(f"Unknown label {label!r}. Enrolled labels: {self.labels}")
        return label

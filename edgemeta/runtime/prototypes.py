"""Prototypes and distances in numpy, the one home every stage shares: the adapter, bundle evaluation and
open-set calibration all compare a query with a class's prototype the same way.

- `for_metric` maps embeddings into the space where the bundle's metric is squared Euclidean distance;
- a class's prototype is the mean of its mapped shots, mapped again (`mean_prototypes`,
  `class_prototypes`; the adapter keeps that mean as a running mean in its `PrototypeStore`);
- `squared_distances` compares queries with prototypes (the ProtoNet metric).

Training's TensorFlow version of the same arithmetic (tensors with gradients) is
`edgemeta.train.learners.protonet.prototypes` / `squared_distances`.
"""

from __future__ import annotations

import numpy as np

from edgemeta.format.bundle import METRICS


def squared_distances(x: np.ndarray, prototypes: np.ndarray) -> np.ndarray:
    """`(n, D)` x `(c, D)` -> `(n, c)` squared Euclidean distances (the ProtoNet metric), in float64."""
    x, prototypes = np.asarray(x, np.float64), np.asarray(prototypes, np.float64)
    d = squared_norms(x)[:, None] - 2 * x @ prototypes.T
    d += squared_norms(prototypes)[None, :]
    return np.maximum(d, 0.0, out=d)


def squared_norms(x: np.ndarray) -> np.ndarray:
    """`(n, D)` -> `(n,)` float64 squared lengths, as `squared_distances` computes them (classify keeps
    the prototypes' between calls)."""
    x = np.asarray(x, np.float64)
    return (x**2).sum(1)


def for_metric(embeddings: np.ndarray, metric: str) -> np.ndarray:
    """Maps embeddings into the space where the bundle's `metric` is squared Euclidean distance:
    unchanged for `squared_euclidean`, unit length for `cosine` (||a - b||^2 = 2 - 2 cos(a, b))."""
    if metric == "squared_euclidean":
        return embeddings
    if metric == "cosine":
        return embeddings / np.maximum(np.linalg.norm(embeddings, axis=-1, keepdims=True), 1e-12)
    raise ValueError(f"Unknown metric {metric!r}. Expected one of {METRICS}.")


def mean_prototypes(mapped_shots: np.ndarray, metric: str) -> np.ndarray:
    """`(..., k, D)` metric-mapped shots -> `(..., D)` prototypes: each class's mean, mapped again
    (re-normalised for `cosine`), as the adapter compares with."""
    return for_metric(np.asarray(mapped_shots).mean(-2), metric)


def class_prototypes(embeddings: np.ndarray, labels: np.ndarray,
                     metric: str = "squared_euclidean") -> tuple[np.ndarray, np.ndarray]:
    """`(classes, prototypes)` of a support set: its sorted distinct `labels` and, row for row, each
    class's prototype (the mean of its metric-mapped `embeddings`, mapped again).

    Example:
        >>> classes, protos = class_prototypes(np.array([[0.0, 2], [2, 0], [4, 4]]), np.array([1, 1, 0]))
        >>> classes.tolist(), protos.tolist()
        ([0, 1], [[4.0, 4.0], [1.0, 1.0]])
        >>> classes[squared_distances(np.array([[1.0, 1.5]]), protos).argmin(1)].tolist()  # nearest prototype
        [1]
    """
    labels = np.asarray(labels)
    mapped = for_metric(np.asarray(embeddings), metric)
    if mapped.ndim != 2 or labels.shape != (len(mapped),) or not len(mapped):
        raise ValueError(f"Expected embeddings (n >= 1, D) and one label per row. Received: embeddings "
                         f"{np.shape(embeddings)}, labels {labels.shape}")
    classes = np.unique(labels)
    return classes, for_metric(np.stack([mapped[labels == c].mean(0) for c in classes]), metric)

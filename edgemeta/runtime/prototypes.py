"""The distance every stage agrees on: squared Euclidean between (metric-mapped) embeddings."""

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

"""The distance every stage agrees on: squared Euclidean between (metric-mapped) embeddings."""

from __future__ import annotations

import numpy as np

METRICS = ("squared_euclidean", "cosine")


def squared_distances(x: np.ndarray, prototypes: np.ndarray, x_norms: np.ndarray | None = None,
                      prototype_norms: np.ndarray | None = None) -> np.ndarray:
    """`(n, D)` x `(c, D)` -> `(n, c)` squared Euclidean distances (the ProtoNet metric), in float64.

    `x_norms` / `prototype_norms` are `squared_norms` of the float64 arrays, when the caller keeps them
    (classify reuses the prototypes' between calls); the result is the same bit for bit."""
    x, prototypes = np.asarray(x, np.float64), np.asarray(prototypes, np.float64)
    if x_norms is None:
        x_norms = squared_norms(x)
    if prototype_norms is None:
        prototype_norms = squared_norms(prototypes)
    d = x_norms[:, None] - 2 * x @ prototypes.T
    d += prototype_norms[None, :]
    return np.maximum(d, 0.0, out=d)


def squared_norms(x: np.ndarray) -> np.ndarray:
    """`(n, D)` -> `(n,)` float64 squared lengths, as `squared_distances` computes them."""
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

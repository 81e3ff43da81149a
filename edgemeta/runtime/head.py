"""A softmax-regression head, started as the prototype classifier and fine-tuned on the support embeddings in numpy."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))  # shift so exp never overflows
    return e / e.sum(axis=1, keepdims=True)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) and bool(np.isfinite(value))


def _finite_matrix(x: Any, name: str, dim: int | None = None) -> np.ndarray:
    """`x` as float64 `(n, D)` with n >= 1, every value finite, and D == `dim` when given."""
    x = np.asarray(x, np.float64)
    if x.ndim == 1 and dim is not None:
        x = x[None]  # one embedding
    if x.ndim != 2 or len(x) == 0 or x.shape[1] == 0 or (dim is not None and x.shape[1] != dim):
        want = f"(n, {dim})" if dim is not None else "(n, D)"
        raise ValueError(f"{name} must be a non-empty {want} array. Received shape: {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} must be finite. Received {int((~np.isfinite(x)).sum())} NaN/Inf value(s).")
    return x


class SoftmaxHead:
    """Linear softmax classifier over metric-mapped embeddings (`edgemeta.runtime.prototypes.for_metric`).

    Built from prototypes it *is* the nearest-prototype classifier: with squared Euclidean distance,
    -||x - p_c||^2 = 2 p_c.x - ||p_c||^2 - ||x||^2, and the last term is the same for every class, so
    W_c = 2 p_c, b_c = -||p_c||^2 give the same argmax and the same softmax as -distances (the
    Proto-MAML output-layer initialisation of Triantafillou et al. 2020, "Meta-Dataset", ICLR).
    `fit` then moves W, b a few gradient steps on the support shots, pulled back towards that start.

    Example:
        >>> head = SoftmaxHead.from_prototypes(np.array([[0.0, 0.0], [4.0, 0.0]]), ["a", "b"])
        >>> history = head.fit(np.array([[0.0, 1.0], [4.0, 1.0]]), ["a", "b"], steps=10)
        >>> head.predict(np.array([[0.5, 0.0], [3.0, 0.0]]))[0].tolist()
        [0, 1]
    """

    def __init__(self, weights: np.ndarray, bias: np.ndarray, labels: Sequence[str], temperature: float = 1.0,
                 init_weights: np.ndarray | None = None, init_bias: np.ndarray | None = None) -> None:
        weights = _finite_matrix(weights, "weights")
        labels = list(labels)
        if len(labels) != len(weights) or len(set(labels)) != len(labels) or not all(isinstance(s, str) and s for s in labels):
            raise ValueError(f"labels must be {len(weights)} distinct non-empty strings (one per row of weights). "
                             f"Received: {labels!r}")
        bias = np.asarray(bias, np.float64)
        if bias.shape != (len(weights),) or not np.isfinite(bias).all():
            raise ValueError(f"bias must be {len(weights)} finite values. Received shape {bias.shape}")
        if not (_is_number(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0. Received: {temperature!r}")
        init_weights = weights if init_weights is None else _finite_matrix(init_weights, "init_weights", weights.shape[1])
        init_bias = bias if init_bias is None else np.asarray(init_bias, np.float64)
        if init_weights.shape != weights.shape or init_bias.shape != bias.shape or not np.isfinite(init_bias).all():
            raise ValueError(f"init_weights/init_bias must match weights {weights.shape} and bias {bias.shape}. "
                             f"Received: {init_weights.shape}, {init_bias.shape}")
        self.weights, self.bias, self.labels, self.temperature = weights.copy(), bias.copy(), labels, float(temperature)
        # The prototype solution every fit is regularised towards (kept across repeated fits).
        self.init_weights, self.init_bias = init_weights.copy(), init_bias.copy()

    @classmethod
    def from_prototypes(cls, prototypes: np.ndarray, labels: Sequence[str], temperature: float = 1.0) -> SoftmaxHead:
        """The head equal to nearest-prototype classification: `prototypes` is `(C, D)`, one row per label.
        `temperature` divides the logits (softmax(-distance / temperature)); it never changes the argmax."""
        p = _finite_matrix(prototypes, "prototypes")
        return cls(2.0 * p, -(p**2).sum(axis=1), labels, temperature)

    @property
    def embedding_size(self) -> int:
        return self.weights.shape[1]

    def logits(self, x: np.ndarray) -> np.ndarray:
        """`(n, D)` embeddings (or one `(D,)`) -> `(n, C)` logits, already divided by the temperature."""
        x = _finite_matrix(x, "embeddings", self.embedding_size)
        return (x @ self.weights.T + self.bias) / self.temperature

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`(n, D)` embeddings -> (label indices into `labels` `(n,)`, class probabilities `(n, C)`)."""
        probabilities = _softmax(self.logits(x))
        return probabilities.argmax(axis=1), probabilities

    def fit(self, embeddings: np.ndarray, labels: Sequence[str] | np.ndarray, steps: int = 50,
            learning_rate: float = 0.1, weight_decay: float = 1e-3) -> dict[str, list[float]]:
        """Full-batch Adam on mean cross-entropy plus an L2 pull back to the prototype start.

        `labels` are label strings, or integer indices into `self.labels`. Both knobs are unit-free, so
        the defaults hold at any embedding scale (a cosine bundle's unit vectors or raw ReLU features):
        `learning_rate` is roughly how far one step moves a logit, `weight_decay` the pull's strength
        relative to the loss's curvature scale. Deterministic (no randomness, no minibatches).
        Returns {"loss": objective, "cross_entropy": its data term}, each before every step and after
        the last (steps + 1 values). Bad input raises and leaves the head unchanged.
        """
        x = _finite_matrix(embeddings, "embeddings", self.embedding_size)
        y = self._label_indices(labels, len(x))
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps <= 0:
            raise ValueError(f"steps must be an integer >= 1. Received: {steps!r}")
        if not (_is_number(learning_rate) and learning_rate > 0):
            raise ValueError(f"learning_rate must be a finite number > 0. Received: {learning_rate!r}")
        if not (_is_number(weight_decay) and weight_decay >= 0):
            raise ValueError(f"weight_decay must be a finite number >= 0. Received: {weight_decay!r}")

        # Centre the inputs on the support mean: W (x - mu) + b' with b' = b + W mu is the same model,
        # but ReLU embeddings share a large mean that would otherwise couple every weight to the bias.
        # W and b' travel together as theta = [W | b'] acting on [x - mu, 1].
        mu = x.mean(axis=0)
        xs = np.hstack([x - mu, np.ones((len(x), 1))])
        theta = np.hstack([self.weights, (self.bias + self.weights @ mu)[:, None]])
        theta0 = np.hstack([self.init_weights, (self.init_bias + self.init_weights @ mu)[:, None]])
        t, onehot, rows = self.temperature, np.eye(len(self.labels))[y], np.arange(len(y))
        # scale = mean ||[x - mu, 1]||^2 / t^2 bounds the cross-entropy's curvature in theta, which makes
        # both knobs unit-free: a theta step of learning_rate / sqrt(scale) moves a logit by about
        # learning_rate, and the pull is weight_decay times that curvature.
        scale = float((xs**2).sum(axis=1).mean()) / t**2
        # The pull is towards the prototype solution, not towards zero: with one to five noisy shots the
        # weights move only as far as the data clearly asks, and the prototypes stay the fallback.
        decay, rate = weight_decay * scale, learning_rate / np.sqrt(scale)

        def objective(theta: np.ndarray) -> tuple[float, float, np.ndarray]:
            p = _softmax(xs @ theta.T / t)
            ce = float(-np.log(np.maximum(p[rows, y], 1e-300)).mean())
            return ce + 0.5 * decay * float(((theta - theta0) ** 2).sum()), ce, p

        # Adam (Kingma & Ba 2015), because its per-weight step sizes cope with embedding dimensions of
        # very different spread, where plain gradient descent crawls along the narrow ones.
        m, v, beta1, beta2 = np.zeros_like(theta), np.zeros_like(theta), 0.9, 0.999
        history: dict[str, list[float]] = {"loss": [], "cross_entropy": []}
        for i in range(1, steps + 1):
            loss, ce, p = objective(theta)
            history["loss"].append(loss)
            history["cross_entropy"].append(ce)
            grad = ((p - onehot) / (len(y) * t)).T @ xs + decay * (theta - theta0)
            m, v = beta1 * m + (1 - beta1) * grad, beta2 * v + (1 - beta2) * grad**2
            m_hat, v_hat = m / (1 - beta1**i), v / (1 - beta2**i)
            theta = theta - rate * m_hat / (np.sqrt(v_hat) + 1e-8 * np.sqrt(scale))  # epsilon in gradient units
        loss, ce, _ = objective(theta)
        history["loss"].append(loss)
        history["cross_entropy"].append(ce)
        self.weights, self.bias = theta[:, :-1], theta[:, -1] - theta[:, :-1] @ mu  # back to uncentred inputs
        return history

    def to_dict(self) -> dict[str, np.ndarray]:
        """The head as numpy arrays: `np.savez(path, **head.to_dict())` stores it without pickling, and
        `SoftmaxHead.from_dict(np.load(path))` restores it (for JSON, call `.tolist()` on each value)."""
        return {"labels": np.array(self.labels, dtype=str), "weights": self.weights.copy(), "bias": self.bias.copy(),
                "init_weights": self.init_weights.copy(), "init_bias": self.init_bias.copy(),
                "temperature": np.array(self.temperature)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SoftmaxHead:
        """Inverse of `to_dict`; accepts arrays (e.g. an opened `.npz`) or nested lists."""
        missing = sorted({"labels", "weights", "bias", "init_weights", "init_bias", "temperature"} - set(d.keys()))
        if missing:
            raise ValueError(f"Missing key(s) {missing} for a SoftmaxHead. Received keys: {sorted(d.keys())}")
        labels = [str(s) for s in np.asarray(d["labels"]).reshape(-1).tolist()]
        return cls(d["weights"], d["bias"], labels, float(np.asarray(d["temperature"])), d["init_weights"], d["init_bias"])

    def _label_indices(self, labels: Sequence[str] | np.ndarray, n: int) -> np.ndarray:
        arr = np.asarray(labels)
        if arr.shape != (n,):
            raise ValueError(f"Expected one label per embedding ({n}). Received labels of shape {arr.shape}")
        if arr.dtype.kind in "iu":
            bad = sorted(set(arr[(arr < 0) | (arr >= len(self.labels))].tolist()))
            if bad:
                raise ValueError(f"Label indices must be in [0, {len(self.labels)}). Received: {bad}")
            return arr.astype(np.int64)
        index = {label: i for i, label in enumerate(self.labels)}
        unknown = sorted({str(v) for v in arr.tolist() if v not in index})
        if unknown:
            raise ValueError(f"Labels {unknown} are not among the head's labels {self.labels}. Received: {unknown}")
        return np.array([index[v] for v in arr.tolist()], np.int64)

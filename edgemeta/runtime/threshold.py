"""The open-set "unknown" threshold: from a bundle's calibration for the classes enrolled, and as users write it (numpy only).

- `threshold_for`: the calibrated distance for N enrolled classes of k shots;
- `UnknownThreshold`: the adapter's threshold (none, a distance, or "calibrated"), cached per class count;
- `check_threshold` / `parse_threshold`: a threshold given in code / on the command line.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def threshold_for(open_set: dict[str, Any], n_classes: int, target: float | None = None,
                  k_shot: int | None = None) -> float:
    """The nearest-prototype distance above which a query should be called "unknown" so that a fraction
    `target` (default: the calibrated one) of never-enrolled queries is still accepted, with `n_classes`
    enrolled classes of `k_shot` shots each (default: the calibrated k_shot).

    A query is falsely accepted when it is close to ANY of the N prototypes, so the threshold must shrink as
    N grows. The manifest's `impostor_quantiles` tabulate F, the distribution of the distance between a
    never-enrolled query and ONE prototype of another class; treating the N distances as independent,
    P(min <= t) = 1 - (1 - F(t))^N, so the threshold is F's quantile at 1 - (1 - target)^(1/N).
    Without a table (older calibrations) only the stored `threshold` is available.

    Example:
        >>> threshold_for(manifest.open_set, n_classes=5)  # doctest: +SKIP
        6.91
    """
    if not isinstance(open_set, dict) or "threshold" not in open_set:
        raise ValueError(f"open_set must be a bundle's open-set calibration (a dict with 'threshold'). Received: {open_set!r}")
    if isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer)) or n_classes < 1:
        raise ValueError(f"n_classes must be a positive integer. Received: {n_classes!r}")
    calibrated_target = float(open_set.get("target_false_accept", np.nan))
    target = calibrated_target if target is None else target
    if not (isinstance(target, (int, float)) and 0.0 < target < 1.0):
        raise ValueError(f"target must be a false-accept rate in (0, 1). Received: {target!r}")
    if k_shot is not None and (isinstance(k_shot, bool) or not isinstance(k_shot, (int, np.integer)) or k_shot < 1):
        raise ValueError(f"k_shot must be a positive integer or None. Received: {k_shot!r}")
    table = open_set.get("impostor_quantiles")
    if not table:
        if target == calibrated_target and n_classes == open_set.get("n_way") and k_shot in (None, open_set.get("k_shot")):
            return float(open_set["threshold"])
        raise ValueError(
            "This calibration has no impostor_quantiles table, so its threshold holds only for the setting it was "
            f"calibrated in (n_way={open_set.get('n_way')}, k_shot={open_set.get('k_shot')}, target={calibrated_target}). "
            f"Received: n_classes={n_classes}, k_shot={k_shot}, target={target}. Re-export the bundle to get the table."
        )
    k_shot = int(open_set.get("k_shot", 1)) if k_shot is None else int(k_shot)
    # Per-class false-accept rate; -expm1(log1p(-x)/N) keeps precision when target/N is tiny.
    p = float(-np.expm1(np.log1p(-target) / int(n_classes)))
    log_p = np.log(np.asarray(table["probabilities"], np.float64))
    shots = sorted(int(k) for k in table["distances"])
    per_k = [_quantile(log_p, np.asarray(table["distances"][str(k)], np.float64), np.log(p)) for k in shots]
    # An impostor's distance to a k-shot prototype falls roughly like trace(covariance)/k: interpolate in 1/k.
    inv = [1.0 / k for k in shots]
    return float(np.interp(1.0 / k_shot, inv[::-1], per_k[::-1]))


def _quantile(log_p: np.ndarray, distances: np.ndarray, at: float) -> float:
    """The tabulated quantile at log-probability `at`; below the table, extrapolated along its last
    segment (rejecting more, not less, when many classes push the per-class rate below what was sampled)."""
    if at >= log_p[0]:
        return float(np.interp(at, log_p, distances))
    slope = (distances[1] - distances[0]) / (log_p[1] - log_p[0])
    return float(max(0.0, distances[0] + slope * (at - log_p[0])))


def parse_threshold(text: str, what: str = "--unknown-threshold") -> float | str | None:
    """A command-line threshold: "calibrated" (the bundle's, recomputed for the classes enrolled),
    "none" (always answer the nearest class) or a distance >= 0. Raises ValueError otherwise."""
    lowered = text.strip().lower() if isinstance(text, str) else ""
    if lowered in ("calibrated", "none"):
        return None if lowered == "none" else "calibrated"
    try:
        value = float(lowered)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value < float("inf"):
        raise ValueError(f"{what} takes 'calibrated', 'none' or a distance >= 0. Received: {text!r}")
    return value


def check_threshold(value: Any, what: str = "unknown_threshold", words: tuple[str, ...] = ("calibrated",)) -> float | str | None:
    """A threshold given in code: None (never answer "unknown"), a distance >= 0 (returned as a float),
    or one of `words`. Raises ValueError otherwise."""
    if value is None or (isinstance(value, str) and value in words):
        return value
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) and 0 <= value < np.inf:
        return float(value)
    named = "".join(f"{word!r}, " for word in words)
    raise ValueError(f"{what} must be {named}a distance >= 0 or None. Received: {value!r}")


class UnknownThreshold:
    """The distance beyond which the adapter answers "unknown".

    `value` is None (always answer the nearest class), a distance, or "calibrated": the bundle's
    open-set calibration (`open_set`, a manifest's). With the calibration's per-class table
    (`impostor_quantiles`) the calibrated threshold follows the number of classes enrolled and their
    typical shot count (more classes: more chances for a stranger to land near one), through
    `threshold_for`; without it, it is the calibration's fixed `threshold` (None when there is none).
    """

    def __init__(self, value: float | str | None, open_set: dict[str, Any] | None = None) -> None:
        value = check_threshold(value)
        open_set = open_set or {}
        self._open_set = open_set
        self._per_class_count = value == "calibrated" and bool(open_set.get("impostor_quantiles"))
        self._cache: dict[tuple[int, int], float] = {}
        if value == "calibrated":
            value = float(open_set["threshold"]) if "threshold" in open_set else None
        self.value: float | None = value  # the fixed distance (for a per-class-count table: as calibrated)

    def for_classes(self, n_classes: int, k_shot: int) -> float | None:
        """The threshold with `n_classes` classes enrolled whose typical class has `k_shot` shots."""
        if not self._per_class_count:
            return self.value
        key = (n_classes, max(1, min(k_shot, 10)))
        if key not in self._cache:
            self._cache[key] = threshold_for(self._open_set, n_classes, k_shot=key[1])
        return self._cache[key]

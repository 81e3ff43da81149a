"""The open-set "unknown" threshold: from a bundle's calibration for the classes enrolled, and as users write it (numpy only).

- `threshold_for`: the calibrated distance for a class of k shots (among N enrolled classes);
- `enrolled_probability`: the calibrated probability that a query belongs to an enrolled class;
- `UnknownThreshold`: the adapter's threshold (none, a distance, or "calibrated"), cached per shot count;
- `check_threshold` / `parse_threshold`: a threshold given in code / on the command line.

A bundle's calibration (`manifest.open_set`) is one of two kinds:
- `genuine_quantiles` (`edgemeta.train.openset.calibrate_unknown`, on groups held out from training): the
  nearest-prototype distance of a new image of an enrolled class of k shots; the threshold rejects a stated
  fraction of those (`target_false_reject`), and more shots never reject more (`shot_target`);
- `impostor_quantiles` (older bundles): the distance of a never-enrolled image to a prototype; the threshold
  accepts a stated fraction of strangers (`target_false_accept`), which does not transfer to new groups.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def threshold_for(open_set: dict[str, Any], n_classes: int, target: float | None = None,
                  k_shot: int | None = None) -> float:
    """The nearest-prototype distance above which a query should be called "unknown".

    For a `genuine_quantiles` calibration, `genuine_threshold`: `target` is the false-reject rate
    (default: the calibrated one), and `n_classes` is not used (the table pools 5 to 20 classes; more
    classes reject slightly fewer genuine queries, docs/open-set.md). For an older `impostor_quantiles`
    calibration, read on:

    A fraction `target` (default: the calibrated one) of never-enrolled queries is still accepted, with
    `n_classes` enrolled classes of `k_shot` shots each (default: the calibrated k_shot).

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
    if open_set.get("genuine_quantiles"):
        return genuine_threshold(open_set, 1 if k_shot is None else k_shot, target)
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


def shot_target(target: float, k_shot: int) -> float:
    """The false-reject rate aimed at for a class of `k_shot` shots: `target` at one shot, falling towards
    `target / 2` as shots accumulate (`target * (1 + 1/k) / 2`), so that a class given more shots is never
    rejected more often. Each further shot is more evidence that the class looks as its shots do."""
    return float(target) * (1.0 + 1.0 / int(k_shot)) / 2.0


def genuine_threshold(open_set: dict[str, Any], k_shot: int, target: float | None = None) -> float:
    """The distance to a class's prototype beyond which a new image of that class, enrolled with `k_shot`
    shots, is rejected at the rate `shot_target(target, k_shot)` (`target`: default the calibration's
    `target_false_reject`). Read from the calibration's table (quantiles of the genuine distance per shot
    count, measured on groups held out from training), interpolated in log(rate) and in 1/k between the
    tabulated shot counts; beyond the largest count, its value (a prototype changes little after 10 shots).

    Example:
        >>> genuine_threshold(manifest.open_set, k_shot=5)  # doctest: +SKIP
        6.12
    """
    target = float(open_set["target_false_reject"]) if target is None else target
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0.0 < target < 1.0:
        raise ValueError(f"target must be a false-reject rate in (0, 1). Received: {target!r}")
    if isinstance(k_shot, bool) or not isinstance(k_shot, (int, np.integer)) or k_shot < 1:
        raise ValueError(f"k_shot must be a positive integer. Received: {k_shot!r}")
    k_shot = min(int(k_shot), max(int(k) for k in open_set["genuine_quantiles"]["distances"]))
    return genuine_distance(open_set, k_shot, shot_target(target, k_shot))


def genuine_distance(open_set: dict[str, Any], k_shot: int, rate: float) -> float:
    """The distance a fraction `rate` of new images of a `k_shot`-shot class exceed, from the calibration's
    `genuine_quantiles` table: interpolated in log(rate), and in 1/k between the tabulated shot counts."""
    table = open_set["genuine_quantiles"]
    rates = np.asarray(table["false_reject"], np.float64)  # increasing; the distances decrease along them
    log_rate = np.log(np.clip(rate, rates[0], rates[-1]))
    shots = sorted(int(k) for k in table["distances"])
    per_k = [float(np.interp(log_rate, np.log(rates), np.asarray(table["distances"][str(k)], np.float64)))
             for k in shots]
    # np.interp wants increasing x: 1/k decreases along `shots`.
    return float(np.interp(1.0 / min(k_shot, shots[-1]), [1.0 / k for k in shots[::-1]], per_k[::-1]))


def enrolled_probability(open_set: dict[str, Any], distance: np.ndarray, k_shot: np.ndarray,
                         n_classes: int) -> np.ndarray | None:
    """The calibrated probability that each query belongs to one of the `n_classes` enrolled classes,
    given its `distance` to the nearest prototype, whose class has `k_shot` shots: the calibration's logistic
    model (fitted on held-out groups, with enrolled and never-enrolled queries equally likely) on the
    distance in units of the class's median genuine distance, and ln(n_classes). None without a model."""
    model = open_set.get("probability") if isinstance(open_set, dict) else None
    if not model or not open_set.get("genuine_quantiles"):
        return None
    w0, w_distance, w_classes = (float(w) for w in model["coefficients"])
    k = np.atleast_1d(np.asarray(k_shot, np.int64))
    unique, where = np.unique(np.maximum(k, 1), return_inverse=True)
    median = np.array([genuine_distance(open_set, int(kk), 0.5) for kk in unique])[where]
    z = np.asarray(distance, np.float64) / np.maximum(median, 1e-12)
    logit = np.clip(w0 + w_distance * z + w_classes * np.log(max(int(n_classes), 1)), -50.0, 50.0)
    return 1.0 / (1.0 + np.exp(-logit))


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
    open-set calibration (`open_set`, a manifest's). With a `genuine_quantiles` calibration the threshold
    is that of the nearest class's own shot count (`genuine_threshold`); with an older `impostor_quantiles`
    table it follows the number of classes enrolled and their typical shot count, through `threshold_for`;
    without either, it is the calibration's fixed `threshold` (None when there is none).
    """

    def __init__(self, value: float | str | None, open_set: dict[str, Any] | None = None) -> None:
        value = check_threshold(value)
        open_set = open_set or {}
        self._open_set = open_set
        self._per_class_count = value == "calibrated" and bool(open_set.get("impostor_quantiles"))
        self.per_shot_count = value == "calibrated" and bool(open_set.get("genuine_quantiles"))
        self._cache: dict[Any, float] = {}
        if value == "calibrated":
            value = float(open_set["threshold"]) if "threshold" in open_set else None
        self.value: float | None = value  # the fixed distance (for a per-class-count table: as calibrated)

    def for_shots(self, k_shots: np.ndarray) -> np.ndarray | None:
        """Per query, the threshold for its nearest class of `k_shots` shots (a `genuine_quantiles`
        calibration; None when the threshold is not per shot count)."""
        if not self.per_shot_count:
            return None
        # Beyond the largest tabulated shot count the threshold no longer changes: the cache stays that small.
        largest = max(int(k) for k in self._open_set["genuine_quantiles"]["distances"])
        ks = np.clip(np.asarray(k_shots, np.int64), 1, largest)
        for k in set(ks.tolist()) - self._cache.keys():
            self._cache[k] = genuine_threshold(self._open_set, k)
        return np.array([self._cache[k] for k in ks.tolist()], np.float64)

    def for_classes(self, n_classes: int, k_shot: int) -> float | None:
        """The threshold with `n_classes` classes enrolled whose typical class has `k_shot` shots."""
        if self.per_shot_count:
            return genuine_threshold(self._open_set, max(1, k_shot))
        if not self._per_class_count:
            return self.value
        key = (n_classes, max(1, min(k_shot, 10)))
        if key not in self._cache:
            self._cache[key] = threshold_for(self._open_set, n_classes, k_shot=key[1])
        return self._cache[key]

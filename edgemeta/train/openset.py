"""Open-set rejection: calibrates, through a bundle, the nearest-prototype distance beyond which a query is "unknown".

`calibrate_unknown` (what `edgemeta export` stores) reads it on groups held out from the embedding's training,
for a stated rate of genuine queries rejected; `calibrate_open_set` is the older calibration for a stated
rate of strangers accepted, which does not transfer from training groups to new ones (docs/open-set.md).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import replace
from typing import Any

import numpy as np

from edgemeta.data.dataset import ImageClassDataset, PreprocessedImages, map_in_batches
from edgemeta.data.episodes import OpenSetEpisodes
from edgemeta.runtime.embedder import Embedder
from edgemeta.runtime.evaluation import ci95
from edgemeta.runtime.prototypes import for_metric, mean_prototypes, squared_distances
from edgemeta.runtime.threshold import genuine_distance, genuine_threshold, threshold_for

# Shot counts the per-class impostor table is tabulated for (threshold_for interpolates in 1/k).
TABLE_SHOTS = (1, 2, 5, 10)
TABLE_POINTS = 33
# The rate of genuine queries rejected by default: chosen on Omniglot background alphabets held out from
# training, as the largest rate whose Lake-style 20-way one-shot error (an "unknown" counted as an error) stays
# well under 8 % (docs/open-set.md: 5 % gave 10.2 %, 2 % gave 7.8 %, 1 % gave 6.9 %; 6.5 % with no threshold).
DEFAULT_FALSE_REJECT = 0.01
# Class counts the genuine table and the probability model are read over (those the data allows).
CALIBRATION_WAYS = (5, 10, 20)
# False-reject rates the genuine table is tabulated at (a user may ask the runtime for any in between).
GENUINE_RATES = tuple(float(f"{r:.4g}") for r in np.geomspace(0.002, 0.5, 25))


def calibrate_unknown(bundle_or_embedder: str | os.PathLike | Embedder, dataset,
                      target_false_reject: float = DEFAULT_FALSE_REJECT, episodes: int = 300, seed: int = 0,
                      n_query: int = 5, within_group: bool = True, ways: tuple[int, ...] = CALIBRATION_WAYS,
                      held_out: bool = True) -> dict[str, Any]:
    """The "unknown" calibration `edgemeta export` stores: read on `dataset`, which should hold groups
    (Omniglot: alphabets) held out from the embedding's training, since an embedding packs the classes it
    was trained on more tightly than new ones (`held_out=False` records that it was not).

    Episodes enroll N classes (each of `ways` the data allows) of 1 to 10 shots and measure, through the
    bundle (int8 effects included), the nearest-prototype distance of new images of enrolled classes (genuine)
    and of images of never-enrolled classes of the same group (impostors). Stores:
    - `genuine_quantiles`: per shot count, the genuine distance exceeded by each rate of `GENUINE_RATES`; the
      runtime's threshold for a k-shot class rejects `shot_target(target_false_reject, k)` of genuine queries;
    - `probability`: a logistic model of P(enrolled) on (nearest distance / the class's median genuine distance,
      ln N), fitted with enrolled and never-enrolled queries equally likely;
    - `rates`: what the threshold does on these episodes, per (N, k): genuine rejected, impostors accepted.

    Example:
        >>> open_set = calibrate_unknown("bundle/", held_out_set)  # doctest: +SKIP
        >>> update_open_set("bundle/", open_set)  # doctest: +SKIP
    """
    from sklearn.linear_model import LogisticRegression

    check_target(target_false_reject, "target_false_reject")
    embedder = _embedder(bundle_or_embedder)
    metric = embedder.manifest.metric
    x = for_metric(map_in_batches(embedder.embed_preprocessed, dataset.images).astype(np.float64), metric)
    sizes = [dataset.groups.count(g) for g in set(dataset.groups)] if within_group else [dataset.num_classes]
    ways = [n for n in ways if n < max(sizes)] or [max(sizes) - 1]
    if ways[0] < 1:
        raise ValueError(f"Calibrating 'unknown' needs a group of at least 2 classes. Received: {dataset!r}")
    own: dict[int, list[np.ndarray]] = {}
    nearest: list[tuple[int, int, np.ndarray, np.ndarray]] = []  # (N, k, genuine nearest, impostor nearest)
    descriptions = []
    with _one_blas_thread():
        for n_way in ways:
            sampler = _episodes(dataset, n_way, 1, n_query, episodes, seed + n_way, within_group, max(TABLE_SHOTS))
            descriptions.append(sampler.description)
            for shots, genuine, impostors in sampler.take(episodes):
                for k in (k for k in TABLE_SHOTS if k <= sampler.shots):
                    d = prototype_distances(x, shots[:, :k], np.concatenate([genuine, impostors]), metric)
                    # The nearest prototype's distance, which the runtime compares, not the own class's: with
                    # many look-alike classes a genuine query is often nearer another one (then it is accepted).
                    own.setdefault(k, []).append(d[: len(genuine)].min(1))
                    nearest.append((n_way, k, d[: len(genuine)].min(1), d[len(genuine) :].min(1)))
    rates = np.array(GENUINE_RATES)
    open_set: dict[str, Any] = {
        "target_false_reject": float(target_false_reject),
        "genuine_quantiles": {
            "false_reject": rates.tolist(),
            "distances": {str(k): [round(float(d), 5) for d in np.quantile(np.concatenate(v), 1.0 - rates)]
                          for k, v in sorted(own.items())},
            "samples_per_shot_count": int(min(sum(len(a) for a in v) for v in own.values())),
        },
        "metric": metric, "episodes": int(episodes), "within_group": bool(within_group), "held_out": bool(held_out),
        "ways": [int(n) for n in ways],
        "calibrated_on": "; ".join(dict.fromkeys(descriptions)),
    }
    open_set["threshold"] = round(genuine_distance(open_set, 1, target_false_reject), 5)  # one shot, for older readers
    # P(enrolled): genuine and impostor nearest distances, in units of the class's median genuine distance.
    features, enrolled = [], []
    for n_way, k, g, i in nearest:
        median = genuine_distance(open_set, k, 0.5)
        for values, label in ((g, 1), (i, 0)):
            features.append(np.stack([values / median, np.full(len(values), np.log(n_way))], 1))
            enrolled.append(np.full(len(values), label))
    model = LogisticRegression(class_weight="balanced").fit(np.concatenate(features), np.concatenate(enrolled))
    open_set["probability"] = {
        "coefficients": [round(float(model.intercept_[0]), 6), *(round(float(w), 6) for w in model.coef_[0])],
        "features": ["1", "nearest distance / median genuine distance at the class's shots", "ln(classes enrolled)"],
        "prior_enrolled": 0.5,
    }
    open_set["rates"] = {}
    for n_way in ways:
        for k in sorted(own):
            t = genuine_threshold(open_set, k)
            g = np.concatenate([gg for n, kk, gg, _ in nearest if n == n_way and kk == k])
            i = np.concatenate([ii for n, kk, _, ii in nearest if n == n_way and kk == k])
            open_set["rates"][f"{n_way}x{k}"] = {"false_reject": round(float(np.mean(g > t)), 5),
                                                 "false_accept": round(float(np.mean(i <= t)), 5)}
    return open_set


def calibrate_open_set(bundle_or_embedder: str | os.PathLike | Embedder, dataset, target_false_accept: float = 0.05,
                       n_way: int = 20, k_shot: int = 1, episodes: int = 300, seed: int = 0, n_query: int = 5,
                       within_group: bool = True) -> dict[str, Any]:
    """Calibrates the open-set threshold of a bundle on `dataset` (an `ImageClassDataset` of classes
    the bundle may have been trained on; see `drop_rotated_copies`).

    Each episode enrolls `n_way` classes with `k_shot` shots (a prototype = mean of the metric-mapped
    shot embeddings, as `FewShotAdapter` computes it) and measures the nearest-prototype distance of
    never-enrolled queries (impostors: images of the dataset's other classes) and of `n_query` new
    images of each enrolled class (genuine). `threshold` is the `target_false_accept` quantile of the
    impostor distances: that fraction of never-enrolled queries would still be accepted.

    With `within_group`, an episode's classes and impostors come from one group (Omniglot: one
    alphabet) — the hardest impostors, characters of the same script. Embeddings come from the bundle
    through the runtime, so int8 effects are included; each image is embedded once.

    Besides the fixed threshold (valid for `n_way` classes of `k_shot` shots), returns
    `impostor_quantiles`: the distribution of an impostor's distance to ONE prototype, for
    `edgemeta.runtime.threshold.threshold_for` to derive the threshold for other class counts.
    """
    check_target(target_false_accept)
    embedder = _embedder(bundle_or_embedder)
    ks = sorted({int(k_shot), *TABLE_SHOTS})
    sampler = _episodes(dataset, n_way, k_shot, n_query, episodes, seed, within_group, shots_needed=max(ks))
    # Classes too small for the larger table shot counts just leave those counts out of the table.
    ks = [k for k in ks if k <= sampler.shots]
    metric = embedder.manifest.metric
    x = for_metric(map_in_batches(embedder.embed_preprocessed, dataset.images).astype(np.float64), metric)
    nearest_impostor, nearest_genuine, per_class = [], [], {k: [] for k in ks}
    with _one_blas_thread():
        for shots, genuine, impostors in sampler.take(episodes):
            queries = np.concatenate([impostors, genuine])
            for k in ks:
                d = prototype_distances(x, shots[:, :k], queries, metric)
                per_class[k].append(d[: len(impostors)].ravel())
                if k == k_shot:
                    nearest_impostor.append(d[: len(impostors)].min(1))
                    nearest_genuine.append(d[len(impostors) :].min(1))
    nearest_impostor, nearest_genuine = np.concatenate(nearest_impostor), np.concatenate(nearest_genuine)
    threshold = float(np.quantile(nearest_impostor, target_false_accept))
    samples = {k: np.concatenate(v) for k, v in per_class.items()}
    n = min(len(v) for v in samples.values())
    # Down to the rarest quantile the samples still pin down (~20 below it), up to the median.
    probabilities = np.geomspace(max(20.0 / n, 1e-7), 0.5, TABLE_POINTS)
    return {
        "threshold": round(threshold, 5),
        "target_false_accept": float(target_false_accept),
        "n_way": sampler.n_way,
        "k_shot": int(k_shot),
        "episodes": int(episodes),
        "metric": metric,
        "within_group": bool(within_group),
        "false_reject_rate": round(float(np.mean(nearest_genuine > threshold)), 5),
        "calibrated_on": sampler.description,
        "impostor_quantiles": {
            "probabilities": [float(f"{p:.6g}") for p in probabilities],
            "distances": {str(k): [round(float(d), 5) for d in np.quantile(samples[k], probabilities)] for k in ks},
            "samples_per_shot_count": int(n),
            "model": "per-class distance distribution F; threshold for N classes = F^-1(1 - (1 - target)^(1/N))",
        },
    }


# Images per class that calibration reads of a dataset preprocessed on read (mini-ImageNet `train`: 30 of 300).
LARGE_SET_IMAGES_PER_CLASS = 30


def calibrate_training_set(bundle_or_embedder: str | os.PathLike | Embedder, train_set, target_false_accept: float = 0.05,
                           n_way: int = 20, k_shot: int = 1, episodes: int = 300, seed: int = 0) -> dict[str, Any]:
    """What `export_run` stores: `calibrate_open_set` on a run's own training classes, upright only
    (`drop_rotated_copies`), with impostors from the enrolled classes' group, and `n_way` lowered to
    fit the data (one class fewer than the largest group, so some class is never enrolled)."""
    check_target(target_false_accept)
    upright = drop_rotated_copies(train_set)
    if isinstance(upright.images, PreprocessedImages):  # a large photo set: its first images of each class suffice
        keep = np.concatenate([np.flatnonzero(upright.labels == c)[:LARGE_SET_IMAGES_PER_CLASS]
                               for c in range(upright.num_classes)])
        upright = replace(upright, images=upright.images.take(keep), labels=upright.labels[keep],
                          raw=None if upright.raw is None else [upright.raw[i] for i in keep])
    largest_group = max(upright.groups.count(g) for g in set(upright.groups))
    if largest_group < 2:
        raise ValueError(f"Open-set calibration needs a group with at least 2 classes. Received: {upright!r}")
    return calibrate_open_set(bundle_or_embedder, upright, target_false_accept, min(n_way, largest_group - 1), k_shot,
                              episodes, seed, within_group=True)


def unknown_rate(bundle_or_embedder: str | os.PathLike | Embedder, dataset, threshold: float | dict[str, Any],
                 n_way: int = 20, k_shot: int = 1, episodes: int = 300, seed: int = 1, n_query: int = 5,
                 within_group: bool = False) -> dict[str, Any]:
    """Measures, on `dataset` (classes the calibration never saw), what `threshold` does: the fraction
    of never-enrolled queries called unknown, and for queries of enrolled classes the false-reject rate
    and accuracy. `threshold` is a distance, or a calibration dict (a manifest's `open_set`), in which
    case `threshold_for(open_set, n_way, k_shot=k_shot)` picks the distance for this episode setting.
    The 95 % intervals are over episodes (queries of one episode share its prototypes)."""
    embedder = _embedder(bundle_or_embedder)
    if isinstance(threshold, dict):
        threshold = threshold_for(threshold, n_way, k_shot=k_shot)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not np.isfinite(threshold) or threshold < 0:
        raise ValueError(f"threshold must be a non-negative distance or an open_set dict. Received: {threshold!r}")
    sampler = _episodes(dataset, n_way, k_shot, n_query, episodes, seed, within_group, shots_needed=k_shot)
    metric = embedder.manifest.metric
    x = for_metric(map_in_batches(embedder.embed_preprocessed, dataset.images).astype(np.float64), metric)
    rejected, false_reject, correct, correct_accepted = [], [], [], []
    truth = np.repeat(np.arange(sampler.n_way), n_query)
    with _one_blas_thread():
        for shots, genuine, impostors in sampler.take(episodes):
            d = prototype_distances(x, shots, np.concatenate([impostors, genuine]), metric)
            di, dg = d[: len(impostors)], d[len(impostors) :]
            rejected.append(di.min(1) > threshold)
            accepted = dg.min(1) <= threshold
            right = dg.argmin(1) == truth
            false_reject.append(~accepted)
            correct.append(right)
            correct_accepted.append(right & accepted)

    def rate(parts: list[np.ndarray]) -> tuple[float, float]:
        per_episode = np.array([p.mean() for p in parts])
        return float(np.concatenate(parts).mean()), ci95(per_episode)

    (unknown, unknown_ci), (frr, frr_ci) = rate(rejected), rate(false_reject)
    return {
        "threshold": float(threshold), "n_way": sampler.n_way, "k_shot": int(k_shot), "episodes": int(episodes),
        "within_group": bool(within_group),
        "unknown_rate": unknown, "unknown_rate_ci95": unknown_ci, "false_accept_rate": 1.0 - unknown,
        "false_reject_rate": frr, "false_reject_rate_ci95": frr_ci,
        "accuracy": rate(correct)[0], "accepted_accuracy": rate(correct_accepted)[0],
        "impostor_queries": int(sum(len(r) for r in rejected)), "genuine_queries": int(sum(len(r) for r in correct)),
        "measured_on": sampler.description,
    }


def prototype_distances(mapped: np.ndarray, shots: np.ndarray, queries: np.ndarray, metric: str) -> np.ndarray:
    """The adapter's distance, `(n_queries, n_classes)`: `mapped` holds `for_metric`-mapped embeddings;
    class c's prototype is `mean_prototypes` of rows `shots[c]`."""
    return squared_distances(mapped[queries], mean_prototypes(mapped[shots], metric))


def drop_rotated_copies(dataset):
    """`dataset` without the rotated copies `ImageClassDataset.with_rotations` adds (named `…@rot90` etc.):
    a user enrolls upright characters, and a character's own rotation is an unrealistically easy impostor."""
    keep = [c for c, name in enumerate(dataset.class_names) if "@rot" not in name]
    return dataset if len(keep) == dataset.num_classes else dataset.subset(classes=keep)


def _one_blas_thread():
    """Episodes make thousands of tiny matrix products; OpenBLAS threads on them cost ~10x more than
    they save on a busy 2-core machine (measured), so they run single-threaded when threadpoolctl exists."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def check_target(target: float, name: str = "target_false_accept") -> None:
    """Raises unless `target` is a rate in (0, 1)."""
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0.0 < target < 1.0:
        raise ValueError(f"{name} must be a rate in (0, 1), e.g. 0.05. Received: {target!r}")


def _episodes(dataset: ImageClassDataset, n_way: int, k_shot: int, n_query: int, episodes: int, seed: int,
              within_group: bool, shots_needed: int) -> OpenSetEpisodes:
    """The open-set episodes (`edgemeta.data.episodes.OpenSetEpisodes`) of which the first `episodes` are measured."""
    if isinstance(episodes, bool) or not isinstance(episodes, (int, np.integer)) or episodes < 1:
        raise ValueError(f"episodes must be a positive integer. Received: {episodes!r}")
    return OpenSetEpisodes(dataset, n_way, k_shot, n_query, within_group, seed, shots_needed)


def _embedder(bundle_or_embedder: str | os.PathLike | Embedder) -> Embedder:
    if isinstance(bundle_or_embedder, Embedder):
        return bundle_or_embedder
    if isinstance(bundle_or_embedder, (str, os.PathLike)):
        return Embedder.from_bundle(bundle_or_embedder)
    raise TypeError(f"Expected a bundle directory or an Embedder. Received: {type(bundle_or_embedder).__name__}")

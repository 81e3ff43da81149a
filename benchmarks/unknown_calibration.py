"""Does "unknown" transfer to new groups? Leave-one-group-out over groups a bundle never trained on.

For each held-out group (Omniglot: alphabet), calibrates the bundle's "unknown" as `edgemeta export` does
(`calibrate_unknown`) on the other groups, then measures on the left-out one, in within-group episodes (the
hardest strangers: other characters of the same alphabet) and with strangers from the other groups:
- genuine queries rejected (false reject) and never-enrolled queries accepted (false accept), at the default
  target and along a curve of targets, for 1 and 5 shots and 5 and 20 classes;
- how well `Prediction.probability` is calibrated (enrolled and never-enrolled queries equally many);
- Lake's 20-way one-shot runs with the defaults, an "unknown" counted as an error;
- which score separates enrolled from never-enrolled queries best: the nearest distance (what the runtime
  thresholds, per shot count), the nearest-to-second ratio, or their product.
Rates pool the queries of every left-out group; "per group" gives each group's own rate.

    python benchmarks/unknown_calibration.py edgemeta/presets/omniglot \\
        --data-dir ../shared/datasets/omniglot-background --out runs/unknown-calibration
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from omniglot_lake import lake_protocol  # its sibling script (benchmarks run as scripts: this folder is on sys.path)

from edgemeta.cpu import cpu_line
from edgemeta.data.dataset import map_in_batches
from edgemeta.data.episodes import OpenSetEpisodes
from edgemeta.data.splits import OMNIGLOT_SELECTION
from edgemeta.runtime import Embedder, FewShotAdapter
from edgemeta.runtime.prototypes import for_metric
from edgemeta.runtime.threshold import enrolled_probability, genuine_threshold
from edgemeta.train.openset import DEFAULT_FALSE_REJECT, calibrate_unknown, prototype_distances

SETTINGS = ((5, 1), (5, 5), (20, 1), (20, 5))
CURVE_TARGETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2)


def fold_distances(x: np.ndarray, dataset, x_strangers: np.ndarray, n_way: int, k_shot: int, episodes: int,
                   metric: str):
    """Over `episodes` within-group open-set episodes of `dataset` (embedded as `x`): the genuine queries'
    nearest distance and whether that class is right, the same-group impostors' nearest distance, as many
    strangers' (random rows of `x_strangers`, other groups' images) nearest distance, and the genuine queries' and
    impostors' nearest-to-second distance ratios (the alternative score `score_comparison` weighs)."""
    sampler = OpenSetEpisodes(dataset, n_way, k_shot, 5, True, seed=1000 + 10 * n_way + k_shot)
    rng = np.random.default_rng(n_way * 100 + k_shot)
    truth = np.repeat(np.arange(n_way), 5)
    pool = np.concatenate([x, x_strangers])
    g, right, i, s, ratios = [], [], [], [], []
    for shots, genuine, impostors in sampler.take(episodes):
        strangers = len(x) + rng.choice(len(x_strangers), len(genuine), replace=False)
        d = prototype_distances(pool, shots, np.concatenate([genuine, impostors, strangers]), metric)
        g.append(d[: len(genuine)].min(1))
        right.append(d[: len(genuine)].argmin(1) == truth)
        i.append(d[len(genuine) : len(genuine) + len(impostors)].min(1))
        s.append(d[len(genuine) + len(impostors) :].min(1))
        two = np.sort(d[: len(genuine) + len(impostors)], axis=1)[:, :2]
        ratios.append(two[:, 0] / np.maximum(two[:, 1], 1e-12))
    ratio = np.concatenate(ratios).reshape(-1, len(genuine) + len(impostors))
    return (np.concatenate(g), np.concatenate(right), np.concatenate(i), np.concatenate(s),
            (ratio[:, : len(genuine)].ravel(), ratio[:, len(genuine) :].ravel()))


def score_comparison(scores: dict[str, tuple[np.ndarray, np.ndarray]], false_reject: float) -> dict[str, dict]:
    """Per score (genuine, impostor values; lower means enrolled): the area under the ROC curve and the impostors
    accepted at the threshold that rejects `false_reject` of the genuine queries. The threshold is read on the
    same queries (an oracle, alike for every score), so this compares how well each score separates, not how
    well its calibration transfers."""
    from sklearn.metrics import roc_auc_score

    out = {}
    for name, (genuine, impostor) in scores.items():
        cut = np.quantile(genuine, 1 - false_reject)
        y = np.r_[np.ones(len(genuine)), np.zeros(len(impostor))]
        out[name] = {"auroc": float(roc_auc_score(y, -np.r_[genuine, impostor])),
                     "false_accept": float(np.mean(impostor <= cut))}
    return out


def main() -> None:
    from edgemeta.data.omniglot import load_omniglot

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", help="a bundle that never trained on --groups")
    parser.add_argument("--data-dir", help="Omniglot background zip's folder (default $EDGEMETA_OMNIGLOT_DIR)")
    parser.add_argument("--groups", nargs="+", default=list(OMNIGLOT_SELECTION), help="alphabets held out of its training")
    parser.add_argument("--episodes", type=int, default=300, help="episodes per setting and fold")
    parser.add_argument("--lake-runs", type=int, default=100, help="Lake runs per fold")
    parser.add_argument("--out", default="runs/unknown-calibration")
    args = parser.parse_args()
    started = time.time()
    embedder = Embedder.from_bundle(args.bundle)
    metric = embedder.manifest.metric
    full = load_omniglot(args.data_dir, alphabets=args.groups, preprocessing=embedder.manifest.preprocessing,
                         download=False)
    groups = sorted(set(full.groups))
    rows: dict[tuple, list] = {}
    scores: dict[tuple, dict[str, list]] = {}
    lake = []
    reliability = {"p": [], "enrolled": []}
    for held in groups:
        others = [c for c in range(full.num_classes) if full.groups[c] != held]
        calibration_set = full.subset(classes=others)
        test_set = full.subset(classes=[c for c in range(full.num_classes) if full.groups[c] == held])
        open_set = calibrate_unknown(embedder, calibration_set, episodes=args.episodes)
        in_held = np.array([full.groups[c] == held for c in full.labels])
        x = for_metric(map_in_batches(embedder.embed_preprocessed, full.images).astype(np.float64), metric)
        for n_way, k in SETTINGS:
            g, right, i, s, (g_ratio, i_ratio) = fold_distances(x[in_held], test_set, x[~in_held], n_way, k,
                                                                args.episodes, metric)
            for name, pair in (("nearest distance", (g, i)), ("nearest / second distance", (g_ratio, i_ratio)),
                               ("distance x ratio", (g * g_ratio, i * i_ratio))):
                scores.setdefault((n_way, k), {}).setdefault(name, []).append(pair)
            rows.setdefault((n_way, k, True), []).append((held, g, right, i, open_set))
            rows.setdefault((n_way, k, False), []).append((held, g, right, s, open_set))
            p = np.concatenate([enrolled_probability(open_set, g, np.full(len(g), k), n_way),
                                enrolled_probability(open_set, i, np.full(len(i), k), n_way)])
            reliability["p"].append(p)
            reliability["enrolled"].append(np.r_[np.ones(len(g)), np.zeros(len(i))])
        threshold = genuine_threshold(open_set, 1)
        result = lake_protocol(lambda t=threshold: FewShotAdapter(embedder, unknown_threshold=t), test_set,
                               runs=args.lake_runs, seed=0)
        lake.append({"group": held, **result})
        print(f"{held}: calibrated on the other {len(groups) - 1}; Lake error {100 * result['error_rate']:.2f} % "
              f"(unknown = error), {100 * result['nearest_error_rate']:.2f} % nearest only", flush=True)
    report = {"bundle": args.bundle, "groups": groups, "cpu": cpu_line(), "episodes": args.episodes,
              "target_false_reject": DEFAULT_FALSE_REJECT, "settings": [], "curve": [], "lake": lake}
    for (n_way, k, within), folds in rows.items():
        t = [genuine_threshold(o, k) for *_, o in folds]
        frr = [np.mean(g > tt) for (_, g, _, _, _), tt in zip(folds, t)]
        far = [np.mean(i <= tt) for (_, _, _, i, _), tt in zip(folds, t)]
        pooled_frr = np.mean(np.concatenate([g > tt for (_, g, _, _, _), tt in zip(folds, t)]))
        pooled_far = np.mean(np.concatenate([i <= tt for (_, _, _, i, _), tt in zip(folds, t)]))
        report["settings"].append({"n_way": n_way, "k_shot": k, "strangers": "same group" if within else "any group",
                                   "error_without_threshold": float(1 - np.mean(np.concatenate([r for _, _, r, _, _ in folds]))),
                                   "false_reject": float(pooled_frr), "false_accept": float(pooled_far),
                                   "false_reject_per_group": dict(zip(groups, map(float, frr))),
                                   "false_accept_per_group": dict(zip(groups, map(float, far)))})
        for target in CURVE_TARGETS:
            tt = [genuine_threshold(o, k, target) for *_, o in folds]
            rejected = np.concatenate([g > a for (_, g, _, _, _), a in zip(folds, tt)])
            # An "unknown" counted as an error, as Lake's runs count it: how targets were chosen.
            right = np.concatenate([r & (g <= a) for (_, g, r, _, _), a in zip(folds, tt)])
            accepted = np.concatenate([i <= a for (_, _, _, i, _), a in zip(folds, tt)])
            report["curve"].append({"n_way": n_way, "k_shot": k, "strangers": "same group" if within else "any group",
                                    "target": target, "false_reject": float(np.mean(rejected)),
                                    "error": float(1 - np.mean(right)), "false_accept": float(np.mean(accepted))})
    p, y = np.concatenate(reliability["p"]), np.concatenate(reliability["enrolled"])
    bins = np.minimum((p * 10).astype(int), 9)
    table = [{"bin": f"{b / 10:.1f}-{(b + 1) / 10:.1f}", "queries": int(np.sum(bins == b)),
              "mean_probability": float(p[bins == b].mean()), "enrolled_fraction": float(y[bins == b].mean())}
             for b in range(10) if np.any(bins == b)]
    gaps = [r["queries"] * abs(r["mean_probability"] - r["enrolled_fraction"]) for r in table]
    report["probability"] = {"expected_calibration_error": float(sum(gaps) / len(p)),
                             "brier": float(np.mean((p - y) ** 2)), "bins": table}
    report["scores"] = [
        {"n_way": n_way, "k_shot": k, "strangers": "same group", **score_comparison(
            {name: (np.concatenate([a for a, _ in pairs]), np.concatenate([b for _, b in pairs]))
             for name, pairs in by_name.items()}, DEFAULT_FALSE_REJECT)}
        for (n_way, k), by_name in scores.items()]
    report["lake_error_rate"] = float(np.mean([r["error_rate"] for r in lake]))
    report["lake_nearest_error_rate"] = float(np.mean([r["nearest_error_rate"] for r in lake]))
    report["seconds"] = round(time.time() - started, 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k not in ("curve", "lake", "probability")}, indent=1))


if __name__ == "__main__":
    main()

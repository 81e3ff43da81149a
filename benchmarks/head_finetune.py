"""Does fine-tuning a softmax head on the support shots beat nearest-prototype? Accuracy and fit time on held-out classes.

Embeds every held-out image once with the bundle (the TFLite runtime), then on identical seeded
episodes (`EpisodeSampler(..., n_query=5, seed=1)`, as the compression report uses) compares the
prototype classifier with `SoftmaxHead` fitted for a few step counts, and times each fit (numpy only,
what the board would run after `enroll`). Writes report.md and report.json to --out.

    python benchmarks/head_finetune.py --bundle runs/compression/int8 \
        --data-dir /work/shared/datasets/omniglot --out runs/head
    python benchmarks/head_finetune.py --bundle runs/demo/bundle-int8 --dataset digits --out runs/head-digits
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from edgemeta.data import ImageClassDataset, load_digits, load_omniglot
from edgemeta.format.preprocessing import Preprocessing
from edgemeta.runtime import Embedder
from edgemeta.runtime.evaluation import ci95
from edgemeta.runtime.head import SoftmaxHead
from edgemeta.runtime.prototypes import for_metric, squared_distances
from edgemeta.train.episodes import EpisodeSampler
from edgemeta.train.training import OMNIGLOT_TEST

TASKS = ((5, 1), (5, 5), (20, 5))
# (name, SoftmaxHead.fit / from_prototypes keywords); every head uses the library defaults otherwise.
HEADS = (
    ("head, 10 steps", {"steps": 10}),
    ("head, 50 steps", {"steps": 50}),
    ("head, 100 steps", {"steps": 100}),
    ("head, 50 steps, temperature 4", {"steps": 50, "temperature": 4.0}),
)


def mean_ci(values) -> tuple[float, float]:
    return float(np.mean(values)), ci95(values)


def evaluate_task(z: np.ndarray, sampler: EpisodeSampler, episodes: int, metric: str) -> dict:
    """Per-episode accuracies of prototypes and of every head on the same episodes, and fit times."""
    n_way = sampler.n_way
    labels = [str(c) for c in range(n_way)]
    acc: dict[str, list[float]] = {"prototypes": [], **{name: [] for name, _ in HEADS}}
    fit_ms: dict[str, list[float]] = {name: [] for name, _ in HEADS}
    # drawn before any timing, so tf.data's background threads do not run during the fits
    tasks = list(sampler.indices().take(episodes).as_numpy_iterator())
    for s_idx, s_lab, q_idx, q_lab in tasks:
        support, query = z[s_idx], z[q_idx]
        # the adapter's prototypes: class means, mapped like the embeddings (a no-op for squared_euclidean)
        protos = for_metric(np.stack([support[s_lab == c].mean(0) for c in range(n_way)]), metric)
        acc["prototypes"].append(float(np.mean(squared_distances(query, protos).argmin(1) == q_lab)))
        for name, kwargs in HEADS:
            kwargs = dict(kwargs)
            temperature = kwargs.pop("temperature", 1.0)
            start = time.perf_counter()
            head = SoftmaxHead.from_prototypes(protos, labels, temperature)
            head.fit(support, s_lab, **kwargs)
            fit_ms[name].append(1000 * (time.perf_counter() - start))
            acc[name].append(float(np.mean(head.predict(query)[0] == q_lab)))
    base = np.asarray(acc["prototypes"])
    rows = {}
    for name, values in acc.items():
        mean, ci = mean_ci(values)
        delta, delta_ci = mean_ci(np.asarray(values) - base)  # paired: same episodes
        rows[name] = {"accuracy": mean, "ci95": ci, "delta_vs_prototypes": delta, "delta_ci95": delta_ci,
                      "episodes_changed": int(np.sum(np.asarray(values) != base))}
        if name in fit_ms:
            t = np.asarray(fit_ms[name])
            rows[name]["fit_ms_median"] = float(np.median(t))
            rows[name]["fit_ms_p95"] = float(np.percentile(t, 95))
            rows[name]["fit_ms_min"] = float(t.min())  # the least-disturbed run: closest to the uncontended cost
    return rows


def held_out_set(dataset: str, data_dir: str | None, preprocessing: Preprocessing) -> ImageClassDataset:
    """The classes the bundle's network never saw, preprocessed as the bundle expects."""
    if dataset == "digits":
        return load_digits(preprocessing).subset(classes=range(5, 10))
    return load_omniglot(data_dir, preprocessing=preprocessing, download=False).subset(groups=list(OMNIGLOT_TEST))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default="runs/compression/int8")
    parser.add_argument("--dataset", choices=("omniglot", "digits"), default="omniglot",
                        help="omniglot: the held-out alphabets; digits: classes 5-9 (a digits run meta-trains on 0-4)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default="runs/head")
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    load_average = [round(x, 1) for x in os.getloadavg()]

    embedder = Embedder.from_bundle(args.bundle)
    test_set = held_out_set(args.dataset, args.data_dir, embedder.preprocessing)
    metric = embedder.manifest.metric
    start = time.perf_counter()
    z = for_metric(embedder.embed_preprocessed(test_set.images).astype(np.float64), metric)
    embed_s = time.perf_counter() - start

    results = {}
    fewest = int(np.bincount(test_set.labels).min())
    for n_way, k_shot in [(n, k) for n, k in TASKS if n <= test_set.num_classes and k + 5 <= fewest]:
        sampler = EpisodeSampler(test_set, n_way, k_shot, 5, seed=args.seed)
        results[f"{n_way}-way {k_shot}-shot"] = evaluate_task(z, sampler, args.episodes, metric)
        print(f"{n_way}-way {k_shot}-shot:",
              {k: round(100 * v["accuracy"], 2) for k, v in results[f"{n_way}-way {k_shot}-shot"].items()}, flush=True)

    command = (f"python benchmarks/head_finetune.py --bundle {args.bundle}"
               + (f" --dataset {args.dataset}" if args.dataset != "omniglot" else f" --data-dir {args.data_dir}")
               + f" --out {args.out}"
               + (f" --episodes {args.episodes}" if args.episodes != 600 else "")
               + (f" --seed {args.seed}" if args.seed != 1 else ""))
    report = {
        "command": command,
        "bundle": str(args.bundle),
        "dataset": args.dataset,
        "held_out_groups": sorted(set(test_set.groups)) if args.dataset == "omniglot" else list(test_set.class_names),
        "held_out_images": len(test_set),
        "held_out_classes": test_set.num_classes,
        "metric": metric,
        "episodes": args.episodes,
        "n_query": 5,
        "seed": args.seed,
        "head_defaults": {**{k: p.default for k, p in inspect.signature(SoftmaxHead.fit).parameters.items()
                             if k in ("steps", "learning_rate", "weight_decay")},
                          "temperature": inspect.signature(SoftmaxHead.from_prototypes).parameters["temperature"].default},
        "heads": {name: kwargs for name, kwargs in HEADS},
        "embed_all_images_s": embed_s,
        "machine": {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                    "python": platform.python_version(), "numpy": np.__version__,
                    "load_average": load_average},  # other jobs on the machine slow the fits
        "results": results,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(markdown(report))
    print((out / "report.md").read_text())


def markdown(report: dict) -> str:
    lines = [
        f"# Softmax head vs prototypes: {report['bundle']}",
        "",
        (f"Held-out {'alphabets' if report['dataset'] == 'omniglot' else 'classes'} "
         f"{', '.join(report['held_out_groups'])} ({report['held_out_classes']} classes, "
        f"{report['held_out_images']} images, each embedded once). {report['episodes']} episodes per task, "
        f"{report['n_query']} queries per class, episode seed {report['seed']}; every column is on the same episodes. "
        "Accuracy in %, ± 95 % CI; Δ is head minus prototypes per episode (paired), ± its 95 % CI; "
        "'changed' counts episodes whose accuracy differs from the prototypes'. Fit time: median (p95, min) wall time "
        "of `from_prototypes` + `fit` per episode on this machine "
        f"({report['machine']['cpus']} CPUs, numpy {report['machine']['numpy']}, load average at start "
         f"{report['machine']['load_average']})."),
        "",
        "| task | classifier | accuracy | Δ vs prototypes | changed | fit ms: median (p95, min) |",
        "|---|---|---|---|---|---|",
    ]
    for task, rows in report["results"].items():
        for name, r in rows.items():
            fit = f"{r['fit_ms_median']:.2f} ({r['fit_ms_p95']:.2f}, {r['fit_ms_min']:.2f})" if "fit_ms_median" in r else "–"
            delta = f"{100 * r['delta_vs_prototypes']:+.2f} ± {100 * r['delta_ci95']:.2f}" if name != "prototypes" else "–"
            lines.append(f"| {task} | {name} | {100 * r['accuracy']:.2f} ± {100 * r['ci95']:.2f} | {delta} | "
                         f"{r['episodes_changed'] if name != 'prototypes' else '–'} | {fit} |")
    lines += ["", f"Head defaults: {report['head_defaults']}.", "", f"Command: `{report['command']}`", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

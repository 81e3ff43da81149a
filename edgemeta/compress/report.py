"""Measures a compressed bundle (size, sparsity, cost, latency, few-shot accuracy) and writes the report."""

from __future__ import annotations

import gzip
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgemeta.format.bundle import MODEL_FILE
from edgemeta.train.backend import keras

TASKS = ((5, 1), (20, 1))


def count_macs(model: keras.Model) -> int:
    """Multiply-accumulates of one image through `model`'s conv and dense layers (dense count: zeros
    left by pruning are counted, as kernels without sparse support run them)."""
    macs = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.DepthwiseConv2D):  # a Conv2D subclass: test it first
            _, h, w, c = layer.output_shape
            macs += h * w * c * int(np.prod(layer.kernel_size))
        elif isinstance(layer, keras.layers.Conv2D):
            _, h, w, c = layer.output_shape
            macs += h * w * c * int(np.prod(layer.kernel.shape[:-1])) // layer.groups
        elif isinstance(layer, keras.layers.Dense):
            macs += int(np.prod(layer.kernel.shape))
    return int(macs)


def measure_bundle(model: keras.Model, bundle: str | Path, test_set, episodes: int = 600, tasks: Sequence = TASKS,
                   seed: int = 1, n_query: int = 5) -> dict[str, Any]:
    """Everything the report lists for one variant. `model` is its float Keras model before
    quantization (for parameters, multiply-accumulates and sparsity); accuracy and latency are measured
    through the runtime on `bundle`, on held-out `test_set` episodes, one interpreter thread."""
    from edgemeta.compress.pruning import kernel_sparsity
    from edgemeta.runtime import Embedder, FewShotAdapter
    from edgemeta.runtime.evaluation import evaluate_adapter, per_image_latency_ms
    from edgemeta.train.episodes import EpisodeSampler

    model_bytes = (Path(bundle) / MODEL_FILE).read_bytes()
    embedder = Embedder.from_bundle(bundle, num_threads=1)
    row: dict[str, Any] = {
        "tflite_bytes": len(model_bytes),
        "gzip_bytes": len(gzip.compress(model_bytes, compresslevel=9, mtime=0)),
        "sparsity": round(kernel_sparsity(model), 4),
        "params": int(model.count_params()),
        "macs": count_macs(model),
        "latency_ms": round(per_image_latency_ms(embedder, test_set.raw[0]), 4),
        "accuracy": {},
    }
    for n_way, k_shot in feasible_tasks(test_set, tasks, n_query):
        sampler = EpisodeSampler(test_set, n_way, k_shot, n_query, seed=seed)
        result = evaluate_adapter(lambda: FewShotAdapter(embedder), sampler, episodes)
        row["accuracy"][f"{n_way}-way {k_shot}-shot"] = result.to_dict()
    return row


def side_by_side_latency_ms(bundles: Sequence[str | Path], image: np.ndarray, rounds: int = 25,
                            calls: int = 20) -> list[dict[str, float]]:
    """Median per-image latency of each bundle with 1 interpreter thread: `raw` (a raw image, preprocessing
    included, what `classify` costs) and `model` (the interpreter alone on a preprocessed image).
    Measured in interleaved rounds so every bundle sees the same machine load: their ratios hold even
    when absolute times drift."""
    import time

    from edgemeta.runtime import Embedder

    embedders = [Embedder.from_bundle(b, num_threads=1) for b in bundles]
    preprocessed = embedders[0].preprocessing(image) if embedders else None  # (1, H, W, C): same for every variant
    for e in embedders:
        e.embed(image)  # warm-up: first invocation allocates
    times = [{"raw": [], "model": []} for _ in embedders]
    for _ in range(rounds):
        for e, t in zip(embedders, times):
            for kind, call, arg in (("raw", e.embed, image), ("model", e.embed_preprocessed, preprocessed)):
                for _ in range(calls):
                    start = time.perf_counter()
                    call(arg)
                    t[kind].append(time.perf_counter() - start)
    return [{kind: round(1000 * float(np.median(v)), 4) for kind, v in t.items()} for t in times]


def feasible_tasks(test_set, tasks: Sequence = TASKS, n_query: int = 5) -> list[tuple[int, int]]:
    """The (way, shot) tasks the held-out set has enough classes and images for."""
    fewest = int(np.bincount(test_set.labels).min())
    return [(n, k) for n, k in tasks if n <= test_set.num_classes and k + n_query <= fewest]


def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """For (size, accuracy) points: True where no other point is at least as small and as accurate, and
    strictly better in one."""
    return [not any(s2 <= s and a2 >= a and (s2 < s or a2 > a) for s2, a2 in points) for s, a in points]


def write_report(report: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Writes `report.json`, `report.md` and `pareto.png` (accuracy on the hardest task, 20-way 1-shot
    when the held-out set has 20 classes, against gzip size) to `out_dir`."""
    out_dir = Path(out_dir)
    variants = report["variants"]
    task = list(report["teacher"]["keras_float"])[-1]
    front = pareto_front([(v["gzip_bytes"], v["accuracy"][task]["accuracy"]) for v in variants])
    for v, on_front in zip(variants, front):
        v["pareto"] = on_front
    paths = {"json": out_dir / "report.json", "md": out_dir / "report.md", "png": out_dir / "pareto.png"}
    paths["json"].write_text(json.dumps(report, indent=2) + "\n")
    paths["md"].write_text(_markdown(report))
    _plot(variants, report, task, paths["png"])
    return paths


def _markdown(report: dict[str, Any]) -> str:
    teacher = report["teacher"]
    float_bytes = teacher["float32_tflite_bytes"]
    tasks = list(teacher["keras_float"])
    head = ["variant", "TFLite KB", "gzip KB", "gzip / float32", "sparsity", "params", "MACs", "ms/raw image",
            "ms/model call"]
    head += [f"{t} (runtime)" for t in tasks] + [f"Δ {t} vs float teacher" for t in tasks] + ["Pareto"]
    rows = []
    for v in report["variants"]:
        acc = [v["accuracy"][t] for t in tasks]
        rows.append([v["name"], f"{v['tflite_bytes'] / 1024:.1f}", f"{v['gzip_bytes'] / 1024:.1f}",
                     f"{100 * v['gzip_bytes'] / float_bytes:.1f} %", f"{100 * v['sparsity']:.1f} %", f"{v['params']:,}",
                     f"{v['macs'] / 1e6:.2f} M", f"{v['latency_ms']:.3f}", f"{v.get('model_latency_ms', float('nan')):.3f}"]
                    + [f"{100 * a['accuracy']:.2f} ± {100 * a['ci95']:.2f}" for a in acc]
                    + [f"{100 * (teacher['keras_float'][t]['accuracy'] - a['accuracy']):+.2f}" for t, a in zip(tasks, acc)]
                    + ["✓" if v.get("pareto") else ""])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]
    teacher_acc = ", ".join(f"{t} {100 * r['accuracy']:.2f} ± {100 * r['ci95']:.2f} %" for t, r in teacher["keras_float"].items())
    return (f"# Compression report: {report['run']}\n\n"
            f"Float teacher (Keras, nearest prototype): {teacher_acc}; {teacher['params']:,} parameters; float32 TFLite "
            f"{float_bytes:,} bytes.\n\nAccuracy through the runtime on {report['episodes']} held-out episodes per task "
            f"(5 queries per class, 95 % CI), the same episodes for every variant. Δ is the float teacher minus the "
            f"variant, in points (positive: the variant is worse). Latency: median per image with 1 interpreter thread, "
            f"all variants interleaved in one run; a raw image includes preprocessing, a model call does not.\n\n"
            + "\n".join(lines) + "\n\n"
            f"Command: `{report['command']}`\n")


def _plot(variants: list[dict[str, Any]], report: dict[str, Any], task: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    sizes = [v["gzip_bytes"] / 1024 for v in variants]
    accs = [100 * v["accuracy"][task]["accuracy"] for v in variants]
    ax.scatter(sizes, accs, c=["tab:red" if v["pareto"] else "tab:gray" for v in variants], zorder=3)
    for s, a, v in zip(sizes, accs, variants):
        ax.annotate(v["name"], (s, a), fontsize=7, xytext=(4, 3), textcoords="offset points")
    front = sorted((s, a) for s, a, v in zip(sizes, accs, variants) if v["pareto"])
    ax.step([s for s, _ in front], [a for _, a in front], where="post", color="tab:red", label="Pareto front")
    ax.axhline(100 * report["teacher"]["keras_float"][task]["accuracy"], ls="--", c="k", lw=0.8, label="float teacher (Keras)")
    ax.set_xscale("log")
    ax.set_xlabel("gzip-compressed TFLite size (KB, log scale)")
    ax.set_ylabel(f"{task} accuracy through the runtime (%)")
    ax.set_title(f"Compression of {Path(report['run']).name}: held-out accuracy against size")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

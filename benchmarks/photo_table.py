"""The photos table of docs/photos.md: few-shot accuracy on mini-ImageNet `val` of frozen ImageNet features, the
episodically fine-tuned model and its distilled student (Keras float and the int8 bundle through the TensorFlow-free
runtime, all on identical episodes), with each bundle's size, 1-thread latency, peak RSS and classes per board.

    python benchmarks/photo_table.py --run fine-tuned=runs/preset-photos --bundle fine-tuned=edgemeta/presets/photos \
        --run distilled=runs/photos-student --bundle distilled=runs/photos-student/bundle --out runs/photo-table

"frozen" (ImageNet EfficientNet-Lite0 as it is, at the first run's input) is always measured. Episodes: 600 per
task, 15 queries, seed 1 (what `edgemeta export` and `edgemeta preset` measure). Latency: `Embedder.embed` of one
decoded 84x84 val JPEG (resize, normalization and the model call) at 1 thread, in child processes with TensorFlow
blocked, bundles interleaved round by round; the report gives medians over rounds and each bundle's ratio to the
first. Peak RSS: a fresh child's `VmHWM` after `FewShotAdapter.for_device(bundle, "raspberry-pi-zero-2-w")` enrolls
5 classes of 5 JPEG files and classifies 25 more.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

from edgemeta.cpu import cpu_line, describe_cpu

ROOT = Path(__file__).resolve().parents[1]
PROFILES = ("raspberry-pi-zero-2-w", "raspberry-pi-4")

CHILD = r"""
import json, sys, time
for name in ("tensorflow", "tf_keras", "keras"):
    sys.modules[name] = None  # the board has none of them
import numpy as np
from edgemeta.runtime import Embedder, FewShotAdapter
bundle, mode, files = sys.argv[1], sys.argv[2], sys.argv[3:]
if mode == "latency":
    from edgemeta.format.images import decode_image
    embedder = Embedder.from_bundle(bundle, num_threads=1)
    image = decode_image(files[0])
    embedder.embed(image)
    times = []
    for _ in range(25):
        start = time.perf_counter()
        embedder.embed(image)
        times.append(time.perf_counter() - start)
    print(json.dumps({"ms": 1000 * float(np.median(times))}))
else:
    with FewShotAdapter.for_device(bundle, "raspberry-pi-zero-2-w") as adapter:
        for c in range(5):
            adapter.enroll(f"class{c}", files[c * 10 : c * 10 + 5])
        adapter.classify([f for c in range(5) for f in files[c * 10 + 5 : c * 10 + 10]])
    status = open("/proc/self/status").read()
    print(json.dumps({"peak_mib": int(status.split("VmHWM:")[1].split()[0]) / 1024}))
"""


def pairs(values: list[str], flag: str) -> dict[str, str]:
    out = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"{flag} takes NAME=PATH. Received: {value!r}")
        out[name] = path
    return out


def accuracy_rows(runs: dict[str, str], bundles: dict[str, str], tasks, episodes: int, query: int) -> list[dict]:
    from edgemeta.data.mini_imagenet import load_mini_imagenet
    from edgemeta.runtime import Embedder, FewShotAdapter
    from edgemeta.runtime.evaluation import MemoizedEmbedder, evaluate_adapter
    from edgemeta.train.backbones import build_backbone, input_options
    from edgemeta.train.episodes import EpisodeSampler
    from edgemeta.train.evaluation import embed_once, evaluate_embedding
    from edgemeta.train.training import TrainConfig, load_run, load_split

    rows = []
    first = TrainConfig(**load_run(next(iter(runs.values())))[1]["config"])
    models = {"frozen": (first, None)} | {name: (TrainConfig(**load_run(path)[1]["config"]), path) for name, path in runs.items()}
    for name, (config, path) in models.items():
        _, val = load_split(config, load_train=False)
        if path is None:
            backbone = build_backbone(config.backbone, val.preprocessing.input_shape, config.weights,
                                      **input_options(config.backbone, config.normalize, config.weights))
            metric = "cosine"
        else:
            backbone, info = load_run(path)
            metric = info["metric"]
        row = {"model": name, "kind": "Keras float", "input": val.preprocessing.input_shape[0]}
        embeddings = embed_once(backbone, val.images)
        for way, shot in tasks:
            r = evaluate_embedding(lambda _, e=embeddings: e, EpisodeSampler(val, way, shot, query, seed=1), episodes, metric)
            row[f"{way}-way {shot}-shot"] = [round(100 * r.accuracy, 2), round(100 * r.ci95, 2)]
        rows.append(row)
        print(json.dumps(row), flush=True)
    val_raw = load_mini_imagenet("val")  # decoded JPEG pixels, as a board receives them
    for name, bundle in bundles.items():
        embedder = MemoizedEmbedder(Embedder.from_bundle(bundle))
        row = {"model": name, "kind": "int8 runtime", "input": embedder.manifest.preprocessing.height}
        for way, shot in tasks:
            r = evaluate_adapter(lambda e=embedder: FewShotAdapter(e), EpisodeSampler(val_raw, way, shot, query, seed=1),
                                 episodes)
            row[f"{way}-way {shot}-shot"] = [round(100 * r.accuracy, 2), round(100 * r.ci95, 2)]
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def jpeg_files(out: Path) -> list[str]:
    """The first 10 JPEGs of 5 val classes, written as files."""
    from edgemeta.data.mini_imagenet import default_data_dir

    folder = out / "jpegs"
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    with zipfile.ZipFile(default_data_dir() / "val.zip") as z:
        names = sorted(n for n in z.namelist() if n.lower().endswith(".jpg"))
        for wnid in sorted({n.split("/")[1] for n in names})[:5]:
            for name in [n for n in names if n.split("/")[1] == wnid][:10]:
                (folder / Path(name).name).write_bytes(z.read(name))
                files.append(str(folder / Path(name).name))
    return files


def child(bundle: str, mode: str, files: list[str]) -> dict:
    result = subprocess.run([sys.executable, "-c", CHILD, bundle, mode, *files], capture_output=True, text=True,
                            cwd=ROOT, check=False)
    if result.returncode:
        raise SystemExit(f"child {mode} on {bundle} failed: {result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def device_rows(bundles: dict[str, str], files: list[str], rounds: int) -> list[dict]:
    names = list(bundles)
    latencies = {name: [] for name in names}
    for _ in range(rounds):  # interleaved, so a drifting machine affects every bundle alike
        for name in random.sample(names, len(names)):
            latencies[name].append(child(bundles[name], "latency", files)["ms"])
    rows = []
    for name in names:
        bundle = Path(bundles[name])
        row = {"model": name, "size_mb": round((bundle / "model.tflite").stat().st_size / 1e6, 2),
               "latency_ms_1_thread": round(float(np.median(latencies[name])), 2),
               "latency_ratio_to_first": round(float(np.median(np.array(latencies[names[0]]) / np.array(latencies[name]))), 2),
               "peak_rss_mib": round(child(str(bundle), "memory", files)["peak_mib"], 1)}
        for profile in PROFILES:
            plan = subprocess.run([sys.executable, "-m", "edgemeta.cli", "device", "check", "--device", profile, "--json",
                                   str(bundle)], capture_output=True, text=True, cwd=ROOT, check=False)
            report = json.loads(plan.stdout[plan.stdout.index("{"):]) if "{" in plan.stdout else {}
            row[profile] = {"fits_1000_classes": report.get("fits"), "max_classes": report.get("max_classes")}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    from edgemeta.cli.export import way_by_shot

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", default=[], metavar="NAME=RUN_DIR", required=True)
    parser.add_argument("--bundle", action="append", default=[], metavar="NAME=BUNDLE_DIR")
    parser.add_argument("--tasks", nargs="+", type=way_by_shot, default=[(5, 1), (5, 5), (16, 1)])
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--query", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs, bundles = pairs(args.run, "--run"), pairs(args.bundle, "--bundle")
    cpu = cpu_line()
    report = {"cpu": cpu, "cpu_detail": describe_cpu(), "machine": platform.machine(), "episodes": args.episodes,
              "query": args.query}
    if not args.skip_accuracy:
        report["accuracy"] = accuracy_rows(runs, bundles, args.tasks, args.episodes, args.query)
    report["device"] = device_rows(bundles, jpeg_files(out), args.rounds) if bundles else []
    (out / "photo-table.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"Written {out / 'photo-table.json'} (CPU: {cpu})")


if __name__ == "__main__":
    main()

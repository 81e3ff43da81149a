"""Runtime speed: per-image model call int8 vs float32 at 1/2/4 threads, enroll, classify at N classes,
cold start and peak memory of a fresh process, through the TensorFlow-free runtime.

    python benchmarks/runtime_speed.py --out runs/runtime-speed
    python benchmarks/runtime_speed.py --out runs/runtime-speed --baseline-commit cfbff44  # before/after

Every measurement runs in child processes with TensorFlow blocked (the board's code path); this process
only orchestrates, so no numpy or TensorFlow of its own shares the machine with what is measured.

- model call: `Embedder.embed_preprocessed` on one preprocessed image (what the runtime adds around the
  interpreter included), and `Interpreter.invoke` alone beside it (what the kernels take).
- enroll: `adapter.enroll(label, five raw 105x105 uint8 shots)`, preprocessing included; without a
  state file, and with one (each enroll then also saves the store atomically, fsync included).
- classify beyond embedding: `classify(one raw image)` minus `embed(that image)`, timed call by call
  in pairs on one adapter (the median difference): distances, argmin, the "unknown" threshold and the
  `Prediction` objects.
- cold start: a fresh `python` process from its start to its first prediction: imports, loading the
  bundle with verification (hash, structure, crash probe), loading a store, classifying a PNG file;
  its peak RSS (`VmHWM`) is that process's own.

Every measure is one task of a round; the tasks of a round run in a shuffled order, each on every source
tree in turn. A task's figure in a round is its median call, and the report gives the median over
rounds (and the best round); ratios are medians of the per-round ratios, so a machine whose load drifts
during the run still compares like with like. With `--baseline-commit` (or
`--baseline-source DIR`) the same children run on the older sources, alternating with the current
ones, and the report puts both side by side.

The float32 bundle is an export of the same trained weights as the int8 bundle (the preset's run,
`--run-dir`), made once with `converters.tflite.export_bundle` into `OUT/float32-bundle`; the report
checks that its embeddings agree with the int8 bundle's (cosine similarity).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from edgemeta.cpu import cpu_line, describe_cpu

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {  # the done-when figures
    "int8_over_float32_1_thread": 0.35,
    "enroll_5_ms": 1.5,
    "classify_beyond_embedding_1000_ms": 0.1,
    "cold_start_s": 0.5,
}

_BLOCK_TF = """
import sys
for _name in ("tensorflow", "tf_keras", "keras"):
    sys.modules[_name] = None  # the board has none of them
"""

# Writes the raw images and the cold-start store; checks the float32 bundle against the int8 one.
SETUP = _BLOCK_TF + r"""
import io, json, zipfile
import numpy as np
from PIL import Image
from edgemeta.runtime import Embedder, FewShotAdapter
int8_bundle, float32_bundle, data_dir, work, cold_classes = sys.argv[1:6]
work = __import__("pathlib").Path(work)
images = []
for name in ("images_background_small1.zip", "images_background.zip", "images_evaluation.zip"):
    path = __import__("pathlib").Path(data_dir) / name
    if path.is_file():
        with zipfile.ZipFile(path) as z:
            for member in sorted(m for m in z.namelist() if m.endswith(".png"))[:4000:20][:200]:
                with Image.open(io.BytesIO(z.read(member))) as im:
                    images.append(np.asarray(im.convert("L"), np.uint8))
        break
source = "omniglot" if images else "synthetic strokes (no Omniglot zip found)"
rng = np.random.default_rng(0)
while len(images) < 200:  # synthetic 105x105 drawings: white paper, a few dark strokes
    image = np.full((105, 105), 255, np.uint8)
    for _ in range(3):
        x, y = rng.integers(10, 80, 2)
        image[y : y + rng.integers(3, 25), x : x + rng.integers(3, 25)] = 0
    images.append(image)
raw = np.stack(images[:200])
np.save(work / "raw.npy", raw)
Image.fromarray(raw[0]).save(work / "query.png")
adapter = FewShotAdapter.from_bundle(int8_bundle, num_threads=1)
for c in range(int(cold_classes)):
    j = c % (len(raw) - 5)
    adapter.enroll(f"class-{c}", np.roll(raw[j : j + 5], c // (len(raw) - 5), axis=2))
adapter.save(work / "cold.store")
a = Embedder.from_bundle(int8_bundle).embed(raw[:100]).astype(np.float64)
b = Embedder.from_bundle(float32_bundle).embed(raw[:100]).astype(np.float64)
cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
print(json.dumps({"images": source, "cosine_int8_vs_float32": {"median": float(np.median(cos)), "min": float(cos.min())}}))
"""

# A server of warm measurements for one source tree: it sets everything up, then runs the task the
# parent names on each line of its stdin and answers with one JSON line, so the parent can interleave
# the tasks of several trees (several such processes) as finely as it likes.
WARM = _BLOCK_TF + r"""
import json, time
import numpy as np
from edgemeta.runtime import Embedder, FewShotAdapter
cfg = json.loads(sys.argv[1])
raw = np.load(cfg["raw"])
clock = time.perf_counter

def median(values):
    values = sorted(values)
    return values[len(values) // 2]

def per_call(f, calls):
    # The median call of the round, in ms: a call the scheduler preempted does not move it.
    times = []
    for _ in range(calls):
        t0 = clock()
        f()
        times.append(clock() - t0)
    return median(times) * 1e3

embedders = {(v, t): Embedder.from_bundle(cfg["bundles"][v], num_threads=t) for v in cfg["bundles"] for t in cfg["threads"]}
x1 = embedders[("int8", 1)].preprocessing(raw[0])
tasks = {}
for (v, t), e in embedders.items():
    e.embed_preprocessed(x1)  # allocates its tensors for one image
    tasks[f"call/{v}/{t}"] = (lambda e=e: e.embed_preprocessed(x1), 200)
    interpreter = getattr(e, "_interpreter", None)
    if interpreter is not None:
        tasks[f"invoke/{v}/{t}"] = (interpreter.invoke, 200)
pre = embedders[("int8", 1)].preprocessing
tasks["preprocess/1"] = (lambda: pre(raw[0]), 200)
tasks["preprocess/5"] = (lambda: pre(raw[:5]), 100)
shots = [raw[i : i + 5].copy() for i in range(0, 50, 5)]
plain = FewShotAdapter(Embedder.from_bundle(cfg["bundles"]["int8"], num_threads=1))
saved = FewShotAdapter(Embedder.from_bundle(cfg["bundles"]["int8"], num_threads=1), state=f"{cfg['state_dir']}/taught.store")
count = iter(range(10**9))

def enroll(adapter):
    i = next(count) % 10
    adapter.enroll(f"e{i}", shots[i])

tasks["enroll/5"] = (lambda: enroll(plain), 60)
tasks["enroll/5/state"] = (lambda: enroll(saved), 20)
for adapter in (plain, saved):
    for i in range(10):
        adapter.enroll(f"e{i}", shots[i])

# One adapter per class count; it shares its embedder with the embed-only call it is paired with.
query_embedder = Embedder.from_bundle(cfg["bundles"]["int8"], num_threads=1)
adapters = {}
for n in cfg["classes"]:
    adapter = FewShotAdapter(query_embedder)
    for c in range(n):
        j = c % (len(raw) - 5)
        adapter.enroll(f"class-{c}", np.roll(raw[j : j + 5], c // (len(raw) - 5), axis=2))
    adapters[n] = adapter
queries = [raw[150 + i] for i in range(20)]

def paired(adapter, calls=100):
    # classify(q) and embed(q) call by call: their difference is what classify adds to the embedding.
    c, e = [], []
    for i in range(calls):
        q = queries[i % len(queries)]
        t0 = clock(); query_embedder.embed(q); t1 = clock(); adapter.classify(q); t2 = clock()
        e.append(t1 - t0)
        c.append(t2 - t1)
    return median(c) * 1e3, median(e) * 1e3, median([a - b for a, b in zip(c, e)]) * 1e3

for f, calls in tasks.values():  # warm-up: first calls allocate, fill caches and fault pages in
    for _ in range(5):
        f()
for n in cfg["classes"]:
    paired(adapters[n], 5)
print(json.dumps({"ready": sorted(tasks) + [f"classify/{n}" for n in cfg["classes"]]}), flush=True)
for line in sys.stdin:
    name = line.strip()
    if name.startswith("classify/"):
        n = int(name.split("/")[1])
        c, e, d = paired(adapters[n])
        result = {name: c, f"embed_raw/{n}": e, f"beyond/{n}": d}
    else:
        f, calls = tasks[name]
        result = {name: per_call(f, calls)}
    print(json.dumps(result), flush=True)
"""


class _Server:
    """A WARM child process of one source tree."""

    def __init__(self, source: Path, cfg: dict) -> None:
        env = {**os.environ, "PYTHONPATH": str(source)}
        self.process = subprocess.Popen([sys.executable, "-c", WARM, json.dumps(cfg)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=source)
        self.tasks = self._read()["ready"]

    def run(self, task: str) -> dict:
        self.process.stdin.write(task + "\n")
        self.process.stdin.flush()
        return self._read()

    def _read(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            self.process.wait(timeout=30)
            raise RuntimeError(f"measurement child failed:\n{self.process.stderr.read()[-4000:]}")
        return json.loads(line)

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


# One cold start, as a user's program does it: import, load the bundle (verified) and a store, classify.
COLD = _BLOCK_TF + r"""
import time
t_imports = time.monotonic()
from edgemeta.runtime import FewShotAdapter
t_loaded_imports = time.monotonic()
adapter = FewShotAdapter.from_bundle(sys.argv[1], state=sys.argv[2], num_threads=1)
t_loaded = time.monotonic()
prediction = adapter.classify(sys.argv[3])[0]
t_done = time.monotonic()
from edgemeta.runtime.memory import peak_rss_bytes
import json
print(json.dumps({"done": t_done, "start": t_imports, "imports_s": t_loaded_imports - t_imports,
                  "load_s": t_loaded - t_loaded_imports, "classify_s": t_done - t_loaded,
                  "peak_rss": peak_rss_bytes(), "classes": len(adapter.labels), "label": prediction.nearest}))
"""

# Exports the float32 twin of the preset from the run it was trained in (needs TensorFlow).
EXPORT = r"""
import json, sys
from converters.tflite import export_bundle
from edgemeta.format.preprocessing import Preprocessing
from edgemeta.train.training import load_run
model, info = load_run(sys.argv[1])
export_bundle(model, sys.argv[2], Preprocessing.from_dict(info["preprocessing"]), "float32",
              metric=info.get("metric", "squared_euclidean"),
              provenance={"exported_by": "benchmarks/runtime_speed.py", "run_dir": sys.argv[1],
                          "note": "float32 twin of the int8 bundle: the same trained weights"})
"""


def _run(code: str, args: list[str], source: Path, timeout: float = 1800) -> dict:
    env = {**os.environ, "PYTHONPATH": str(source)}
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env,
                            cwd=source, timeout=timeout, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"child failed ({source}):\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _cold(source: Path, bundle: str, store: str, image: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(source)}
    start = time.monotonic()  # CLOCK_MONOTONIC is system-wide: the child's readings compare with it
    result = subprocess.run([sys.executable, "-c", COLD, bundle, store, image], capture_output=True, text=True,
                            env=env, cwd=source, timeout=120, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"cold start failed ({source}):\n{result.stderr[-4000:]}")
    out = json.loads(result.stdout.strip().splitlines()[-1])
    return {**out, "cold_start_s": out["done"] - start, "python_start_s": out["start"] - start}


def _compile(source: Path) -> None:
    # Bytecode next to the sources, as `pip install` leaves it on a board; the sandbox sets
    # PYTHONDONTWRITEBYTECODE=1, and a process compiling edgemeta itself would start slower.
    for package in ("edgemeta", "converters"):
        if (source / package).is_dir():
            subprocess.run([sys.executable, "-m", "compileall", "-q", str(source / package)], check=False,
                           capture_output=True)


def _median(values: list[float]) -> float:
    values = sorted(values)
    n = len(values)
    return values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2


def summarize(rounds: list[dict], cold: list[dict], threads: list[int], classes: list[int]) -> dict:
    """Medians over rounds (and over cold starts), the best round (what a quiet machine approaches),
    and the ratios the issue asks for."""
    keys = sorted({k for r in rounds for k in r})
    med = {k: _median([r[k] for r in rounds if k in r]) for k in keys}
    best = {k: min(r[k] for r in rounds if k in r) for k in keys}
    ratios, best_ratios = {}, {}
    for t in threads:
        for kind in ("call", "invoke"):
            a, b = f"{kind}/int8/{t}", f"{kind}/float32/{t}"
            if all(a in r and b in r for r in rounds):
                ratios[f"{kind}/{t}"] = _median([r[a] / r[b] for r in rounds])
                best_ratios[f"{kind}/{t}"] = best[a] / best[b]
    out = {"median_ms": med, "best_ms": best, "int8_over_float32": ratios, "int8_over_float32_best": best_ratios,
           "rounds": len(rounds)}
    if cold:
        out["cold_start_s"] = _median([c["cold_start_s"] for c in cold])
        out["cold_start_best_s"] = min(c["cold_start_s"] for c in cold)
        out["cold_phases_s"] = {k: _median([c[k] for c in cold]) for k in ("python_start_s", "imports_s", "load_s", "classify_s")}
        out["peak_rss_mib"] = _median([c["peak_rss"] for c in cold]) / 2**20
        out["cold_runs"] = len(cold)
    return out


def markdown(summary: dict, info: dict) -> str:
    """The table: per source tree "median (best round)", and the current / baseline ratio of medians."""
    trees = list(summary)
    head = "| measure | target | " + " | ".join(trees) + (" | current / baseline |" if len(trees) > 1 else "")
    lines = [head, "|" + "---|" * (2 + len(trees) + (len(trees) > 1))]

    def row(name, target, median, best=None, fmt="{:.3f}"):
        values, cells = [], []
        for tree in trees:
            try:
                value = median(summary[tree])
                cells.append(fmt.format(value) + (f" ({fmt.format(best(summary[tree]))})" if best else ""))
            except KeyError:
                value = None
                cells.append("–")
            values.append(value)
        extra = []
        if len(trees) > 1:
            extra = [f"{values[0] / values[1]:.2f}" if None not in values[:2] and values[1] else "–"]
        lines.append("| " + " | ".join([name, target, *cells, *extra]) + " |")

    def timing(name, target, key, fmt="{:.3f}"):
        row(name, target, lambda s: s["median_ms"][key], lambda s: s["best_ms"][key], fmt)

    for t in info["threads"]:
        timing(f"model call int8, {t} thread(s) (ms)", "", f"call/int8/{t}")
        timing(f"model call float32, {t} thread(s) (ms)", "", f"call/float32/{t}")
        row(f"int8 / float32 model call, {t} thread(s)", "≤ 0.35" if t == 1 else "",
            lambda s, t=t: s["int8_over_float32"][f"call/{t}"], lambda s, t=t: s["int8_over_float32_best"][f"call/{t}"],
            "{:.2f}")
    for t in info["threads"]:
        row(f"int8 / float32 invoke alone, {t} thread(s)", "", lambda s, t=t: s["int8_over_float32"][f"invoke/{t}"],
            lambda s, t=t: s["int8_over_float32_best"][f"invoke/{t}"], "{:.2f}")
    timing("invoke alone int8, 1 thread (ms)", "", "invoke/int8/1")
    timing("invoke alone float32, 1 thread (ms)", "", "invoke/float32/1")
    timing("preprocess 1 raw 105x105 (ms)", "", "preprocess/1")
    timing("preprocess 5 raw 105x105 (ms)", "", "preprocess/5")
    timing("enroll 5 raw shots, no state file (ms)", "≤ 1.5", "enroll/5")
    timing("enroll 5 raw shots, with state file (ms)", "", "enroll/5/state")
    for n in info["classes"]:
        timing(f"classify 1 raw image, {n} classes (ms)", "", f"classify/{n}")
        row(f"classify beyond embedding, {n} classes (ms)", "≤ 0.1" if n == 1000 else "",
            lambda s, n=n: s["median_ms"][f"beyond/{n}"])  # a difference: its best round means nothing
    timing("embed 1 raw image (ms)", "", f"embed_raw/{info['classes'][-1]}")
    row(f"cold start to first prediction, {info['cold_classes']} classes (s)", "≤ 0.5", lambda s: s["cold_start_s"],
        lambda s: s["cold_start_best_s"])
    for phase in ("python_start_s", "imports_s", "load_s", "classify_s"):
        row(f"  of which {phase[:-2].replace('_', ' ')} (s)", "", lambda s, p=phase: s["cold_phases_s"][p])
    row("peak RSS of the cold-start process (MiB)", "", lambda s: s["peak_rss_mib"], fmt="{:.1f}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default="edgemeta/presets/omniglot", help="the int8 bundle")
    parser.add_argument("--float32-bundle", help="a float32 bundle of the same weights (default: exported "
                        "from --run-dir into OUT/float32-bundle once)")
    parser.add_argument("--run-dir", default="runs/preset-omniglot", help="the int8 bundle's training run")
    parser.add_argument("--data-dir", default=os.environ.get("EDGEMETA_OMNIGLOT_DIR", "/work/shared/datasets/omniglot"))
    parser.add_argument("--out", default="runs/runtime-speed")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--classes", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--cold-classes", type=int, default=100, help="classes in the cold start's store")
    parser.add_argument("--rounds", type=int, default=30, help="rounds of every warm measurement")
    parser.add_argument("--cold-runs", type=int, default=9, help="cold-start processes per source tree")
    parser.add_argument("--baseline-commit", help="also measure the sources at this git commit, side by side")
    parser.add_argument("--baseline-source", help="also measure the sources in this directory, side by side")
    args = parser.parse_args()

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    bundle = str(Path(args.bundle).resolve())
    trees = {"current": ROOT}
    scratch = Path(tempfile.mkdtemp(prefix="runtime-speed-"))
    try:
        if args.baseline_commit:
            archive = subprocess.run(["git", "archive", args.baseline_commit, "edgemeta", "converters"], cwd=ROOT,
                                     capture_output=True, check=True).stdout
            subprocess.run(["tar", "-x", "-C", str(scratch)], input=archive, check=True)
            trees[f"baseline {args.baseline_commit}"] = scratch
        elif args.baseline_source:
            trees[f"baseline {args.baseline_source}"] = Path(args.baseline_source).resolve()
        for source in trees.values():
            _compile(source)

        float32 = Path(args.float32_bundle).resolve() if args.float32_bundle else out / "float32-bundle"
        if not (float32 / "model.tflite").is_file():
            print(f"exporting the float32 twin of {args.bundle} from {args.run_dir} -> {float32}", flush=True)
            subprocess.run([sys.executable, "-c", EXPORT, str(Path(args.run_dir).resolve()), str(float32)], cwd=ROOT,
                           check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        work = out / "work"
        work.mkdir(exist_ok=True)
        setup = _run(SETUP, [bundle, str(float32), args.data_dir, str(work), str(args.cold_classes)], ROOT)
        cfg = {"raw": str(work / "raw.npy"), "bundles": {"int8": bundle, "float32": str(float32)},
               "threads": args.threads, "classes": args.classes}
        rounds: dict[str, list] = {name: [] for name in trees}
        cold: dict[str, list] = {name: [] for name in trees}
        load = [os.getloadavg()[0]]
        names = list(trees)
        servers, state_dirs = {}, []
        try:
            for name in names:
                print(f"setting up the warm measurements of {name}", flush=True)
                state_dir = Path(tempfile.mkdtemp(dir=work))  # the state file on the disk of --out (fsync included)
                state_dirs.append(state_dir)
                servers[name] = _Server(trees[name], {**cfg, "state_dir": str(state_dir)})
            tasks = servers[names[0]].tasks
            rng = random.Random(0)
            for r in range(args.rounds):
                print(f"round {r + 1}/{args.rounds}", flush=True)
                rows = {name: {} for name in names}
                rng.shuffle(tasks)
                for i, task in enumerate(tasks):  # each task on every tree in turn, alternating who goes first
                    for name in names if (r + i) % 2 == 0 else names[::-1]:
                        rows[name].update(servers[name].run(task))
                for name in names:
                    rounds[name].append(rows[name])
        finally:
            for server in servers.values():
                server.close()
            for state_dir in state_dirs:
                shutil.rmtree(state_dir, ignore_errors=True)
        for i in range(args.cold_runs):
            for name in names if i % 2 == 0 else names[::-1]:
                cold[name].append(_cold(trees[name], bundle, str(work / "cold.store"), str(work / "query.png")))
        load.append(os.getloadavg()[0])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    info = {"threads": args.threads, "classes": args.classes, "cold_classes": args.cold_classes}
    summary = {name: summarize(rounds[name], cold[name], args.threads, args.classes) for name in trees}
    versions = _run(_BLOCK_TF + "import json, numpy, PIL, ai_edge_litert\nprint(json.dumps({'numpy': numpy.__version__, "
                    "'pillow': PIL.__version__, 'ai_edge_litert': getattr(ai_edge_litert, '__version__', '?')}))", [], ROOT)
    result = {
        "targets": TARGETS, "summary": summary, "setup": setup, **info,
        "bundles": {"int8": args.bundle, "float32": str(float32), "float32_from_run": args.run_dir},
        "machine": {"platform": platform.platform(), "processor": cpu_line(), "cpu": describe_cpu(), "cpus": os.cpu_count(),
                    "load_average_start_end": load, "python": platform.python_version(), **versions},
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "raw_rounds": rounds, "raw_cold": cold,
    }
    (out / "runtime_speed.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(summary, info)
    header = (f"# Runtime speed\n\n`{result['command']}`\n\n{result['machine']['processor']}, {os.cpu_count()} CPUs, "
              f"load average {load[0]:.2f} at the start, {load[1]:.2f} at the end. int8 {args.bundle} vs its float32 "
              f"twin (cosine of their embeddings: median {setup['cosine_int8_vs_float32']['median']:.4f}); "
              f"images: {setup['images']}. Each cell: the median of {summary['current']['rounds']} rounds (of "
              f"{args.cold_runs} cold starts), and in brackets the best round, which a quiet machine approaches.\n\n")
    (out / "runtime_speed.md").write_text(header + table)
    print(header + table)


if __name__ == "__main__":
    main()

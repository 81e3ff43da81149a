"""Peak resident memory of a fresh adapter process with N enrolled classes, beside the planner's prediction.

    python benchmarks/runtime_memory.py --bundle edgemeta/presets/omniglot --classes 1000 --out runs/memory

The child process imports only the runtime (TensorFlow blocked), loads the bundle, enrolls `classes`
synthetic classes of `shots` raw 105x105 images each, classifies batches, and reports its peak RSS
(`VmHWM`), and its private and shared pages at the end. edgemeta's bytecode is compiled first, as
`pip install` does on a board: a process that compiles the sources itself (PYTHONDONTWRITEBYTECODE=1,
as in this sandbox) holds ~2 MB more.

RSS counts the pages of shared libraries the process has mapped, and the kernel maps more of them when
another live process keeps them in use: with a numpy/TensorFlow process running beside it (a test
runner, say), the same child peaked at 54.4 MiB instead of 45.6, all of the difference in numpy,
OpenBLAS and LiteRT library pages. Run it on a quiet machine for the board-like figure.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, sys
for name in ("tensorflow", "tf_keras", "keras"):
    sys.modules[name] = None  # the board has none of them
import numpy as np
from edgemeta.runtime import FewShotAdapter
from edgemeta.runtime.memory import current_rss_bytes, peak_rss_bytes
bundle, classes, shots, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
imported = current_rss_bytes()
# max_pixels: the raw images it is given, so the plan sets aside what this child converts, no larger image
adapter = FewShotAdapter.from_bundle(bundle, num_threads=1, max_batch=batch, max_pixels=105 * 105)
loaded = current_rss_bytes()
state = 12345  # a tiny LCG, not numpy.random (~5 MB to import) or random: only the adapter is measured
for c in range(classes):
    images = np.full((shots, 105, 105), 255, np.uint8)
    for image in images:  # a pseudo-random cross: a different drawing for every shot
        state = (1103515245 * state + 12345) % 2**31
        x, y = 10 + state % 70, 10 + (state // 70) % 70
        image[y : y + 20, x : x + 5] = 0
        image[x : x + 5, y : y + 20] = 0
    adapter.enroll(f"class-{c}", images)
queries = np.full((batch, 105, 105), 255, np.uint8)
for _ in range(10 if classes else 0):
    adapter.classify(queries)
def largest_mappings(n=6):
    # What holds the memory, by file (or [heap], anonymous): for diagnosing a surprise, not for the figure.
    sizes, name = {}, None
    with open("/proc/self/smaps") as f:
        for line in f:
            parts = line.split()
            if "-" in parts[0] and len(parts) >= 5 and not parts[0].endswith(":"):
                name = parts[5] if len(parts) > 5 else "[anonymous]"
            elif parts[0] == "Rss:":
                sizes[name] = sizes.get(name, 0) + int(parts[1])
    return sorted(((k, v) for k, v in sizes.items()), key=lambda kv: -kv[1])[:n]
def rollup():
    # Private pages are this process's own; shared ones (library code other processes also map) count in
    # RSS as much as the kernel maps of them, which grows when another process keeps them in use.
    fields = {}
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                fields[parts[0].rstrip(":")] = int(parts[1]) * 1024
    return {"private": fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0),
            "shared": fields.get("Shared_Clean", 0) + fields.get("Shared_Dirty", 0)}
print(json.dumps({"peak_rss": peak_rss_bytes(), **{f"{k}_at_end": v for k, v in rollup().items()},
                  "rss_after_imports": imported, "rss_after_load": loaded,
                  "store_bytes": adapter.store.nbytes(), "classes": len(adapter.labels), "modules": len(sys.modules),
                  "largest_mappings_kib": largest_mappings()}))
"""


def measure(bundle: str, classes: int, shots: int = 5, batch: int = 8) -> dict:
    """Runs the child process and the planner; returns both and their ratio."""
    import edgemeta
    from edgemeta.runtime.memory import plan_memory

    # Bytecode next to the sources (git ignores it), read by the child even under PYTHONDONTWRITEBYTECODE.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(Path(edgemeta.__file__).parent)], check=False,
                   capture_output=True)
    result = subprocess.run([sys.executable, "-c", CHILD, bundle, str(classes), str(shots), str(batch)],
                            capture_output=True, text=True, check=False, timeout=900)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-3000:])
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    plan = plan_memory(bundle, batch=batch, shots=shots, max_pixels=105 * 105)
    predicted = plan.predict(classes)
    return {**measured, "predicted_rss": predicted, "ratio": measured["peak_rss"] / predicted, "plan": plan.to_dict(),
            "bundle": bundle, "shots": shots, "batch": batch}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default="edgemeta/presets/omniglot")
    parser.add_argument("--classes", type=int, nargs="+", default=[1, 100, 1000, 5000])
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--out", default="runs/memory")
    args = parser.parse_args()
    rows = [measure(args.bundle, n, args.shots, args.batch) for n in args.classes]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "memory.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = ["| classes | peak RSS (MiB) | predicted (MiB) | measured / predicted | private at end (MiB) |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['classes']} | {r['peak_rss'] / 2**20:.2f} | {r['predicted_rss'] / 2**20:.2f} | {r['ratio']:.3f} "
                     f"| {r['private_at_end'] / 2**20:.2f} |")
    (out / "memory.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

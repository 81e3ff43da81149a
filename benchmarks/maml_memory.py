"""Memory of a MAML meta-training step: second order vs first order, by inner steps.

Each configuration runs in a fresh process: it builds the learner and episodes, records its peak RSS,
runs 3 meta-training steps (Conv-4, 28x28, meta-batch 8 of 5-way 1-shot 5-query tasks) and reports
how much the peak grew. Writes OUT/maml_memory.md and .json.

    python benchmarks/maml_memory.py --out runs/learners
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CHILD = """
import resource, sys
import numpy as np
from edgemeta.train.backend import keras
from edgemeta.train.learners import build_learner, conv4
name, steps = sys.argv[1], int(sys.argv[2])
keras.utils.set_random_seed(0)
learner = build_learner(name, conv4(), inner_steps=steps)
learner.compile(keras.optimizers.Adam(1e-3), learner.episode_loss())
rng = np.random.default_rng(0)
x = (rng.random((8, 5, 28, 28, 1), np.float32), np.tile(np.arange(5), (8, 1)), rng.random((8, 25, 28, 28, 1), np.float32))
y = np.tile(np.repeat(np.arange(5), 5), (8, 1))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
learner.fit(x, y, batch_size=8, epochs=3, verbose=0)
print(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/learners")
    parser.add_argument("--inner-steps", type=int, nargs="+", default=[1, 3, 5])
    args = parser.parse_args()
    rows = []
    for steps in args.inner_steps:
        for name in ("maml", "fomaml"):
            out = subprocess.run([sys.executable, "-c", CHILD, name, str(steps)], capture_output=True, text=True, check=True)
            before, after = out.stdout.split()[-2:]
            rows.append({"learner": name, "inner_steps": steps, "step_peak_mb": (int(after) - int(before)) / 1024,
                         "process_peak_mb": int(after) / 1024})
            print(rows[-1], flush=True)
    lines = ["| inner steps | learner | peak RSS growth over 3 training steps, graph building included (MB) "
             "| process peak RSS (MB) |",
             "|---|---|---|---|"]
    lines += [f"| {r['inner_steps']} | {r['learner']} | {r['step_peak_mb']:.0f} | {r['process_peak_mb']:.0f} |" for r in rows]
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "maml_memory.json").write_text(json.dumps(rows, indent=2) + "\n")
    (Path(args.out) / "maml_memory.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

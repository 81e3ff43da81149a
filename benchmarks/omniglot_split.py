"""The issue's accuracy figures on the fixed Omniglot split, measured side by side in one run.

Meta-trains the `omniglot-split` recipe (Balinese, Greek, Japanese_(katakana), Korean, Sanskrit with
rotations), exports float32 and int8 bundles, and on the held-out Early_Aramaic, Latin and Tagalog
characters reports, on identical episodes:
- Keras float vs TFLite float32 vs int8 bundle through the TensorFlow-free runtime (raw 105x105 PNG
  pixels as uint8 into `enroll`/`classify`), 600 episodes per task, 95 % CI;
- a Lake et al. style one-shot protocol: 20 characters of one alphabet, one drawer's image each
  enrolled, another drawer's images classified, 20 runs (alphabets with >= 20 characters);
- model size and per-image latency, int8 vs float32, as ratios.

    python benchmarks/omniglot_split.py --data-dir ../shared/datasets/omniglot --out runs/bench
    python benchmarks/omniglot_split.py --run runs/bench/run   # reuse a trained run
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from omniglot_lake import lake_protocol  # its sibling script (benchmarks run as scripts: this folder is on sys.path)

from converters import export_bundle
from edgemeta.runtime import Embedder, FewShotAdapter
from edgemeta.runtime.evaluation import evaluate_adapter, per_image_latency_ms
from edgemeta.train.episodes import EpisodeSampler
from edgemeta.train.evaluation import evaluate_keras
from edgemeta.train.recipes import RECIPES
from edgemeta.train.training import TrainConfig, load_run, load_split, train


def runtime_without_tensorflow(bundle: Path, sampler, episodes: int, path: Path, config: TrainConfig) -> dict:
    indices = list(sampler.indices().take(episodes).as_numpy_iterator())
    np.savez(path, **{k: np.stack([e[i] for e in indices]) for i, k in enumerate(("s_idx", "s_lab", "q_idx", "q_lab"))},
             n_way=sampler.n_way, k_shot=sampler.k_shot, n_query=sampler.n_query)
    command = [sys.executable, str(Path(__file__).with_name("runtime_eval.py")), str(bundle), str(path),
               "--alphabets", *sorted(set(sampler.dataset.groups))]
    if config.data_dir:
        command += ["--data-dir", str(config.data_dir)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="Omniglot zips (default $EDGEMETA_OMNIGLOT_DIR)")
    parser.add_argument("--out", default="runs/bench")
    parser.add_argument("--run", help="reuse a trained run directory instead of training")
    parser.add_argument("--episodes", type=int, default=600)
    args = parser.parse_args()
    out = Path(args.out)
    if args.run:
        backbone, info = load_run(args.run)
        config = TrainConfig(**{**info["config"], **({"data_dir": args.data_dir} if args.data_dir else {})})
        train_set, test_set = load_split(config)
    else:
        config = replace(RECIPES["omniglot-split"], data_dir=args.data_dir)
        net, train_set, test_set = train(config, out / "run", verbose=2)
        backbone = net.backbone
    embedders = {}
    for q in ("float32", "int8"):
        path = export_bundle(backbone, out / f"bundle-{q}", train_set.preprocessing, q, train_set.images,
                             provenance={"dataset": "omniglot-split", "learner": "protonet"})
        embedders[q] = Embedder.from_bundle(path)
    results = {"config": {k: v for k, v in vars(config).items()}, "tasks": {}}
    for n_way, k_shot, within in ((5, 1, False), (5, 5, False), (20, 1, False), (20, 5, False), (20, 1, True)):
        sampler = EpisodeSampler(test_set, n_way, k_shot, 5, within_group=within, seed=1)
        name = f"{n_way}-way {k_shot}-shot" + (" within-alphabet" if within else "")
        start = time.time()
        row = {"keras_float": evaluate_keras(backbone, sampler, args.episodes).to_dict()}
        for q, e in embedders.items():
            row[f"runtime_{q}"] = evaluate_adapter(lambda e=e: FewShotAdapter(e), sampler, args.episodes).to_dict()
        # The int8 figure again, from a separate process in which TensorFlow cannot be imported.
        row["runtime_int8_tensorflow_blocked"] = runtime_without_tensorflow(out / "bundle-int8", sampler, args.episodes,
                                                                             out / "episodes.npz", config)
        results["tasks"][name] = row
        print(f"{name}: " + ", ".join(f"{k} {100 * v['accuracy']:.2f} ± {100 * v['ci95']:.2f}" for k, v in row.items())
              + f"  ({time.time() - start:.0f} s)", flush=True)
        assert row["runtime_int8_tensorflow_blocked"]["accuracy"] == row["runtime_int8"]["accuracy"]
    for q, e in embedders.items():
        results[f"lake_{q}"] = lake_protocol(lambda e=e: FewShotAdapter(e), test_set)
        print(f"Lake-style 20-way one-shot, {q} runtime: error {100 * results[f'lake_{q}']['error_rate']:.1f} %")
    sample = test_set.raw[0]
    lat = {q: per_image_latency_ms(e, sample, repeats=500) for q, e in embedders.items()}
    size = {q: (out / f"bundle-{q}" / "model.tflite").stat().st_size for q in embedders}
    results["size_bytes"], results["latency_ms_per_image"] = size, lat
    print(f"size: float32 {size['float32'] / 1024:.0f} KB, int8 {size['int8'] / 1024:.0f} KB "
          f"(int8/float32 = {size['int8'] / size['float32']:.2f})")
    print(f"latency per raw image (preprocess + invoke, median of 500, 1 image): float32 {lat['float32']:.3f} ms, "
          f"int8 {lat['int8']:.3f} ms (int8/float32 = {lat['int8'] / lat['float32']:.2f})")
    (out / "results.json").write_text(json.dumps(results, indent=2, default=list) + "\n")


if __name__ == "__main__":
    main()

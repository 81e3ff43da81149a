"""Lake et al.'s one-shot protocol through the TensorFlow-free runtime, on Omniglot alphabets a bundle never saw.

Each run takes 20 characters of one alphabet and two of its 20 drawers: the first drawer's image of each character
is enrolled, the second's classified (Lake, Salakhutdinov & Tenenbaum 2015; the official 20 runs use the evaluation
alphabets, which this repository does not have). Runs go round the alphabets; the error is their mean, with its 95 %
interval over runs.

    python benchmarks/omniglot_lake.py runs/omniglot-select-8k/bundle --data-dir ../shared/datasets/omniglot-background \
        --alphabets Asomtavruli_\\(Georgian\\) Burmese_\\(Myanmar\\) Greek Japanese_\\(katakana\\) N_Ko Tifinagh --runs 600
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

import numpy as np

from edgemeta.data.dataset import ImageClassDataset
from edgemeta.runtime.evaluation import ci95


def lake_protocol(make_adapter: Callable[[], Any], test_set: ImageClassDataset, runs: int = 20, way: int = 20,
                  seed: int = 0) -> dict:
    """One-shot classification as in Lake et al. (2015): per run, `way` characters of one alphabet, one
    drawer's image of each enrolled, another drawer's image of each classified. Returns the error rate."""
    rng = np.random.default_rng(seed)
    by_class = {c: np.flatnonzero(test_set.labels == c) for c in range(test_set.num_classes)}  # drawer order
    alphabets = sorted(a for a in set(test_set.groups) if test_set.groups.count(a) >= way)
    errors, nearest_errors = [], []
    for r in range(runs):
        alphabet = alphabets[r % len(alphabets)]
        classes = rng.choice([c for c in range(test_set.num_classes) if test_set.groups[c] == alphabet], way, replace=False)
        train_drawer, test_drawer = rng.choice(20, 2, replace=False)
        adapter = make_adapter()
        for c in classes:
            adapter.enroll(str(c), test_set.raw[by_class[c][train_drawer]])
        predicted = adapter.classify([test_set.raw[by_class[c][test_drawer]] for c in classes])
        errors.append(np.mean([p.label != str(c) for p, c in zip(predicted, classes)]))
        nearest_errors.append(np.mean([p.nearest != str(c) for p, c in zip(predicted, classes)]))
    return {"error_rate": float(np.mean(errors)), "ci95": ci95(errors), "nearest_error_rate": float(np.mean(nearest_errors)),
            "nearest_ci95": ci95(nearest_errors), "runs": runs, "way": way, "alphabets": alphabets}


def main() -> None:
    from edgemeta.data.omniglot import load_omniglot
    from edgemeta.runtime import Embedder, FewShotAdapter

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("--data-dir", help="Omniglot zips (default $EDGEMETA_OMNIGLOT_DIR)")
    parser.add_argument("--alphabets", nargs="+", required=True, help="alphabets the bundle was not trained on")
    parser.add_argument("--runs", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    embedder = Embedder.from_bundle(args.bundle)
    test_set = load_omniglot(args.data_dir, alphabets=args.alphabets, preprocessing=embedder.manifest.preprocessing,
                             download=False)
    result = lake_protocol(lambda: FewShotAdapter(embedder), test_set, args.runs, seed=args.seed)
    print(json.dumps({"bundle": args.bundle, **result}))


if __name__ == "__main__":
    main()

"""Omniglot end to end: meta-train a ProtoNet on 5 alphabets, export an int8 bundle, then learn the 3
held-out alphabets' characters on the "device" (the TensorFlow-free runtime) from one example each.

    python examples/omniglot_end_to_end.py --data-dir ../shared/datasets/omniglot
"""

import argparse
from dataclasses import replace
from pathlib import Path

from converters import export_bundle
from edgemeta.runtime import FewShotAdapter
from edgemeta.runtime.evaluation import evaluate_adapter
from edgemeta.train.episodes import EpisodeSampler
from edgemeta.train.evaluation import evaluate_keras
from edgemeta.train.recipes import RECIPES
from edgemeta.train.training import train

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--data-dir", help="directory with the Omniglot zips (default: download to ~/.cache)")
parser.add_argument("--out", default="runs/example-omniglot")
parser.add_argument("--steps", type=int, default=RECIPES["omniglot-split"].steps)
parser.add_argument("--episodes", type=int, default=600)
args = parser.parse_args()

# 1. Meta-train (workstation).
config = replace(RECIPES["omniglot-split"], data_dir=args.data_dir, steps=args.steps, deterministic=False)
net, train_set, test_set = train(config, Path(args.out) / "run", verbose=2)

# 2. Convert to a full-integer int8 bundle, calibrated on training images.
bundle = export_bundle(net.backbone, Path(args.out) / "bundle", train_set.preprocessing, "int8", train_set.images,
                       provenance={"dataset": "omniglot", "learner": "protonet"})

# 3. On the device: one photo of each new character, then classify new drawings.
adapter = FewShotAdapter.from_bundle(bundle)
latin = [i for i, name in enumerate(test_set.class_names) if name.startswith("Latin/")][:5]
for c in latin:
    first = next(i for i in range(len(test_set)) if test_set.labels[i] == c)
    adapter.enroll(test_set.class_names[c], test_set.raw[first])  # raw 105x105 uint8, as a camera would give
queries = [i for i in range(len(test_set)) if test_set.labels[i] in latin][1::4]
predictions = adapter.classify([test_set.raw[i] for i in queries])
correct = sum(p.nearest == test_set.class_names[test_set.labels[i]] for p, i in zip(predictions, queries))
print(f"Taught {adapter.labels} from one drawing each; {correct}/{len(queries)} new drawings recognised.")

# 4. Held-out accuracy, Keras float vs int8 runtime, on the same episodes.
for n_way in (5, 20):
    sampler = EpisodeSampler(test_set, n_way, 1, 5, seed=1)
    print("Keras float :", evaluate_keras(net.backbone, sampler, args.episodes))
    print("int8 runtime:", evaluate_adapter(lambda: FewShotAdapter.from_bundle(bundle), sampler, args.episodes))

"""Evaluates a bundle through the on-device runtime with TensorFlow blocked from importing.

Reads episodes (index arrays into the held-out Omniglot set) saved by `omniglot_split.py`, loads the
raw 105x105 images with the TensorFlow-free loader, and prints the accuracy as JSON.

    python benchmarks/runtime_eval.py BUNDLE EPISODES.npz --data-dir DIR --alphabets Early_Aramaic Latin Tagalog
"""

import sys

for _name in ("tensorflow", "tf_keras", "keras"):
    sys.modules[_name] = None  # any import of TensorFlow now fails: this measures the board's code path

import argparse  # noqa: E402
import json  # noqa: E402

import numpy as np  # noqa: E402

from edgemeta.data.omniglot import load_omniglot  # noqa: E402
from edgemeta.runtime import Embedder, FewShotAdapter, interpreter_class  # noqa: E402
from edgemeta.runtime.evaluation import evaluate_adapter_on_episodes  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("bundle")
parser.add_argument("episodes", help=".npz with s_idx, s_lab, q_idx, q_lab (episodes x ...) and n_way/k_shot/n_query")
parser.add_argument("--data-dir")
parser.add_argument("--alphabets", nargs="+", required=True)
args = parser.parse_args()

data = np.load(args.episodes)
test_set = load_omniglot(args.data_dir, alphabets=args.alphabets, download=False)
episodes = list(zip(data["s_idx"], data["s_lab"], data["q_idx"], data["q_lab"]))
embedder = Embedder.from_bundle(args.bundle)
result = evaluate_adapter_on_episodes(lambda: FewShotAdapter(embedder), test_set.raw, episodes,
                                      int(data["n_way"]), int(data["k_shot"]), int(data["n_query"]))
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "tf_keras", "keras") and sys.modules[m])
print(json.dumps({**result.to_dict(), "interpreter": interpreter_class()[1], "tensorflow_modules_loaded": loaded}))

"""One training process for tests/train/test_distribute.py: trains a tiny learner under a strategy and reports.

    python tests/train/distributed_worker.py STRATEGY[,STRATEGY...] LEARNER[,LEARNER...] OUT_DIR
        [--cpu-replicas N] [--backup DIR] [--crash-after-epoch K]

TF_CONFIG (multi-worker) comes from the environment. Prints one JSON line: per learner, per-step losses,
replicas and (chief) the saved embedding of fixed images, so the test compares runs without trusting this file.
"""

import argparse
import faulthandler
import json
import os
import sys
import time

parser = argparse.ArgumentParser()
parser.add_argument("strategies", help="comma-separated: each learner is trained under each (e.g. default,mirrored)")
parser.add_argument("learners", help="comma-separated learner names, trained one after the other")
parser.add_argument("out")
parser.add_argument("--cpu-replicas", type=int)
parser.add_argument("--backup")
parser.add_argument("--crash-after-epoch", type=int)
parser.add_argument("--episodes-per-batch", type=int, default=2)
args = parser.parse_args()
faulthandler.register(__import__("signal").SIGUSR1)  # a hung worker's stacks, for the test's failure message

from edgemeta.train.distribute import describe, make_strategy  # noqa: E402

# Built first: splitting the CPU into logical devices must precede TensorFlow's first use of one.
strategies = {name: make_strategy(name, cpu_replicas=args.cpu_replicas) for name in reversed(args.strategies.split(","))}

import numpy as np  # noqa: E402

from edgemeta.train.backend import keras  # noqa: E402
from edgemeta.train.training import TrainConfig, load_run, train  # noqa: E402

OPTIONS = {"maml": {"inner_steps": 1}, "reptile": {"inner_steps": 2, "eval_inner_steps": 2}}
# Reptile's SGD meta-step: large enough that a wrongly scaled update across replicas shows (Adam would hide it).
LEARNING_RATES = {"reptile": 0.5}


def config_for(learner: str) -> TrainConfig:
    return TrainConfig(dataset="digits", learner=learner, learner_options=OPTIONS.get(learner, {}), n_way=4, k_shot=1,
                       n_query=3, episodes_per_batch=args.episodes_per_batch, steps=6, epochs=3, max_shift=1, seed=3,
                       learning_rate=LEARNING_RATES.get(learner, 1e-3),
                       mixed_precision="float32")  # float32 sums, so replica layouts compare at 1e-3


class Record(keras.callbacks.Callback):
    """Per-step training loss; crashes the process after an epoch when asked (a worker dying)."""

    def __init__(self):
        super().__init__()
        self.losses = []

    def on_train_batch_end(self, batch, logs=None):
        self.losses.append(float(logs["loss"]))

    def on_epoch_end(self, epoch, logs=None):
        if args.crash_after_epoch is not None and epoch == args.crash_after_epoch:
            print(json.dumps({"crashed_after_epoch": epoch}), flush=True)
            os._exit(3)


reports = {}
for learner in args.learners.split(","):
    for name in args.strategies.split(","):
        strategy, record, started = strategies[name], Record(), time.perf_counter()
        out = os.path.join(args.out, name, learner)
        with strategy.scope():
            net, train_set, _ = train(config_for(learner), out, callbacks=[record], verbose=0, backup_dir=args.backup)
        cluster = describe(strategy)
        report = {"replicas": strategy.num_replicas_in_sync, "workers": cluster.workers, "chief": cluster.is_chief,
                  "losses": record.losses, "seconds": round(time.perf_counter() - started, 1)}
        if cluster.is_chief:
            backbone, info = load_run(out)
            report["embedding"] = np.asarray(backbone(train_set.images[:40], training=False)).tolist()
            report["distribution"] = info["distribution"]
        reports[f"{name}/{learner}"] = report
print(json.dumps(reports), flush=True)
sys.exit(0)

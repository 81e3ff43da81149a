"""Do XLA (`jit_compile`) and mixed precision speed up meta-training here? Measured side by side.

Times training steps of real learners through `edgemeta.train.training.fit_episodes` (the path `edgemeta train`
takes, tf.data episode pipeline included) in four settings: plain float32, XLA, bfloat16 and float16
mixed precision, interleaved over rounds after a warm-up epoch, on Omniglot-shaped episodes (digits
images resized to 28x28 when Omniglot is not given). Writes markdown and JSON.

    python benchmarks/jit_compile.py --out runs/jit                       # this machine (CPU)
    python benchmarks/jit_compile.py --out runs/jit --data-dir DIR        # Omniglot's training alphabets

On a GPU, run the same command: the table says whether `--jit-compile` and `--mixed-precision` pay off there.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
from report import write_report  # its sibling module (benchmarks run as scripts)

from edgemeta.cpu import cpu_line
from edgemeta.train.backend import keras, tf
from edgemeta.train.training import TrainConfig, build_for_training, fit_episodes, load_split

SETTINGS = {"float32": {"mixed_precision": "float32"}, "xla": {"jit_compile": True, "mixed_precision": "float32"},
            "bfloat16": {"mixed_precision": "bfloat16"}, "float16": {"mixed_precision": "float16"}}
TASKS = {"protonet": dict(learner="protonet", n_way=60, k_shot=1, n_query=5, episodes_per_batch=1),
         "maml": dict(learner="maml", learner_options={"inner_steps": 1, "inner_lr": 0.4}, n_way=5, k_shot=1, n_query=15,
                      episodes_per_batch=4)}


class StepTimes(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.ends = []

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append(time.perf_counter())


def steps_per_second(base: TrainConfig, setting: dict, train_set, steps: int) -> float:
    """Builds the learner as `train` does, fits 1 warm-up epoch (tracing, XLA compilation) and `steps` timed steps."""
    config = replace(base, steps=2 * steps, epochs=2, **setting)
    keras.utils.set_random_seed(0)
    net = build_for_training(config, train_set.preprocessing.input_shape)
    timer = StepTimes()
    fit_episodes(net, train_set, config, [timer], verbose=0)
    timed = np.diff(timer.ends[steps - 1:])  # the second epoch: warm
    return float(1.0 / np.median(timed))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/jit")
    parser.add_argument("--data-dir", help="Omniglot zips (default: digits at 28x28)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    # float16 kernels on a CPU are emulated (a 4-step run took 30 s here): measured by default only with a GPU.
    default_settings = list(SETTINGS) if tf.config.list_physical_devices("GPU") else ["float32", "xla", "bfloat16"]
    parser.add_argument("--settings", nargs="+", default=default_settings, choices=list(SETTINGS))
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    args = parser.parse_args()
    dataset = (dict(dataset="omniglot", data_dir=args.data_dir) if args.data_dir
               else dict(dataset="digits", train_classes=list(range(10))))
    base = TrainConfig(**dataset, image_size=28, max_shift=1)
    train_set, _ = load_split(base)
    results = {task: {s: [] for s in args.settings} for task in args.tasks}
    for r in range(args.rounds):
        for task in args.tasks:
            config = replace(base, **TASKS[task])
            if config.n_way > train_set.num_classes:
                config = replace(config, n_way=train_set.num_classes)
            for s in args.settings:
                rate = steps_per_second(config, SETTINGS[s], train_set, args.steps)
                results[task][s].append(rate)
                print(f"round {r + 1}: {task} {s}: {rate * config.episodes_per_batch:.1f} episodes/s", flush=True)
    devices = [d.device_type for d in tf.config.list_logical_devices()]
    summary = {"machine": {"cpu": cpu_line(), "devices": devices, "tensorflow": tf.__version__},
               "command": "python benchmarks/jit_compile.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in
                                                                          (("out", args.out), ("data_dir", args.data_dir)) if v),
               "tasks": {}}
    lines = ["# XLA and mixed precision, training steps side by side", "",
             f"Devices: {', '.join(sorted(set(devices)))}; TensorFlow {tf.__version__}. Median steps/s over {args.rounds} "
             f"interleaved rounds of {args.steps} warm steps; ratio against float32 (> 1 is faster).", "",
             "| task | " + " | ".join(args.settings) + " |", "|---|" + "---|" * len(args.settings)]
    for task in args.tasks:
        config = TASKS[task]
        medians = {s: float(np.median(v)) for s, v in results[task].items()}
        summary["tasks"][task] = {"config": config, "steps_per_second": medians, "rounds": results[task],
                                  "ratio_to_float32": ({s: m / medians["float32"] for s, m in medians.items()}
                                                       if "float32" in medians else {})}
        label = f"{task} {config['n_way']}-way {config['k_shot']}-shot {config['n_query']}-query x{config['episodes_per_batch']}"
        cells = [f"{m:.2f}" + (f" ({m / medians['float32']:.2f}x)" if "float32" in medians and s != "float32" else "")
                 for s, m in medians.items()]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    write_report(args.out, "jit_compile", summary, lines)


if __name__ == "__main__":
    main()

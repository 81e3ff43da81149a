"""Where int8 gains or loses against float32 under XNNPACK, layer by layer: each layer of the Omniglot Conv-4 (and the
first layer in both forms the converter can give it) alone in a model, int8 against float32, at 1 thread.

Why: on x86-64 without VNNI (AVX2 only) the Omniglot preset's int8 model call was no faster than float32 (issue 22),
where on AVX-512 VNNI it takes 0.36x. This shows which layers make the difference on the CPU it runs on; run it
under benchmarks/avx2_only to see what an AVX2-only CPU runs. The models are built with TensorFlow (random weights,
int8 calibrated on 50 random inputs; speed does not depend on the values) and timed in a child process without it.

    python benchmarks/int8_layers.py --out runs/int8-layers
    benchmarks/avx2_only .venv/bin/python benchmarks/int8_layers.py --out runs/int8-layers-avx2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from report import write_report  # its sibling module (benchmarks run as scripts)

# name -> (input shape, layer): the preset's layers in order (BN folded, ReLU fused, as the converter makes them).
LAYERS = {
    "block0 conv as exported in int8: 1x1 on 28x28x9 patches": ((28, 28, 9), "conv1x1"),
    "block0 conv as exported in float32: 3x3 on 28x28x1": ((28, 28, 1), "conv3x3"),
    "block0 pool 28x28x64": ((28, 28, 64), "pool"),
    "block1 conv 3x3 14x14x64": ((14, 14, 64), "conv3x3"),
    "block2 conv 3x3 7x7x64": ((7, 7, 64), "conv3x3"),
    "block3 conv 3x3 3x3x64": ((3, 3, 64), "conv3x3"),
}


def build(out: Path) -> None:
    from edgemeta.train.backend import keras, tf

    rng = np.random.default_rng(0)
    for i, (shape, kind) in enumerate(LAYERS.values()):
        layer = {"conv1x1": lambda: keras.layers.Conv2D(64, 1, activation="relu"),
                 "conv3x3": lambda: keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
                 "pool": lambda: keras.layers.MaxPool2D(2)}[kind]()
        inputs = keras.Input(shape)
        model = keras.Model(inputs, layer(inputs))
        for quantization in ("float32", "int8"):
            converter = tf.lite.TFLiteConverter.from_keras_model(model)
            if quantization == "int8":
                converter.optimizations = [tf.lite.Optimize.DEFAULT]
                converter.representative_dataset = lambda s=shape: ([rng.random((1, *s), dtype=np.float32)] for _ in range(50))
                converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
                converter.inference_input_type = converter.inference_output_type = tf.int8
            (out / f"{i}.{quantization}.tflite").write_bytes(converter.convert())


TIME = r"""
import json, statistics, sys, time
import numpy as np
from edgemeta.runtime.interpreter import make_interpreter
from edgemeta.cpu import cpu_line
models, rounds = json.loads(sys.argv[1]), int(sys.argv[2])
interpreters = {}
for path in models:
    it = make_interpreter(path, 1)
    it.allocate_tensors()
    d = it.get_input_details()[0]
    it.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
    interpreters[path] = it
times = {path: [] for path in models}
for _ in range(rounds):  # interleaved: every model in every round
    for path, it in interpreters.items():
        for _ in range(50):
            it.invoke()
        start = time.perf_counter()
        for _ in range(500):
            it.invoke()
        times[path].append((time.perf_counter() - start) / 500 * 1e3)
print(json.dumps({"cpu": cpu_line(), "ms": {p: statistics.median(t) for p, t in times.items()}}))
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/int8-layers")
    parser.add_argument("--rounds", type=int, default=11)
    args = parser.parse_args(argv)
    out = Path(args.out)
    (out / "models").mkdir(parents=True, exist_ok=True)
    build(out / "models")
    paths = [str(out / "models" / f"{i}.{q}.tflite") for i in range(len(LAYERS)) for q in ("float32", "int8")]
    done = subprocess.run([sys.executable, "-c", "import sys; sys.modules['tensorflow'] = None\n" + TIME, json.dumps(paths),
                           str(args.rounds)], capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"timing failed:\n{done.stderr[-3000:]}")
    timed = json.loads(done.stdout.strip().splitlines()[-1])
    rows = []
    for i, name in enumerate(LAYERS):
        f32, i8 = timed["ms"][paths[2 * i]], timed["ms"][paths[2 * i + 1]]
        rows.append({"layer": name, "float32_ms": f32, "int8_ms": i8, "ratio": i8 / f32})
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpu": timed["cpu"], "rounds": args.rounds,
              "note": "TensorFlow blocked in the timing process",
              "command": " ".join([Path(sys.executable).name, *sys.argv]), "layers": rows}
    lines = ["# int8 against float32, layer by layer (XNNPACK, 1 thread)", "", f"{report['date']}, {report['cpu']}. "
             f"Median of {args.rounds} interleaved rounds of 500 calls. Command: `{report['command']}`", "",
             "| layer | float32 (ms) | int8 (ms) | int8 / float32 |", "|---|---|---|---|"]
    lines += [f"| {r['layer']} | {r['float32_ms']:.4f} | {r['int8_ms']:.4f} | {r['ratio']:.2f} |" for r in rows]
    write_report(out, "int8_layers", report, lines)


if __name__ == "__main__":
    main()

"""Which Conv-4 changes would speed up ProtoNet training, before any is made: the training step of each variant
(forward, backward and Adam on one 60-way 1-shot 5-query episode, 360 images of 28x28, float32) timed side by side.

Why: on AVX2-only CPUs oneDNN's backward-weights convolution makes edgemeta's ProtoNet step slower than it should be
(docs/benchmarks-training.md, issue 22). Every variant changes the trained weights, so the shipped preset would need
retraining; this measures what each would buy first. The episode is fixed random data (speed does not depend on it).
Variants:
- `baseline`: edgemeta's Conv-4 (3x3 conv with bias, BN, ReLU, 2x2 max-pool, x4);
- `no-bias`: the convolutions without bias (BN's beta makes it redundant);
- `patches`: the first layer as a 1x1 conv on each pixel's 3x3 neighbourhood (9 channels, made in the input
  pipeline, as the int8 export already does), the rest unchanged;
- `patches-no-bias`: both;
- `channels-first`: the baseline in NCHW (oneDNN's own layout family; TensorFlow's Eigen kernels lack it on CPU).

    benchmarks/avx2_only .venv/bin/python benchmarks/conv4_variants.py --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from report import write_report  # its sibling module (benchmarks run as scripts)

from edgemeta.cpu import cpu_line

VARIANTS = ("baseline", "no-bias", "patches", "patches-no-bias", "channels-first")


def build(variant: str, keras):
    patches, bias = variant.startswith("patches"), "no-bias" not in variant
    layout = "channels_first" if variant == "channels-first" else "channels_last"
    inputs = keras.Input((28, 28, 9 if patches else 1))
    x = keras.layers.Permute((3, 1, 2))(inputs) if layout == "channels_first" else inputs
    for i in range(4):
        size = 1 if (i == 0 and patches) else 3
        x = keras.layers.Conv2D(64, size, padding="same", use_bias=bias, data_format=layout)(x)
        x = keras.layers.BatchNormalization(axis=1 if layout == "channels_first" else -1, momentum=0.9)(x)
        x = keras.layers.ReLU()(x)
        x = keras.layers.MaxPool2D(2, data_format=layout)(x)
    return keras.Model(inputs, keras.layers.Flatten()(x))


def step_function(model, tf, keras, n_way: int, k_shot: int):
    optimizer = keras.optimizers.Adam(1e-3)

    @tf.function
    def step(images, query_labels):
        with tf.GradientTape() as tape:
            embeddings = model(images, training=True)
            support, query = embeddings[: n_way * k_shot], embeddings[n_way * k_shot :]
            prototypes = tf.reduce_mean(tf.reshape(support, [n_way, k_shot, -1]), 1)
            logits = -tf.reduce_sum(tf.square(query[:, None] - prototypes[None]), -1)
            loss = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(query_labels, logits, from_logits=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    return step


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=15, help="timed steps per variant and round")
    parser.add_argument("--out", default="runs/conv4-variants")
    args = parser.parse_args(argv)
    from edgemeta.train.backend import keras, kernels, tf

    n_way, k_shot, n_query = 60, 1, 5
    rng = np.random.default_rng(0)
    images = {1: tf.constant(rng.random((n_way * (k_shot + n_query), 28, 28, 1), dtype=np.float32))}
    images[9] = tf.constant(rng.random((n_way * (k_shot + n_query), 28, 28, 9), dtype=np.float32))
    labels = tf.constant(np.repeat(np.arange(n_way), n_query))
    steps = {}
    for variant in VARIANTS:
        keras.utils.set_random_seed(0)
        model = build(variant, keras)
        steps[variant] = (step_function(model, tf, keras, n_way, k_shot), images[model.input_shape[-1]])
        for _ in range(3):  # tracing and warm-up
            steps[variant][0](steps[variant][1], labels)
    rates: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for _ in range(args.rounds):  # interleaved, so drift in the machine's speed hits every variant alike
        for variant, (step, batch) in steps.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                loss = step(batch, labels)
            loss.numpy()
            rates[variant].append(args.steps / (time.perf_counter() - start))
    base = statistics.median(rates["baseline"])
    report = {"cpu": cpu_line(), "kernels": kernels(), "date": time.strftime("%Y-%m-%d %H:%M"), "rounds": args.rounds,
              "steps": args.steps, "variants": {v: {"median": statistics.median(r), "rounds": r,
                                                    "vs_baseline": statistics.median(r) / base} for v, r in rates.items()}}
    lines = ["# Conv-4 variants: ProtoNet training step (60-way 1-shot 5-query, float32)", "",
             f"{report['date']}, {report['cpu']}. Kernels: {report['kernels']}. Median of {args.rounds} interleaved rounds "
             f"of {args.steps} steps.", "", "| variant | steps/s | vs baseline |", "|---|---|---|"]
    lines += [f"| {v} | {r['median']:.2f} | {r['vs_baseline']:.2f}x |" for v, r in report["variants"].items()]
    write_report(args.out, "conv4_variants", report, lines)


if __name__ == "__main__":
    main()

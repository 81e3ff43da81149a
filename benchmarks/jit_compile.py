"""Does XLA (`jit_compile=True`) speed up a Conv-4 training step here? Measured side by side.

Times a forward+backward+update step of the Conv-4 backbone on a 60-way 1-shot 5-query episode's worth
of 28x28 images (360), with and without XLA, after warm-up, and prints the ratio.

    python benchmarks/jit_compile.py
"""

import time

import numpy as np

from edgemeta.backend import keras, tf
from edgemeta.learners import conv4


def step_time(jit: bool, images: np.ndarray, labels: np.ndarray, steps: int = 30) -> float:
    keras.utils.set_random_seed(0)
    backbone = conv4()
    model = keras.Sequential([backbone, keras.layers.Dense(60)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=jit)
    model.train_on_batch(images, labels)  # trace / compile
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(images, labels)
    return (time.perf_counter() - start) / steps


if __name__ == "__main__":
    rng = np.random.default_rng(0)
    x = rng.random((360, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 60, 360)
    plain, xla = step_time(False, x, y), step_time(True, x, y)
    print(f"Conv-4 train step, 360 images, {tf.config.threading.get_intra_op_parallelism_threads() or 'all'} threads: "
          f"no XLA {1000 * plain:.1f} ms, XLA {1000 * xla:.1f} ms (XLA/no-XLA = {xla / plain:.2f})")

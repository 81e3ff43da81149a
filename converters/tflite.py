"""Keras embedding model -> float32 or full-integer int8 TFLite -> bundle directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgemeta.backend import tf
from edgemeta.bundle import Manifest, write_bundle
from edgemeta.preprocessing import Preprocessing
from edgemeta.runtime.interpreter import interpreter_class

# Post-training modes. int8: full integer, int8 in and out (Edge TPU, fast Pi kernels). int16x8: int16
# activations, int8 weights (more accurate, slower reference kernels). float16: float16 weights. dynamic:
# int8 weights, float activations. float32: no quantization.
QUANTIZATIONS = ("int8", "int16x8", "float16", "dynamic", "float32")
SCHEMES = {"int8": "full_integer", "int16x8": "int16_activations", "float16": "float16_weights",
           "dynamic": "dynamic_range", "float32": "none"}
_CALIBRATED = ("int8", "int16x8")


def to_tflite(model, quantization: str = "int8", representative_images: np.ndarray | None = None,
              calibration_samples: int = 500, seed: int = 0) -> bytes:
    """Converts `model` to TFLite bytes.

    `int8` is full-integer quantization (builtins only, int8 input and output), calibrated on up to
    `calibration_samples` of `representative_images` (preprocessed training images); this is what the
    Coral Edge TPU and fast Pi kernels need. `int16x8` is calibrated the same way and keeps float input
    and output. `float16`, `dynamic` and `float32` need no calibration (see `QUANTIZATIONS`). A model
    after quantization-aware training (TFMOT) converts with `int8` and uses its trained ranges.
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {QUANTIZATIONS}. Received: {quantization!r}")
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if quantization in _CALIBRATED:
        if representative_images is None or len(representative_images) == 0:
            raise ValueError(f"{quantization} quantization needs representative_images (preprocessed training images). Received: none")
        expected = tuple(model.input_shape[1:])
        if tuple(representative_images.shape[1:]) != expected:
            raise ValueError(f"representative_images must have shape (n, *{expected}). Received: {representative_images.shape}")
        rng = np.random.default_rng(seed)
        pick = rng.choice(len(representative_images), min(calibration_samples, len(representative_images)), replace=False)
        samples = representative_images[np.sort(pick)].astype(np.float32)

        def representative_dataset():
            for x in samples:
                yield [x[None]]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative_dataset
        if quantization == "int8":
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
        else:
            converter.target_spec.supported_ops = [tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
    elif quantization in ("float16", "dynamic"):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantization == "float16":
            converter.target_spec.supported_types = [tf.float16]
    return converter.convert()


def _tensor_quantization(model_bytes: bytes) -> dict[str, Any]:
    interpreter = interpreter_class()[0](model_content=model_bytes)
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]

    def params(d):
        scale, zero_point = d["quantization"]
        return {"dtype": np.dtype(d["dtype"]).name, "scale": float(scale), "zero_point": int(zero_point)}

    return {"input": params(inp), "output": params(out), "input_dtype": np.dtype(inp["dtype"]).name}


def export_bundle(model, directory: str | Path, preprocessing: Preprocessing, quantization: str = "int8",
                  representative_images: np.ndarray | None = None, metric: str = "squared_euclidean",
                  provenance: dict[str, Any] | None = None) -> Path:
    """Converts `model` and writes `directory/model.tflite` + `directory/manifest.json`."""
    if tuple(model.input_shape[1:]) != preprocessing.input_shape:
        raise ValueError(
            f"The model's input shape {tuple(model.input_shape[1:])} does not match the preprocessing's "
            f"{preprocessing.input_shape}."
        )
    model_bytes = to_tflite(model, quantization, representative_images)
    quant = {"scheme": SCHEMES[quantization], **_tensor_quantization(model_bytes)}
    manifest = Manifest(
        preprocessing=preprocessing,
        embedding_size=int(model.output_shape[-1]),
        metric=metric,
        quantization=quant,
        provenance=dict(provenance or {}),
    )
    return write_bundle(directory, model_bytes, manifest)

"""Keras embedding model -> float32 or full-integer int8 TFLite -> bundle directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgemeta.format.bundle import QUANTIZATION_SCHEMES, QUANTIZATIONS, Manifest, write_bundle
from edgemeta.format.patches import image_patches, patches_shape
from edgemeta.format.preprocessing import Preprocessing
from edgemeta.runtime.interpreter import interpreter_class
from edgemeta.train.backend import keras, tf

# Post-training modes (QUANTIZATIONS). int8: full integer, int8 in and out (Edge TPU, fast Pi kernels). int16x8:
# int16 activations, int8 weights (more accurate, slower reference kernels). float16: float16 weights. dynamic:
# int8 weights, float activations. float32: no quantization. The first two are calibrated on images.
_CALIBRATED = ("int8", "int16x8")


def to_tflite(model, quantization: str = "int8", representative_images: np.ndarray | None = None,
              calibration_samples: int = 500, seed: int = 0, input_patches: int = 1) -> bytes:
    """Converts `model` to TFLite bytes.

    `int8` is full-integer quantization (builtins only, int8 input and output), calibrated on up to
    `calibration_samples` of `representative_images` (preprocessed training images); this is what the
    Coral Edge TPU and fast Pi kernels need. `int16x8` is calibrated the same way and keeps float input
    and output. `float16`, `dynamic` and `float32` need no calibration (see `QUANTIZATIONS`). A model
    after quantization-aware training (TFMOT) converts with `int8` and uses its trained ranges. With
    `input_patches` k > 1 the model takes k x k patches (`patch_input`) and the calibration images are
    images, whose patches are made here.
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {QUANTIZATIONS}. Received: {quantization!r}")
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if quantization in _CALIBRATED:
        if representative_images is None or len(representative_images) == 0:
            raise ValueError(f"{quantization} quantization needs representative_images (preprocessed training images). "
                             "Received: none")
        expected = tuple(model.input_shape[1:])
        if input_patches > 1:  # the calibration images are images; the model's input, their patches
            expected = (*expected[:2], expected[2] // (input_patches * input_patches))
        if tuple(representative_images.shape[1:]) != expected:
            raise ValueError(f"representative_images must have shape (n, *{expected}). Received: {representative_images.shape}")
        rng = np.random.default_rng(seed)
        pick = rng.choice(len(representative_images), min(calibration_samples, len(representative_images)), replace=False)
        samples = representative_images[np.sort(pick)].astype(np.float32)
        if input_patches > 1:
            samples = image_patches(samples, input_patches)

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


def patch_input(model) -> tuple[Any, int]:
    """`model` rebuilt to take each pixel's k x k neighbourhood as channels (`edgemeta.format.patches`), with its
    first layer, a k x k stride-1 'same' convolution on a one-channel image, as a 1x1 convolution on them:
    the same function, the same trained layers. Returns `(model, k)`, or `(model, 1)` unchanged when the
    model is not such a chain of layers.

    Why: on a grayscale image XNNPACK's int8 kernels spend Conv-4's first layer per pixel and tap (that
    layer alone: 0.045-0.054 ms in int8, 0.018 in float32); as a 1x1 convolution on 9 channels it takes
    0.019 ms, and the preset's whole `invoke()` went from 0.067 to 0.051 ms (docs/runtime.md, "Speed").
    Only one-channel inputs are rewritten: that is what was measured.
    """
    layers = model.layers
    if len(layers) < 3 or not isinstance(layers[0], keras.layers.InputLayer) or type(layers[1]) is not keras.layers.Conv2D:
        return model, 1
    first = layers[1]
    config = first.get_config()
    k = config["kernel_size"][0]
    shape = tuple(model.input_shape[1:])
    if (len(shape) != 3 or shape[-1] != 1 or config["kernel_size"] != (k, k) or k % 2 == 0 or k == 1
            or config["strides"] != (1, 1) or config["dilation_rate"] != (1, 1) or config.get("groups", 1) != 1
            or config["padding"] != "same" or config["data_format"] != "channels_last"):
        return model, 1
    try:  # a plain chain: each layer's input is the previous layer's output
        chain = all(layer.input is prev.output for prev, layer in zip(layers, layers[1:])) and model.output is layers[-1].output
    except (AttributeError, ValueError):  # a layer used at several places of the graph
        chain = False
    if not chain:
        return model, 1
    inputs = keras.Input(patches_shape(shape, k), name=layers[0].name)
    conv = keras.layers.Conv2D.from_config({**config, "kernel_size": (1, 1), "padding": "valid"})
    x = conv(inputs)
    kernel, *bias = first.get_weights()  # (k, k, 1, F) -> (1, 1, k*k, F): rows in the patches' order
    conv.set_weights([kernel.reshape(1, 1, -1, kernel.shape[-1]), *bias])
    for layer in layers[2:]:
        x = layer(x)
    return keras.Model(inputs, x, name=model.name), k


def export_bundle(model, directory: str | Path, preprocessing: Preprocessing, quantization: str = "int8",
                  representative_images: np.ndarray | None = None, metric: str = "squared_euclidean",
                  provenance: dict[str, Any] | None = None, raw_shape: tuple[int, ...] | None = None) -> Path:
    """Converts `model` and writes `directory/model.tflite` + `directory/manifest.json`. In int8, a model
    whose first layer is a k x k convolution on a grayscale image is exported taking the image's patches
    (`patch_input`; the manifest's `input_patches`, which the runtime builds).

    `raw_shape`, `(height, width[, channels])` of the raw images the board will be handed (the training
    data's, e.g. (105, 105) for Omniglot), is recorded in the manifest for the runtime's memory planning;
    without it the runtime plans for images of the preprocessing's input size."""
    if tuple(model.input_shape[1:]) != preprocessing.input_shape:
        raise ValueError(
            f"The model's input shape {tuple(model.input_shape[1:])} does not match the preprocessing's "
            f"{preprocessing.input_shape}."
        )
    if raw_shape is not None:
        raw_shape = tuple(int(d) for d in raw_shape) + ((1,) if len(raw_shape) == 2 else ())  # (h, w): grayscale
    # Patches pay where XNNPACK's int8 kernels waste the one-channel taps. A patched float32 model measured no
    # faster (invoke 0.237 vs 0.224 ms, median of 20 rounds), so there the gather would be pure cost.
    converted, k = patch_input(model) if quantization == "int8" else (model, 1)
    model_bytes = to_tflite(converted, quantization, representative_images, input_patches=k)
    quant = {"scheme": QUANTIZATION_SCHEMES[quantization], **_tensor_quantization(model_bytes)}
    manifest = Manifest(
        preprocessing=preprocessing,
        embedding_size=int(model.output_shape[-1]),
        metric=metric,
        quantization=quant,
        provenance=dict(provenance or {}),
        input_patches=k,
        raw_shape=raw_shape,
    )
    return write_bundle(directory, model_bytes, manifest)

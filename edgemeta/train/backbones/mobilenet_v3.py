"""MobileNetV3 Small and Large from tf_keras.applications as embedding backbones, with Keras' ImageNet weights."""

from __future__ import annotations

import os

from edgemeta.train.backbones.common import (
    DOWNLOAD_TIMEOUT_SECONDS,
    check_input_shape,
    check_momentum,
    check_width,
    download_timeout,
    load_weights_file,
    resolve_weights,
    set_batchnorm,
)
from edgemeta.train.backend import keras

MIN_SIZE = 32  # Keras' own limit: five stride-2 stages
# Where Keras downloads the no-top ImageNet weights from (into ~/.keras/models/, or $KERAS_HOME/models/); named here
# only to tell an offline user which file to fetch.
KERAS_WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v3/"


def mobilenet_v3_small(input_shape: tuple[int, int, int] = (224, 224, 3), weights: str | os.PathLike | None = None,
                       width: float = 1.0, minimalistic: bool = False, input_range: tuple[float, float] = (0.0, 1.0),
                       bn_momentum: float = 0.9, synchronized_bn: bool = False) -> keras.Model:
    """MobileNetV3-Small (Howard et al., 2019) without its classifier, average-pooled: a 576-d embedding at any
    input size (the last 1x1 conv's channels; x `width`, rounded to multiples of 8); 0.94 M parameters at `width=1`
    (0.44 M minimalistic).
    See `mobilenet_v3` for the options, the learners it supports and the Edge TPU notes."""
    return mobilenet_v3("small", input_shape, weights, width, minimalistic, input_range, bn_momentum, synchronized_bn)


def mobilenet_v3_large(input_shape: tuple[int, int, int] = (224, 224, 3), weights: str | os.PathLike | None = None,
                       width: float = 1.0, minimalistic: bool = False, input_range: tuple[float, float] = (0.0, 1.0),
                       bn_momentum: float = 0.9, synchronized_bn: bool = False) -> keras.Model:
    """MobileNetV3-Large without its classifier, average-pooled: a 960-d embedding (x `width`, rounded to multiples
    of 8); 3.0 M parameters at `width=1` (1.44 M minimalistic). See `mobilenet_v3` for the options, the learners it
    supports and the Edge TPU notes."""
    return mobilenet_v3("large", input_shape, weights, width, minimalistic, input_range, bn_momentum, synchronized_bn)


def mobilenet_v3(size: str, input_shape: tuple[int, int, int], weights: str | os.PathLike | None = None, width: float = 1.0,
                 minimalistic: bool = False, input_range: tuple[float, float] = (0.0, 1.0), bn_momentum: float = 0.9,
                 synchronized_bn: bool = False) -> keras.Model:
    """`keras.applications.MobileNetV3Small` / `Large` (`size` "small" / "large") with `include_top=False`,
    `pooling="avg"`, `include_preprocessing=False` and `alpha=width`, 1 or 3 channels, inputs of at least 32x32.

    Input scaling: with `include_preprocessing=False` the application expects pixels in [-1, 1] (with True it would
    rescale [0, 255] itself). `input_range` is the range of what the model is fed: the default (0, 1) is what
    `Preprocessing` produces without normalisation, and a Rescaling layer (2x - 1: int8 MUL + ADD) maps it to
    [-1, 1]; pass (-1, 1) when the manifest's preprocessing normalises to [-1, 1] itself (no layer is added).

    Weights:
    - None / "none": random initialisation.
    - "imagenet": Keras' ImageNet weights, downloaded by Keras into ~/.keras/models/ on first use (a download that
      stalls gives up after `DOWNLOAD_TIMEOUT_SECONDS`); offline, a RuntimeError names the file and how to pass a
      local copy. They exist for `width` 0.75 and 1 (only 1 when `minimalistic`); any input size takes them. With one
      input channel the first conv's kernel is summed over RGB, which is exactly the RGB model on a grey image.
    - a path: a Keras weights file of this architecture: Keras' own no-top file (weights_mobilenet_v3_*_no_top_v2.h5,
      fetched on another machine) or one saved from this backbone (a run's embedding.keras).

    `minimalistic=True` is the Edge TPU variant: ReLU instead of hard-swish, 3x3 instead of 5x5 depthwise kernels, no
    squeeze-and-excitation. The full model's int8 HARD_SWISH is not on Coral's supported list (google-coral/edgetpu
    #272): the Edge TPU compiler maps only the ops before the first one, i.e. the first conv. Minimalistic, the model
    is CONV_2D, DEPTHWISE_CONV_2D, ADD, MUL and MEAN, all on Coral's list. Both convert to full int8 for XNNPACK.

    `bn_momentum` replaces Keras' 0.999 on every BatchNorm layer: at 0.999 the moving statistics barely move in a
    meta-training run of a few thousand steps, and the exported (inference-mode) model would use the ImageNet (or
    initial) statistics. `synchronized_bn` as for `conv4`.

    Learners: the metric ones (protonet, matching, relation). Depthwise convolutions and residual sums are not what
    the gradient-based learners' fast-weight forward pass runs.
    """
    name = f"mobilenet_v3_{size}"
    input_shape = check_input_shape(input_shape, name, MIN_SIZE, channels=(1, 3))
    width = check_width(width)
    bn_momentum = check_momentum(bn_momentum)
    if not isinstance(minimalistic, bool):
        raise ValueError(f"minimalistic must be True or False. Received: {minimalistic!r}")
    scale, offset = _rescaling(input_range)
    weights = resolve_weights(weights)
    if weights == "imagenet":
        available = (1.0,) if minimalistic else (0.75, 1.0)
        if width not in available:
            raise ValueError(f"Keras has ImageNet weights of {name}{' (minimalistic)' if minimalistic else ''} for width "
                             f"{' or '.join(map(str, available))} only. Received: width={width}")

    def build(channels: int, source: str | None) -> keras.Model:
        inputs = keras.Input(shape=(*input_shape[:2], channels), name="image")
        x = inputs if scale is None else keras.layers.Rescaling(scale, offset=offset, name="to_minus_one_one")(inputs)
        application = keras.applications.MobileNetV3Small if size == "small" else keras.applications.MobileNetV3Large
        return application(input_tensor=x, input_shape=(*input_shape[:2], channels), alpha=width, minimalistic=minimalistic,
                           include_top=False, weights=source, pooling="avg", include_preprocessing=False)

    if weights == "imagenet":
        model = _imagenet(build, input_shape[2], name, width, minimalistic)
    else:
        model = build(input_shape[2], None)
        if weights is not None:
            _load_file(model, build, weights, name)
    return set_batchnorm(model, bn_momentum, synchronized_bn)


def _rescaling(input_range) -> tuple[float | None, float | None]:
    """The Rescaling `(scale, offset)` that maps `input_range` onto [-1, 1]; `(None, None)` when it is [-1, 1]."""
    try:
        low, high = (float(v) for v in input_range)
        ok = high > low and not any(isinstance(v, (bool, str)) for v in input_range)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"input_range must be (low, high) with low < high: the range of the pixels the model is fed, "
                         f"e.g. (0, 1) or (-1, 1). Received: {input_range!r}")
    if (low, high) == (-1.0, 1.0):
        return None, None
    scale = 2.0 / (high - low)
    return scale, -1.0 - low * scale


def _imagenet(build, channels: int, name: str, width: float, minimalistic: bool) -> keras.Model:
    """The model with Keras' ImageNet weights, with a clear error when they cannot be downloaded."""
    variant = name.rsplit("_", 1)[1] + ("_minimalistic" if minimalistic else "")
    file = f"weights_mobilenet_v3_{variant}_224_{width}_float_no_top_v2.h5"
    try:
        with download_timeout(DOWNLOAD_TIMEOUT_SECONDS):
            rgb = build(3, "imagenet")
    except Exception as e:  # Keras' get_file wraps URLError/HTTPError in a bare Exception; a stalled read is OSError
        if not (isinstance(e, OSError) or "URL fetch failure" in str(e)):
            raise
        raise RuntimeError(
            f"Could not download the ImageNet weights of {name} from {KERAS_WEIGHTS_URL}{file} ({e}). Keras keeps them in "
            f"~/.keras/models/ once downloaded. Offline, fetch that file on a connected machine and pass its path: "
            f"--weights PATH (weights=PATH in Python), or copy it into ~/.keras/models/; or train from scratch with "
            f"--weights none. Received: weights='imagenet'") from e
    return _to_channels(rgb, build, channels)


def _load_file(model: keras.Model, build, path: str, name: str) -> None:
    """Loads `path` into `model`; into a grey model, an RGB file (e.g. Keras' own) is folded as for ImageNet."""
    try:
        load_weights_file(model, path, name)
        return
    except ValueError as error:
        if model.input_shape[-1] != 1:
            raise
        mismatch = error
    rgb = build(3, None)
    try:
        load_weights_file(rgb, path, name)
    except ValueError:
        raise mismatch from None  # neither grey nor RGB: the grey model's error says what was expected
    model.set_weights(_to_channels(rgb, build, 1).get_weights())


def _to_channels(rgb: keras.Model, build, channels: int) -> keras.Model:
    """`rgb` itself for 3 channels; for 1, the same network on grey images: a grey image fed to an RGB model is that
    image in every channel, so the first conv's kernel summed over its input channels gives the same outputs."""
    if channels == 3:
        return rgb
    grey = build(1, None)
    first = True
    for target, source in zip(grey.layers, rgb.layers):
        values = source.get_weights()
        if values and first:
            values[0] = values[0].sum(axis=2, keepdims=True)  # (kh, kw, 3, filters) -> (kh, kw, 1, filters)
            first = False
        target.set_weights(values)
    return grey

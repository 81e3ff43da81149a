"""What the backbone builders share: the `weights` argument, loading a weights file, option checks and BatchNorm settings."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from edgemeta.train.backend import keras

WEIGHTS_EXPECTED = ("'imagenet', 'none' (random initialisation) or the path of a Keras weights file "
                    "(.weights.h5 / .h5, or a run's embedding.keras)")
# A Keras download with no timeout waits as long as the OS lets a connection hang (minutes behind a firewall that
# drops packets); with this default every blocking socket call gives up after it.
DOWNLOAD_TIMEOUT_SECONDS = 60.0


def resolve_weights(weights: str | os.PathLike | None) -> str | None:
    """`weights` as a builder takes it: None (random initialisation; also "none"), "imagenet", or the path of an
    existing file as a string. A path that is no file raises FileNotFoundError."""
    if weights is None:
        return None
    if not isinstance(weights, (str, os.PathLike)):
        raise ValueError(f"weights must be {WEIGHTS_EXPECTED}. Received: {weights!r}")
    text = os.fspath(weights)
    if text.lower() == "none":
        return None
    if text.lower() == "imagenet":
        return "imagenet"
    if not Path(text).is_file():
        raise FileNotFoundError(f"No weights file at {text!r}. weights must be {WEIGHTS_EXPECTED}. Received: weights={text!r}")
    return text


def no_imagenet_weights(backbone: str) -> ValueError:
    """The error for weights='imagenet' on a backbone that has no pretrained weights."""
    return ValueError(f"Backbone {backbone!r} has no ImageNet weights: it is trained from scratch. Expected weights 'none' "
                      "or the path of a Keras weights file saved from this backbone. Received: weights='imagenet'")


def load_weights_file(model: keras.Model, path: str, backbone: str) -> None:
    """Loads the Keras weights file `path` into `model`, or raises a ValueError saying what did not fit."""
    try:
        model.load_weights(path)
    except (ValueError, OSError, KeyError, TypeError) as e:  # h5py and Keras report a mismatch in all of these
        raise ValueError(
            f"Could not load the weights file {path!r} into backbone {backbone!r} (input {tuple(model.input_shape[1:])}, "
            f"{model.count_params()} parameters): {e}. Expected weights saved from the same backbone with the same options "
            f"and input channels (a run's embedding.keras, or backbone.save_weights). Received: weights={path!r}") from e


def check_width(width: float) -> float:
    """A width multiplier: a positive finite number."""
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not 0 < width < float("inf"):
        raise ValueError(f"width must be a positive number (a multiplier of every layer's channels). Received: {width!r}")
    return float(width)


def scaled(channels: int, width: float) -> int:
    """`channels` x `width`, rounded, at least 1."""
    return max(1, int(round(channels * width)))


def check_momentum(bn_momentum: float) -> float:
    if isinstance(bn_momentum, bool) or not isinstance(bn_momentum, (int, float)) or not 0 <= bn_momentum < 1:
        raise ValueError(f"bn_momentum must be in [0, 1). Received: {bn_momentum!r}")
    return float(bn_momentum)


def check_input_shape(input_shape, backbone: str, min_size: int, channels: tuple[int, ...] | None = None) -> tuple[int, int, int]:
    """`input_shape` as `(height, width, channels)` of positive ints, both sides >= `min_size` (and `channels` one of
    `channels` when given), or a ValueError saying what the backbone needs."""
    try:
        shape = tuple(int(d) for d in input_shape)
        ok = len(shape) == 3 and all(d > 0 and d == v for d, v in zip(shape, input_shape))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"input_shape must be (height, width, channels) of positive integers. Received: {input_shape!r}")
    if min(shape[:2]) < min_size:
        raise ValueError(f"Backbone {backbone!r} needs inputs of at least {min_size}x{min_size} pixels "
                         f"(--image-size {min_size} or more). Received: input_shape={shape}")
    if channels is not None and shape[2] not in channels:
        raise ValueError(f"Backbone {backbone!r} takes {' or '.join(map(str, channels))} channel(s). "
                         f"Received: input_shape={shape}")
    return shape


def set_batchnorm(model: keras.Model, momentum: float | None, synchronized: bool) -> keras.Model:
    """`model` with every BatchNorm layer's moving-statistics momentum set to `momentum` (None: kept) and, when `synchronized`,
    BatchNorm synchronised across `tf.distribute` replicas (a clone with the same weights: that choice is made when a
    layer is built). For models built elsewhere, e.g. Keras applications."""
    if synchronized:
        def clone(layer):
            config = layer.get_config()
            if isinstance(layer, keras.layers.BatchNormalization):
                config.update(synchronized=True, fused=None)
            return layer.__class__.from_config(config)

        copy = keras.models.clone_model(model, clone_function=clone)
        copy.set_weights(model.get_weights())
        model = copy
    for layer in model.layers:
        if momentum is not None and isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = momentum  # read at every training step and by get_config: it is saved with the model
    return model


@contextlib.contextmanager
def download_timeout(seconds: float = DOWNLOAD_TIMEOUT_SECONDS) -> Iterator[None]:
    """Within the block, sockets without a timeout of their own (Keras' `get_file`) give up after `seconds` instead
    of hanging. A default someone else already set is kept."""
    previous = socket.getdefaulttimeout()
    if previous is None:
        socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        if previous is None:
            socket.setdefaulttimeout(None)

"""ResNet-12, the residual backbone of TADAM and MetaOptNet, the meta-learning standard on mini-ImageNet."""

from __future__ import annotations

import os

from edgemeta.train.backbones.common import (
    check_input_shape,
    check_momentum,
    check_width,
    load_weights_file,
    no_imagenet_weights,
    resolve_weights,
    scaled,
)
from edgemeta.train.backend import keras

WIDTHS = (64, 160, 320, 640)  # MetaOptNet's (Lee et al., 2019); TADAM's are 64-128-256-512
ACTIVATIONS = ("leaky_relu", "leaky_relu_max", "relu")
NEGATIVE_SLOPE = 0.1


def resnet12(input_shape: tuple[int, int, int] = (84, 84, 3), weights: str | os.PathLike | None = None, width: float = 1.0,
             activation: str = "leaky_relu", bn_momentum: float = 0.9, synchronized_bn: bool = False) -> keras.Model:
    """Four residual blocks, each 3 x [3x3 conv, BN, activation] (the last without activation) plus a 1x1 conv + BN
    shortcut, their sum through the activation, then a 2x2 max-pool; global average pooling at the end. Block widths
    64-160-320-640 times `width` (`width=0.25`: 16-40-80-160, for tests and CPU budgets). Any number of channels;
    inputs of at least 16 pixels a side (four pools).

    Embedding: 640 x `width` dimensions (global average pooling; MetaOptNet flattens the 5x5 map at 84x84 instead).
    12.4 M parameters at 84x84x3 and `width=1`. MetaOptNet's DropBlock is left out.

    Learners: the metric ones (protonet, matching, relation). The residual sums are no chain of layers, so the
    gradient-based learners (MAML and its family) cannot run it with fast weights.

    `activation`:
    - "leaky_relu" (default, the papers' LeakyReLU with slope 0.1): an int8 LEAKY_RELU op, which XNNPACK runs on a
      Pi, but which Coral's Edge TPU compiler does not map (it is not on Coral's supported-operations list, and
      google-coral/edgetpu#272 and #597 say so): the model would leave the Edge TPU at the first one.
    - "leaky_relu_max": the same function written max(x, 0.1 x): int8 MUL + MAXIMUM, both on Coral's list, so the
      whole model stays on the Edge TPU; its weights are interchangeable with "leaky_relu"'s.
    - "relu": ReLU, fused into the preceding conv in int8 (the cheapest and the Edge TPU's simplest).
    The rest maps to CONV_2D, ADD, MAX_POOL_2D and MEAN, all on Coral's list.

    `bn_momentum=0.9` is the PyTorch implementations' (their momentum 0.1); `synchronized_bn` as for `conv4`.
    `weights`: None (random initialisation; He-normal convs, as MetaOptNet's) or the path of a Keras weights file
    saved from this backbone with the same `width`; ResNet-12 has no ImageNet weights.
    """
    input_shape = check_input_shape(input_shape, "resnet12", 2 ** len(WIDTHS))
    width = check_width(width)
    bn_momentum = check_momentum(bn_momentum)
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}. Received: {activation!r}")
    weights = resolve_weights(weights)
    if weights == "imagenet":
        raise no_imagenet_weights("resnet12")

    def conv_bn(x, filters: int, size: int, name: str):
        x = keras.layers.Conv2D(filters, size, padding="same", use_bias=False, kernel_initializer="he_normal",
                                name=f"{name}_conv")(x)
        return keras.layers.BatchNormalization(momentum=bn_momentum, synchronized=synchronized_bn, name=f"{name}_bn")(x)

    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    for i, channels in enumerate(WIDTHS):
        filters, name = scaled(channels, width), f"block{i}"
        shortcut = conv_bn(x, filters, 1, f"{name}_shortcut")
        for j in range(3):
            x = conv_bn(x, filters, 3, f"{name}_{j}")
            if j < 2:
                x = _activate(x, activation, f"{name}_{j}_act")
        x = keras.layers.Add(name=f"{name}_add")([x, shortcut])
        x = _activate(x, activation, f"{name}_act")
        x = keras.layers.MaxPool2D(2, name=f"{name}_pool")(x)
    outputs = keras.layers.GlobalAveragePooling2D(name="embedding")(x)
    model = keras.Model(inputs, outputs, name="resnet12")
    if weights is not None:
        load_weights_file(model, weights, "resnet12")
    return model


def _activate(x, activation: str, name: str):
    if activation == "relu":
        return keras.layers.ReLU(name=name)(x)
    if activation == "leaky_relu":
        return keras.layers.LeakyReLU(alpha=NEGATIVE_SLOPE, name=name)(x)
    # max(x, a x) is LeakyReLU for 0 < a < 1; the converter keeps it as MUL + MAXIMUM rather than fusing LEAKY_RELU.
    return keras.layers.Maximum(name=name)([x, keras.layers.Rescaling(NEGATIVE_SLOPE, name=f"{name}_slope")(x)])

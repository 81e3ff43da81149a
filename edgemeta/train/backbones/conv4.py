"""Conv-4, the four-block convolutional backbone of Matching and Prototypical Networks."""

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


def conv4(input_shape: tuple[int, int, int] = (28, 28, 1), filters: int = 64, blocks: int = 4,
          bn_momentum: float = 0.9, separable: bool = False, synchronized_bn: bool = False,
          weights: str | os.PathLike | None = None, width: float = 1.0) -> keras.Model:
    """The Conv-4 backbone of Vinyals et al. / Snell et al.: `blocks` x [3x3 conv, BN, ReLU, 2x2 max-pool],
    flattened. The embedding has `filters x (H / 2^blocks) x (W / 2^blocks)` dimensions (pools round down):
    64 on 28x28 grey images, 1600 on 84x84 (mini-ImageNet's standard 5x5x64). Any number of channels; inputs of at
    least 2^blocks pixels a side. `width` multiplies `filters`.

    Learners: all of them. It is a chain of Conv2D, BatchNorm and weightless layers, so the gradient-based
    learners (MAML, FOMAML, ANIL, Meta-SGD, Reptile) can run it with fast weights; with `separable=True` they cannot
    (DepthwiseConv2D).

    Int8 / Edge TPU: CONV_2D (BN and ReLU fused), MAX_POOL_2D and RESHAPE, all on Coral's list. 113 k parameters
    at 84x84x3 (64 filters).

    `separable=True` makes every block after the first a depthwise 3x3 conv followed by a pointwise 1x1
    conv (MobileNet's factorisation: ~9x fewer weights and multiply-adds); the first block, with one
    input channel, stays a full conv. Distillation students use it (`edgemeta.compress`).

    `bn_momentum=0.9` matches the reference PyTorch implementations (their momentum 0.1): with Keras'
    default 0.99 the inference statistics lag far behind short episodic training.

    `synchronized_bn=True` makes BatchNorm use the statistics of the whole global batch across
    `tf.distribute` replicas (training builds it so when it runs on several; the saved model is plain).

    `weights`: None (random initialisation) or the path of a Keras weights file saved from this backbone; Conv-4 has
    no ImageNet weights.

    Example:
        >>> conv4((28, 28, 1)).output_shape  # doctest: +SKIP
        (None, 64)
    """
    if min(input_shape[:2]) < 2**blocks:
        raise ValueError(f"Conv-4 with {blocks} pools needs inputs of at least {2**blocks}px. Received: {input_shape}")
    input_shape = check_input_shape(input_shape, "conv4", 2**blocks)
    bn_momentum = check_momentum(bn_momentum)
    filters = scaled(filters, check_width(width))
    weights = resolve_weights(weights)
    if weights == "imagenet":
        raise no_imagenet_weights("conv4")
    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    for i in range(blocks):
        if separable and i > 0:
            x = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False, name=f"block{i}_depthwise")(x)
            x = keras.layers.Conv2D(filters, 1, name=f"block{i}_conv")(x)
        else:
            x = keras.layers.Conv2D(filters, 3, padding="same", name=f"block{i}_conv")(x)
        x = keras.layers.BatchNormalization(momentum=bn_momentum, synchronized=synchronized_bn, name=f"block{i}_bn")(x)
        x = keras.layers.ReLU(name=f"block{i}_relu")(x)
        x = keras.layers.MaxPool2D(2, name=f"block{i}_pool")(x)
    outputs = keras.layers.Flatten(name="embedding")(x)
    model = keras.Model(inputs, outputs, name="conv4")
    if weights is not None:
        load_weights_file(model, weights, "conv4")
    return model

"""Embedding backbones built with tf_keras: the models that are exported to the board."""

from __future__ import annotations

from edgemeta.train.backend import keras


def conv4(input_shape: tuple[int, int, int] = (28, 28, 1), filters: int = 64, blocks: int = 4,
          bn_momentum: float = 0.9, separable: bool = False, synchronized_bn: bool = False) -> keras.Model:
    """The Conv-4 backbone of Vinyals et al. / Snell et al.: `blocks` x [3x3 conv, BN, ReLU, 2x2 max-pool],
    flattened. On 28x28 inputs with 64 filters it yields a 64-d embedding.

    `separable=True` makes every block after the first a depthwise 3x3 conv followed by a pointwise 1x1
    conv (MobileNet's factorisation: ~9x fewer weights and multiply-adds); the first block, with one
    input channel, stays a full conv. Distillation students use it (`edgemeta.compress`).

    `bn_momentum=0.9` matches the reference PyTorch implementations (their momentum 0.1): with Keras'
    default 0.99 the inference statistics lag far behind short episodic training.

    `synchronized_bn=True` makes BatchNorm use the statistics of the whole global batch across
    `tf.distribute` replicas (training builds it so when it runs on several; the saved model is plain).

    Example:
        >>> conv4((28, 28, 1)).output_shape  # doctest: +SKIP
        (None, 64)
    """
    if min(input_shape[:2]) < 2**blocks:
        raise ValueError(f"Conv-4 with {blocks} pools needs inputs of at least {2**blocks}px. Received: {input_shape}")
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
    return keras.Model(inputs, outputs, name="conv4")


BACKBONES = {"conv4": conv4}

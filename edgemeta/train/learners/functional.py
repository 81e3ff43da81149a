"""Runs a tf_keras backbone with substituted weights (the "fast weights" of an inner loop), so
gradient-based meta-learners can differentiate through their own adaptation."""

from __future__ import annotations

from collections.abc import Sequence

from edgemeta.train.backend import keras, tf

_SUPPORTED = (keras.layers.Conv2D, keras.layers.BatchNormalization, keras.layers.Dense)


def check_backbone(backbone: keras.Model) -> None:
    """Raises unless `backbone` is a chain of layers this module can run functionally."""
    for layer in backbone.layers:
        if layer.weights and not isinstance(layer, _SUPPORTED):
            raise ValueError(
                f"Gradient-based learners run the backbone with fast weights and support layers with weights "
                f"of types {[c.__name__ for c in _SUPPORTED]} (plus weightless layers). Received: layer "
                f"{layer.name!r} of type {type(layer).__name__}.")
        inbound = getattr(layer, "_inbound_nodes", [])
        if len(inbound) > 1 or (inbound and len(inbound[0].parent_nodes) > 1):
            raise ValueError("Functional fast weights need a chain backbone. "
                             f"Received: layer {layer.name!r} with several inputs.")


def forward(backbone: keras.Model, weights: Sequence[tf.Tensor], images: tf.Tensor) -> tf.Tensor:
    """`backbone(images)` with `weights` (same order as `backbone.trainable_weights`) in place of its
    trainable weights. BatchNorm always uses the batch's own statistics: the transductive setting of
    the MAML paper, where each task's images are normalised together."""
    first = next(layer for layer in backbone.layers if layer.weights)
    compute = first.compute_dtype  # float16/bfloat16 under mixed precision
    exact = first.variable_dtype  # the weights' dtype (float32 then): statistics and the output use it
    x, i = tf.cast(images, compute), 0
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        n = len(layer.trainable_weights)
        own, i = list(weights[i : i + n]), i + n
        w = [tf.cast(v, compute) for v in own]
        if isinstance(layer, keras.layers.Conv2D):
            x = tf.nn.conv2d(x, w[0], layer.strides, layer.padding.upper(), dilations=layer.dilation_rate)
            x = layer.activation(x + w[1] if layer.use_bias else x)
        elif isinstance(layer, keras.layers.Dense):
            x = layer.activation(tf.matmul(x, w[0]) + w[1] if layer.use_bias else tf.matmul(x, w[0]))
        elif isinstance(layer, keras.layers.BatchNormalization):
            # Not tf.nn.moments: it stops the gradient through the mean inside the variance, which leaves
            # first derivatives exact but drops a term of the second ones that MAML differentiates.
            # Statistics in the weights' dtype: float16's range is too small for sums of squares.
            xs = tf.cast(x, exact)
            axes = list(range(len(x.shape) - 1))
            mean = tf.reduce_mean(xs, axes)
            variance = tf.reduce_mean(tf.square(xs - mean), axes)
            gamma = tf.cast(own.pop(0), exact) if layer.scale else None
            beta = tf.cast(own.pop(0), exact) if layer.center else None
            x = tf.cast(tf.nn.batch_normalization(xs, mean, variance, beta, gamma, layer.epsilon), compute)
        else:
            x = layer(x)
    return tf.cast(x, exact)


def calibrate_batchnorm(backbone: keras.Model, images, batch_size: int = 256, batches: int = 20, seed: int = 0) -> None:
    """Sets every BatchNorm layer's moving mean/variance to the average batch statistics over up to
    `batches` random batches of `images`. Learners whose inner loop uses batch statistics never update
    them during training, yet the exported (inference-mode) model needs them."""
    import numpy as np

    layers = [layer for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)]
    if not layers:
        return
    order = np.random.default_rng(seed).permutation(len(images))
    chunks = [order[s : s + batch_size] for s in range(0, len(order), batch_size)][:batches]
    momenta = [layer.momentum for layer in layers]
    try:
        for n, idx in enumerate(chunks):
            for layer in layers:  # running average of batch statistics: weight 1/(n+1) on batch n
                layer.momentum = n / (n + 1)
            backbone(tf.constant(images[np.sort(idx)]), training=True)
    finally:
        for layer, m in zip(layers, momenta):
            layer.momentum = m

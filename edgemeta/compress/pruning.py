"""Magnitude pruning of an embedding model with TFMOT: a polynomial sparsity schedule or 2:4 structure."""

from __future__ import annotations

import numpy as np

from edgemeta.train.backend import keras

PRUNABLE = (keras.layers.Conv2D, keras.layers.Dense)  # also covers the pointwise convs of separable students


def prune(model: keras.Model, sparsity: float | None, steps: int, structured: bool = False) -> keras.Model:
    """Wraps `model`'s conv and dense layers with `prune_low_magnitude`.

    Unstructured: sparsity rises from 0 along a polynomial schedule and reaches `sparsity` after three
    quarters of `steps`, leaving the rest of fine-tuning to recover at the final sparsity. Structured:
    2:4 sparsity from the first step, on the layers whose kernels group into fours per output channel
    (the first conv of a one-channel image, 3x3x1 = 9 weights per filter, stays dense).
    `model` itself is left untouched. Train with the `tfmot.sparsity.keras.UpdatePruningStep` callback;
    `strip_pruning` afterwards.
    """
    import tensorflow_model_optimization as tfmot

    sparsity_api = tfmot.sparsity.keras
    frequency = max(1, steps // 100)
    if structured:
        schedule = sparsity_api.ConstantSparsity(0.5, begin_step=0, frequency=frequency)
    else:
        end = max(frequency, int(0.75 * steps) // frequency * frequency)  # a pruning step falls on `end`
        schedule = sparsity_api.PolynomialDecay(0.0, sparsity, begin_step=0, end_step=end, frequency=frequency)

    def wrap(layer):
        if not isinstance(layer, PRUNABLE):
            return layer
        if structured:
            if int(np.prod(layer.kernel.shape[:-1])) % 4:
                return layer
            return sparsity_api.prune_low_magnitude(layer, pruning_schedule=schedule, sparsity_m_by_n=(2, 4))
        return sparsity_api.prune_low_magnitude(layer, pruning_schedule=schedule)

    return keras.models.clone_model(copy_model(model), clone_function=wrap)


def copy_model(model: keras.Model) -> keras.Model:
    """A copy with its own weights: TFMOT's wrappers wrap the very layers they are given."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def strip_pruning(model: keras.Model) -> keras.Model:
    """The plain Keras model, with the pruned weights set to zero."""
    import tensorflow_model_optimization as tfmot

    return tfmot.sparsity.keras.strip_pruning(model)


def kernel_sparsity(model: keras.Model) -> float:
    """Fraction of exact zeros over all conv/dense kernels (depthwise included)."""
    kernels = [w.numpy() for layer in model.layers for w in layer.weights if "kernel" in w.name]
    if not kernels:
        raise ValueError(f"Model {model.name!r} has no conv or dense kernels to measure sparsity on.")
    return float(sum((k == 0).sum() for k in kernels) / sum(k.size for k in kernels))

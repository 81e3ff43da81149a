"""Quantization-aware training with TFMOT, preserving the sparsity and clusters of earlier stages."""

from __future__ import annotations

from edgemeta.train.backend import keras


def quantize_for_training(model: keras.Model, preserve_sparsity: bool = False, preserve_clusters: bool = False) -> keras.Model:
    """Returns `model` with fake-quantization (int8 weights per channel, int8 activations) for QAT.

    After pruning the scheme is TFMOT's prune-preserving one (PQAT), after clustering its
    cluster-preserving one (CQAT, and PCQAT with both), so QAT does not undo those stages.
    """
    import tensorflow_model_optimization as tfmot

    q = tfmot.quantization.keras
    if not (preserve_sparsity or preserve_clusters):
        return q.quantize_model(model)
    collab = tfmot.experimental.combine
    if preserve_clusters:
        scheme = collab.Default8BitClusterPreserveQuantizeScheme(preserve_sparsity=preserve_sparsity)
    else:
        scheme = collab.Default8BitPrunePreserveQuantizeScheme()
    return q.quantize_apply(q.quantize_annotate_model(model), scheme)

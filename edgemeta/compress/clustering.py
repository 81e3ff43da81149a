"""Weight clustering of an embedding model with TFMOT (k-means++ centroids, optionally sparsity-preserving)."""

from __future__ import annotations

import numpy as np

from edgemeta.compress.pruning import PRUNABLE, copy_model
from edgemeta.train.backend import keras


def cluster(model: keras.Model, clusters: int, preserve_sparsity: bool = False) -> keras.Model:
    """Wraps `model`'s conv and dense layers with `cluster_weights`: each kernel keeps at most `clusters`
    unique values (plus exact zeros, with `preserve_sparsity`, for a pruned model). `model` itself is
    left untouched; `strip_clustering` afterwards."""
    import tensorflow_model_optimization as tfmot

    api = tfmot.clustering.keras

    def wrap(layer):
        if not isinstance(layer, PRUNABLE):
            return layer
        return api.cluster_weights(layer, number_of_clusters=clusters, preserve_sparsity=preserve_sparsity,
                                   cluster_centroids_init=api.CentroidInitialization.KMEANS_PLUS_PLUS)

    return keras.models.clone_model(copy_model(model), clone_function=wrap)


def strip_clustering(model: keras.Model) -> keras.Model:
    """The plain Keras model, each kernel holding only its cluster centroids."""
    import tensorflow_model_optimization as tfmot

    return tfmot.clustering.keras.strip_clustering(model)


def unique_weights_per_kernel(model: keras.Model) -> dict[str, int]:
    """Number of distinct non-zero values in each conv/dense kernel, by layer name."""
    return {layer.name: int(len(np.unique(layer.kernel.numpy()[layer.kernel.numpy() != 0])))
            for layer in model.layers if isinstance(layer, PRUNABLE)}

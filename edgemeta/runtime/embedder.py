"""Runs a bundle's TFLite model on raw images: preprocessing, (de)quantization, batching."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from edgemeta.bundle import Manifest, read_bundle
from edgemeta.runtime.interpreter import make_interpreter


class Embedder:
    """Maps images to embeddings with a bundle's model, applying the manifest's preprocessing.

    Example:
        >>> embedder = Embedder.from_bundle("bundle/")  # doctest: +SKIP
        >>> embedder.embed(np.zeros((105, 105), np.uint8)).shape  # doctest: +SKIP
        (1, 64)
    """

    max_batch = 64  # bounds the interpreter's tensor memory on small boards

    def __init__(self, model_path: str | os.PathLike, manifest: Manifest, num_threads: int | None = None) -> None:
        self.manifest = manifest
        self.preprocessing = manifest.preprocessing
        self._interpreter = make_interpreter(str(model_path), num_threads)
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]
        self._batch = None

    @classmethod
    def from_bundle(cls, path: str | os.PathLike, num_threads: int | None = None) -> "Embedder":
        model_path, manifest = read_bundle(path)
        return cls(model_path, manifest, num_threads)

    @property
    def embedding_size(self) -> int:
        return self.manifest.embedding_size

    def embed(self, images: Any) -> np.ndarray:
        """Raw images (see `Preprocessing.__call__` for the accepted forms) -> float32 `(n, D)`."""
        return self.embed_preprocessed(self.preprocessing(images))

    def embed_preprocessed(self, x: np.ndarray) -> np.ndarray:
        """Already-preprocessed float32 `(n, H, W, C)` in [0, 1] -> float32 `(n, D)`."""
        expected = self.preprocessing.input_shape
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"Expected preprocessed images of shape (n, *{expected}). Received: {x.shape}")
        return np.concatenate([self._invoke(x[i : i + self.max_batch]) for i in range(0, len(x), self.max_batch)])

    def _invoke(self, x: np.ndarray) -> np.ndarray:
        interp, inp, out = self._interpreter, self._input, self._output
        if self._batch != len(x):
            interp.resize_tensor_input(inp["index"], [len(x), *x.shape[1:]])
            interp.allocate_tensors()
            self._batch = len(x)
        if inp["dtype"] == np.int8:
            scale, zero_point = inp["quantization"]
            x = np.clip(np.round(x / scale + zero_point), -128, 127).astype(np.int8)
        interp.set_tensor(inp["index"], x.astype(inp["dtype"], copy=False))
        interp.invoke()
        y = interp.get_tensor(out["index"])
        if out["dtype"] == np.int8:
            scale, zero_point = out["quantization"]
            y = (y.astype(np.float32) - zero_point) * scale
        return y.astype(np.float32).reshape(len(x), -1)

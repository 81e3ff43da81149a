"""Runs a bundle's TFLite model on raw images: verified loading, preprocessing, (de)quantization, batching."""

from __future__ import annotations

import math
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from edgemeta.format.bundle import MODEL_FILE, Manifest, read_manifest
from edgemeta.format.checksum import sha256_hex
from edgemeta.format.images import max_pixels_for
from edgemeta.format.patches import PatchBuffer
from edgemeta.runtime.interpreter import make_interpreter
from edgemeta.runtime.verify import ModelInfo, verify_model


class Embedder:
    """Maps images to embeddings with a bundle's model, applying the manifest's preprocessing.

    The model's bytes are read once, checked against the manifest's sha256, verified (see
    `edgemeta.runtime.verify`) and handed to the interpreter as those same bytes, so a file replaced
    between the check and the load cannot slip in. Calls from several threads are serialised: the
    interpreter itself is not thread-safe.

    Example:
        >>> embedder = Embedder.from_bundle("bundle/")  # doctest: +SKIP
        >>> embedder.embed(np.zeros((105, 105), np.uint8)).shape  # doctest: +SKIP
        (1, 64)
    """

    max_batch = 64  # bounds the interpreter's tensor memory on small boards

    def __init__(self, model: str | os.PathLike | bytes, manifest: Manifest, num_threads: int | None = None,
                 *, delegate: str | None = None, verify: bool = True) -> None:
        """`model` is a model file's path or its bytes. With `verify`, the bytes are checked against
        `manifest` and probed before this process's interpreter sees them (raises
        `ModelVerificationError`); the manifest's sha256 is checked by `from_bundle`."""
        if isinstance(model, (bytes, bytearray, memoryview)):
            model_bytes = bytes(model)
        elif isinstance(model, (str, os.PathLike)):
            model_bytes = Path(model).read_bytes()
        else:
            raise TypeError(f"model must be a model file's path or its bytes. Received: {type(model).__name__}")
        self.manifest = manifest
        self.preprocessing = manifest.preprocessing
        # Pixels per image, checked before a file is decoded (edgemeta.format.images); settable.
        self.max_pixels = max_pixels_for(manifest)
        self.model_size = len(model_bytes)  # bytes of the model file (the memory plan counts it twice)
        # With a delegate (e.g. an Edge TPU custom op) the CPU probe may not resolve every op; only a
        # crash or a hang of the probe then refuses the model.
        self.model_info: ModelInfo | None = (
            verify_model(model_bytes, manifest, strict_probe=delegate is None) if verify else None
        )
        self._interpreter = _build_interpreter(model_bytes, num_threads, delegate)
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]
        # A model with a fixed batch (e.g. compiled for the Edge TPU) is fed exactly that many images per run.
        signature = self._input.get("shape_signature", self._input["shape"])
        self._static_batch = int(self._input["shape"][0]) if len(signature) and signature[0] != -1 else None
        self._batch = None
        self._lock = threading.Lock()
        # Looked up once, not per call: the per-image cost of a small int8 model is a few ufunc calls.
        self._input_shape = tuple(self.preprocessing.input_shape)
        self._in_index, self._out_index = self._input["index"], self._output["index"]
        self._in_dtype = np.dtype(self._input["dtype"])
        self._in_quant = tuple(self._input["quantization"]) if self._in_dtype == np.int8 else None
        # int8 output -> float32 through a table of its 256 values, each `(float32(q) - zero_point) * scale`:
        # one lookup instead of two passes of ufuncs, the same bits.
        self._out_table = _dequantize_table(*self._output["quantization"]) if self._output["dtype"] == np.int8 else None
        self._scratch: tuple[np.ndarray, np.ndarray] | None = None  # float32 and int8 input of the batch size
        self._patches: PatchBuffer | None = None  # the model's input when it takes patches (manifest.input_patches)

    @classmethod
    def from_bundle(cls, path: str | os.PathLike, num_threads: int | None = None, delegate: str | None = None,
                    verify: bool = True) -> Embedder:
        """Loads a bundle directory. The hash check always runs; `verify=False` skips only the model
        checks of `edgemeta.runtime.verify` (for a bundle already verified, e.g. in a benchmark loop)."""
        directory = Path(path)
        manifest = read_manifest(directory)
        name, expected = MODEL_FILE, manifest.model_sha256
        compiled = manifest.provenance.get("edgetpu") or {}
        if delegate == "edgetpu" and compiled.get("file") and (directory / compiled["file"]).is_file():
            from edgemeta.runtime.interpreter import delegate_available

            # The compiled model's Edge TPU op runs only with the delegate; without it the plain model
            # runs on the CPU (make_interpreter then warns that the delegate is missing).
            if delegate_available("edgetpu"):
                name, expected = compiled["file"], compiled["sha256"]
        model_bytes = (directory / name).read_bytes()  # the only read: these bytes are checked and loaded
        actual = sha256_hex(model_bytes)
        if actual != expected:
            raise ValueError(
                f"{directory / name} does not match its manifest (corrupt or replaced copy?). "
                f"Received sha256 {actual}; manifest says {expected}."
            )
        return cls(model_bytes, manifest, num_threads, delegate=delegate, verify=verify)

    @property
    def embedding_size(self) -> int:
        return self.manifest.embedding_size

    def activation_bytes(self, batch: int) -> int:
        """The activation tensors' bytes at `batch` images per call, as the memory plan computes them
        (`edgemeta.runtime.memory.tensor_arena_bytes`) for an interpreter whose tensors are allocated."""
        from edgemeta.runtime.memory import tensor_arena_bytes

        with self._lock:
            if self._batch is None:  # never run: allocated as the planner allocates its own interpreter
                self._interpreter.allocate_tensors()
            return tensor_arena_bytes(self._interpreter, batch)

    def embed(self, images: Any) -> np.ndarray:
        """Raw images (see `Preprocessing.__call__` for the accepted forms) -> float32 `(n, D)`.

        Preprocessed `max_batch` images at a time, so a call's float copies of its images are bounded
        by the batch the memory plan counts (`working_set_bytes`), not by how many images it is given."""
        # Preprocessing checked the images and returns finite float32 of the input shape: no second check.
        step = self._static_batch or self.max_batch
        chunks = [self._embed(x) for x in self.preprocessing.batches(images, step, max_pixels=self.max_pixels)]
        return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)

    def embed_preprocessed(self, x: np.ndarray) -> np.ndarray:
        """Already-preprocessed float32 `(n, H, W, C)` in [0, 1] -> float32 `(n, D)`."""
        expected = self._input_shape
        if not isinstance(x, np.ndarray):
            raise TypeError(f"Expected a numpy array of shape (n, *{expected}). Received: {type(x).__name__}")
        if x.ndim != 4 or x.shape[1:] != expected:
            raise ValueError(f"Expected preprocessed images of shape (n, *{expected}). Received: {x.shape}")
        if len(x) == 0:
            raise ValueError(f"Expected at least one preprocessed image. Received: shape {x.shape}")
        kind = x.dtype.kind
        if kind not in "fiub":
            raise TypeError(f"Expected float32 pixels in [0, 1]. Received: dtype {x.dtype}")
        # A sum is finite when every value is (NaN and Inf propagate). It is taken in the input's own
        # dtype (no float64 copy: a third of a small model's per-call overhead); a sum of finite values
        # that overflows only sends the check on to the exact count.
        if kind == "f" and not math.isfinite(x.sum()):
            bad = int(x.size - np.count_nonzero(np.isfinite(x)))
            if bad:
                raise ValueError(f"images contain NaN or Inf (pixels must be finite, in [0, 1]). "
                                 f"Received: {bad} non-finite values")
        return self._embed(x)

    def _embed(self, x: np.ndarray) -> np.ndarray:
        """Checked input -> embeddings, in chunks of `max_batch` images (or of the model's static batch)."""
        step = self._static_batch or self.max_batch
        if len(x) <= step:
            y = self._invoke(x)
        else:
            y = np.concatenate([self._invoke(x[i : i + step]) for i in range(0, len(x), step)])
        if y.shape[1] != self.embedding_size:  # a model loaded with verify=False can still disagree
            raise RuntimeError(f"model.tflite computes {y.shape[1]} values per image, not the manifest's "
                               f"embedding_size={self.embedding_size}. Received: output shape {y.shape}")
        return y

    def _invoke(self, x: np.ndarray) -> np.ndarray:
        n = len(x)
        if self._static_batch and n < self._static_batch:  # pad the last chunk; its extra rows are dropped
            x = np.concatenate([x, np.zeros((self._static_batch - n, *x.shape[1:]), x.dtype)])
        batch = len(x)
        # One interpreter, one set of tensors: resize, set, invoke and read must not interleave.
        with self._lock:
            interp = self._interpreter
            if self._batch != batch:
                if not self._static_batch:
                    interp.resize_tensor_input(self._in_index, [batch, *self.manifest.model_input_shape])
                interp.allocate_tensors()
                self._batch, self._scratch, self._patches = batch, None, None
            interp.set_tensor(self._in_index, self._model_input(x))
            interp.invoke()
            y = interp.get_tensor(self._out_index)  # a copy: the next invoke cannot change it
        if self._out_table is not None:
            y = self._out_table.take(y.view(np.uint8))
        elif y.dtype != np.float32:
            y = y.astype(np.float32)
        return y.reshape(batch, -1)[:n]

    def _model_input(self, x: np.ndarray) -> np.ndarray:
        """Preprocessed images -> the model's input tensor: quantized for an int8 model, and as k x k
        patches (kept buffers; the border is the model's 0.0) for a model that takes them."""
        k = self.manifest.input_patches
        if k == 1:
            return self._quantize(x) if self._in_quant is not None else x.astype(self._in_dtype, copy=False)
        if self._patches is None or self._patches.shape != x.shape:
            zero = self._in_quant[1] if self._in_quant is not None else 0  # 0.0 quantized is the zero point
            self._patches = PatchBuffer(x.shape, k, self._in_dtype, zero)
        if self._in_quant is not None:
            self._quantize(x, out=self._patches.interior)
        else:
            np.copyto(self._patches.interior, x, casting="unsafe")
        return self._patches.fill()

    def _quantize(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """`clip(round(x / scale + zero_point), -128, 127)` as int8 (the input tensor's quantization),
        into `out` if given. float32 input (what preprocessing gives) goes through buffers kept for the
        batch size; other dtypes take the plain expression, whose intermediate dtypes differ."""
        scale, zero_point = self._in_quant
        if x.dtype != np.float32:
            plain = np.clip(np.round(x / scale + zero_point), -128, 127).astype(np.int8)
            if out is None:
                return plain
            out[...] = plain
            return out
        if self._scratch is None or self._scratch[0].shape != x.shape:
            self._scratch = (np.empty(x.shape, np.float32), np.empty(x.shape, np.int8))
        buffer, scratch_out = self._scratch
        out = scratch_out if out is None else out
        np.divide(x, scale, out=buffer)
        np.add(buffer, zero_point, out=buffer)
        np.rint(buffer, out=buffer)  # np.round to 0 decimals is rint: halves to even
        _clip_to(buffer, out)
        return out


def _dequantize_table(scale: float, zero_point: int) -> np.ndarray:
    """float32 value of every int8 code, indexed by the code's bits read as uint8."""
    codes = np.arange(256, dtype=np.uint8).view(np.int8)
    values = np.subtract(codes, zero_point, dtype=np.float32)
    values *= scale
    return values


# np.clip without its Python wrapper: numpy's clip ufunc in one pass, writing the int8 values (numpy >= 1.17
# has it; `_core` in numpy 2, `core` before). Else its two ufuncs, the same values.
_CLIP = getattr(getattr(np, "_core", None) or getattr(np, "core", None), "umath", None)
_CLIP = getattr(_CLIP, "clip", None)


def _clip_to(buffer: np.ndarray, out: np.ndarray) -> None:
    if _CLIP is not None:
        _CLIP(buffer, -128.0, 127.0, out=out, casting="unsafe")
    else:
        np.maximum(buffer, -128, out=buffer)
        np.minimum(buffer, 127, out=out, casting="unsafe")


def _build_interpreter(model_bytes: bytes, num_threads: int | None, delegate: str | None) -> Any:
    """An interpreter built from the verified bytes themselves (`model_content=`), never from the path."""
    return make_interpreter(None, num_threads, model_content=model_bytes, delegate=delegate)

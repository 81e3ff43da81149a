"""Checks a TFLite model's bytes before this process's interpreter parses them: structure, manifest fit, crash probe.

Three layers, cheapest first, each raising `ModelVerificationError` (a `ValueError`) with what was wrong;
`verify_model` runs them in order:

1. Structure (`structure.read_model`, through the bounds-checked reader of `flatbuffer`), in pure
   Python: the flatbuffer fields the interpreter will follow (file identifier, root/vtable/table/
   vector/string offsets, schema version, subgraphs, tensors, operators, buffers, indices between
   them, shapes, buffer sizes) all lie inside the file and agree with each other.
2. Semantics (`structure.check_against_manifest`), against the bundle's manifest: one float32/int8
   input of the manifest's image shape and one output of `embedding_size` values.
3. A crash probe (`probe.probe_model`): the model is built, allocated and run on zeros in a forked
   child with a timeout (with a manifest, the output it computes must be (n, embedding_size) for n
   images), because the TFLite C++ runtime can still crash the whole process on a structurally valid
   but inconsistent model. Measured with ai-edge-litert 2.3.0 (see benchmarks/fuzz_models.py): its own
   flatbuffer verifier rejects every truncation and header corruption, and 4,200 random bit-flip
   variants never crashed it; but a CONV_2D filter input set to -1, an operator code swapped to
   SPLIT/SLICE/FAKE_QUANT or a tensor typed RESOURCE each kill the process with SIGSEGV in
   allocate_tensors/invoke, and an absurd activation shape makes allocation hang. Passing hashes are
   cached, so each model is probed once per process. Without `os.fork` (Windows) the probe is skipped
   and `ModelInfo.probe` says so.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING

from edgemeta.runtime.verify.flatbuffer import FILE_IDENTIFIER, ModelVerificationError
from edgemeta.runtime.verify.probe import PROBE_TIMEOUT, probe_model
from edgemeta.runtime.verify.structure import (
    MAX_ACTIVATION_BYTES,
    MAX_RANK,
    SCHEMA_VERSION,
    TENSOR_TYPES,
    ModelInfo,
    TensorInfo,
    check_against_manifest,
    read_model,
)

if TYPE_CHECKING:
    from edgemeta.format.bundle import Manifest

__all__ = ["FILE_IDENTIFIER", "MAX_ACTIVATION_BYTES", "MAX_RANK", "PROBE_TIMEOUT", "SCHEMA_VERSION", "TENSOR_TYPES",
           "ModelInfo", "ModelVerificationError", "TensorInfo", "check_against_manifest", "probe_model", "read_model",
           "verify_model"]


def verify_model(model_bytes: bytes, manifest: Manifest | None = None, *, probe: bool = True,
                 strict_probe: bool = True, sha256: str | None = None,
                 timeout: float = PROBE_TIMEOUT) -> ModelInfo:
    """Checks `model_bytes` (structure, then against `manifest` if given, then the crash probe).

    Returns what was read; raises `ModelVerificationError` naming the first problem found. With
    `strict_probe=False` (a delegate will run the model, e.g. an Edge TPU custom op the CPU cannot
    resolve) only a crash or a hang fails the probe; a Python-level error from the CPU build does not.
    `sha256` lets a caller that already hashed the bytes skip hashing them again.
    """
    if not isinstance(model_bytes, (bytes, bytearray, memoryview)):
        raise TypeError(f"model_bytes must be bytes. Received: {type(model_bytes).__name__}")
    model_bytes = bytes(model_bytes)
    info = read_model(model_bytes, sha256=sha256)
    if manifest is not None:
        check_against_manifest(info, manifest)
    if probe:
        status, runs = probe_model(model_bytes, sha256=info.sha256, strict=strict_probe, timeout=timeout)
        info = replace(info, probe=status, runs=runs)
        if manifest is not None:
            # The declared output shape can disagree with what the graph computes (a corrupt reshape
            # or batch dimension, say): what counts is what the interpreter returns for n images.
            for batch, shape in runs:
                if len(shape) < 2 or shape[0] != batch or math.prod(shape[1:]) != manifest.embedding_size:
                    raise ModelVerificationError(
                        f"model.tflite computes the wrong output: for {batch} image(s) the runtime needs "
                        f"shape [{batch}, {manifest.embedding_size}] (embedding_size={manifest.embedding_size}); "
                        f"the file declares {list(info.outputs[0].shape)}. Received: output shape {list(shape)} "
                        "when run",
                        stage="probe")
    return info

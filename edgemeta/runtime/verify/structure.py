"""Layers 1 and 2 of model verification: the model's structure, read without any interpreter, and its
fit to the bundle's manifest.

`read_model` follows every flatbuffer field the interpreter will follow (root, vtable, table, vector
and string offsets, schema version, subgraphs, tensors, operators, buffers, the indices between them,
shapes, buffer sizes), checks they lie inside the file and agree with each other, and returns what it
read as a `ModelInfo`. `check_against_manifest` then asks for one float32/int8 input of the manifest's
image shape and one output of `embedding_size` values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edgemeta.format.checksum import sha256_hex
from edgemeta.runtime.verify.flatbuffer import (
    FILE_IDENTIFIER,
    MODEL_SUBGRAPHS,
    SUBGRAPH_TENSORS,
    TENSOR_SHAPE_SIGNATURE,
    Buffer,
    ModelVerificationError,
    Table,
)

if TYPE_CHECKING:
    from edgemeta.format.bundle import Manifest

SCHEMA_VERSION = 3
MAX_RANK = 16
# A tensor the interpreter allocates (no constant data) above this is a corrupt shape, not an edge model.
MAX_ACTIVATION_BYTES = 256 << 20

# TensorType enum -> (name, bytes per element); 0 marks types whose size is not fixed per element.
# From the TFLite schema (tensorflow/compiler/mlir/lite/schema/schema.fbs, `enum TensorType`).
TENSOR_TYPES: dict[int, tuple[str, float]] = {
    0: ("float32", 4), 1: ("float16", 2), 2: ("int32", 4), 3: ("uint8", 1), 4: ("int64", 8),
    5: ("string", 0), 6: ("bool", 1), 7: ("int16", 2), 8: ("complex64", 8), 9: ("int8", 1),
    10: ("float64", 8), 11: ("complex128", 16), 12: ("uint64", 8), 13: ("resource", 0),
    14: ("variant", 0), 15: ("uint32", 4), 16: ("uint16", 2), 17: ("int4", 0.5), 18: ("bfloat16", 2),
    19: ("int2", 0.25), 20: ("uint4", 0.5), 21: ("float8_e4m3fn", 1), 22: ("float8_e5m2", 1),
}


@dataclass(frozen=True)
class TensorInfo:
    """One subgraph input or output as the file declares it."""

    index: int
    name: str
    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class ModelInfo:
    """What verification read from a model, and how the crash probe went."""

    sha256: str
    size: int
    version: int
    subgraphs: int
    tensors: int
    operators: int
    buffers: int
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    probe: str = "not run"  # "passed", "passed (cached)", "skipped: ...", "inconclusive: ..."
    # (batch, shape of outputs[0]) for each run of the probe: what the graph computes, not what it declares.
    runs: tuple[tuple[int, tuple[int, ...]], ...] = ()


def _error(message: str) -> ModelVerificationError:
    return ModelVerificationError(f"model.tflite is invalid: {message}")


def read_model(model_bytes: bytes, *, sha256: str | None = None) -> ModelInfo:
    """Layer 1: parses and cross-checks the model's flatbuffer without any interpreter."""
    buf = Buffer(bytes(model_bytes))
    if not buf.has_identifier():
        raise ModelVerificationError(
            f"model.tflite is not a TFLite model: expected the file identifier {FILE_IDENTIFIER!r} at "
            f"bytes 4..8. Received: {buf.data[4:8]!r} in a {buf.size}-byte file")
    model = buf.root()
    version = model.scalar(0, "<I")
    if version != SCHEMA_VERSION:
        raise _error(f"TFLite schema version must be {SCHEMA_VERSION}. Received: {version}")

    buffers = model.tables(4, "buffers")
    buffer_sizes = [_buffer_size(b, buf) for b in buffers]
    operator_codes = model.tables(1, "operator_codes")
    for code in operator_codes:
        code.string(1, f"{code.what}.custom_code")
    model.string(3, "the model description")
    model.ints(5, "i", "metadata_buffer")
    for entry in model.tables(6, "metadata"):
        entry.string(0, f"{entry.what}.name")
        _check_index(entry.scalar(1, "<I"), len(buffers), f"{entry.what}.buffer", "buffers")

    subgraphs = model.tables(MODEL_SUBGRAPHS, "subgraphs")
    if not subgraphs:
        raise _error("it has no subgraph. Received: 0 subgraphs")
    tensor_counts = []
    for subgraph in subgraphs:
        tensor_counts.append(_check_subgraph(subgraph, buffer_sizes, len(operator_codes)))
    for signature in model.tables(7, "signature_defs"):
        signature.string(2, f"{signature.what}.signature_key")
        index = signature.scalar(4, "<I")
        _check_index(index, len(subgraphs), f"{signature.what}.subgraph_index", "subgraphs")
        for field_id, name in ((0, "inputs"), (1, "outputs")):
            for tensor_map in signature.tables(field_id, f"{signature.what}.{name}"):
                tensor_map.string(0, f"{tensor_map.what}.name")
                _check_index(tensor_map.scalar(1, "<I"), tensor_counts[index], f"{tensor_map.what}.tensor_index",
                             "tensors")

    main = subgraphs[0]
    tensors = main.tables(SUBGRAPH_TENSORS, "subgraphs[0].tensors")
    return ModelInfo(
        sha256=sha256 or sha256_hex(buf.data),
        size=buf.size,
        version=version,
        subgraphs=len(subgraphs),
        tensors=len(tensors),
        operators=len(main.tables(3, "subgraphs[0].operators")),
        buffers=len(buffers),
        inputs=tuple(_tensor_info(tensors, i) for i in main.ints(1, "i", "subgraphs[0].inputs")),
        outputs=tuple(_tensor_info(tensors, i) for i in main.ints(2, "i", "subgraphs[0].outputs")),
    )


def _buffer_size(buffer: Table, buf: Buffer) -> int:
    """Bytes of constant data a buffer holds: inline `data`, or `offset`/`size` into the file (models > 2 GB)."""
    data = buffer.vector(0, 1, f"{buffer.what}.data")
    offset, size = buffer.scalar(1, "<Q"), buffer.scalar(2, "<Q")
    if offset > 1:  # schema.fbs: offset is "relative to the beginning of the file and is only valid if > 1"
        buf.need(offset, size, f"{buffer.what}'s external data")
        return size
    return 0 if data is None else data[1]


def _check_index(index: int, count: int, what: str, of: str, optional: bool = False) -> None:
    if not (0 <= index < count or (optional and index == -1)):
        allowed = f"-1 (optional) or 0..{count - 1}" if optional else f"0..{count - 1}"
        raise _error(f"{what} must be in {allowed} ({count} {of}). Received: {index}")


def _check_subgraph(subgraph: Table, buffer_sizes: list[int], num_codes: int) -> int:
    name = subgraph.what
    tensors = subgraph.tables(SUBGRAPH_TENSORS, f"{name}.tensors")
    for tensor in tensors:
        _check_tensor(tensor, buffer_sizes)
    n = len(tensors)
    for field_id, what in ((1, "inputs"), (2, "outputs")):
        for index in subgraph.ints(field_id, "i", f"{name}.{what}"):
            _check_index(index, n, f"an index in {name}.{what}", "tensors", optional=True)
    for operator in subgraph.tables(3, f"{name}.operators"):
        _check_index(operator.scalar(0, "<I"), num_codes, f"{operator.what}.opcode_index", "operator codes")
        for field_id, what in ((1, "inputs"), (2, "outputs"), (7, "mutating_variable_inputs"), (8, "intermediates")):
            element = "?" if field_id == 7 else "i"  # mutating_variable_inputs is [bool]
            for index in operator.ints(field_id, element, f"{operator.what}.{what}"):
                if element == "i":
                    _check_index(index, n, f"an index in {operator.what}.{what}", "tensors", optional=True)
        operator.table(4, f"{operator.what}.builtin_options")
        operator.vector(5, 1, f"{operator.what}.custom_options")
        operator.table(12, f"{operator.what}.builtin_options_2")
    subgraph.string(4, f"{name}.name")
    return n


def _check_tensor(tensor: Table, buffer_sizes: list[int]) -> None:
    what = tensor.what
    shape = tensor.ints(0, "i", f"{what}.shape")
    if len(shape) > MAX_RANK:
        raise _error(f"{what} has rank {len(shape)}, more than {MAX_RANK}. Received: shape {list(shape)}")
    if any(d < 0 for d in shape):
        raise _error(f"{what} has a negative dimension. Received: shape {list(shape)}")
    signature = tensor.ints(TENSOR_SHAPE_SIGNATURE, "i", f"{what}.shape_signature")
    if len(signature) > MAX_RANK or any(d < -1 for d in signature):
        raise _error(f"{what}.shape_signature must hold dimensions >= -1. Received: {list(signature)}")
    type_id = tensor.scalar(1, "<b")
    if type_id not in TENSOR_TYPES:
        raise _error(f"{what} has an unknown element type. Received: type {type_id}")
    dtype, itemsize = TENSOR_TYPES[type_id]
    buffer = tensor.scalar(2, "<I")
    _check_index(buffer, len(buffer_sizes), f"{what}.buffer", "buffers")
    tensor.string(3, f"{what}.name")
    quantization = tensor.table(4, f"{what}.quantization")
    if quantization is not None:
        for field_id, element, field in ((0, "f", "min"), (1, "f", "max"), (2, "f", "scale"), (3, "q", "zero_point")):
            quantization.ints(field_id, element, f"{what}.quantization.{field}")
        quantization.table(5, f"{what}.quantization.details")
    sparse = tensor.table(6, f"{what}.sparsity") is not None
    elements = math.prod(shape)
    needed = math.ceil(elements * itemsize)
    data = buffer_sizes[buffer]
    if data and itemsize and not sparse and data < needed:
        raise _error(f"{what} ({dtype}, shape {list(shape)}) needs {needed} bytes of data. "
                     f"Received: buffer {buffer} with {data} bytes")
    if not data and needed > MAX_ACTIVATION_BYTES:
        raise _error(f"{what} ({dtype}, shape {list(shape)}) would need {needed} bytes, more than the "
                     f"{MAX_ACTIVATION_BYTES >> 20} MiB any tensor of an edge model needs. Received: shape {list(shape)}")


def _tensor_info(tensors: list[Table], index: int) -> TensorInfo:
    if index == -1:
        return TensorInfo(-1, "", (), "none")
    tensor = tensors[index]
    return TensorInfo(index, tensor.string(3, ""), tuple(tensor.ints(0, "i", "")),
                      TENSOR_TYPES[tensor.scalar(1, "<b")][0])


# ---------------------------------------------------------------------------------------------
# Layer 2: semantics, against the bundle's manifest.
# ---------------------------------------------------------------------------------------------


def check_against_manifest(info: ModelInfo, manifest: Manifest) -> None:
    """Layer 2: one input and one output, of the shapes and input dtype the manifest promises."""
    def fail(message: str) -> ModelVerificationError:
        return ModelVerificationError(f"model.tflite does not match its manifest: {message}", stage="manifest")

    if len(info.inputs) != 1 or len(info.outputs) != 1:
        raise fail(f"an embedder has exactly one input and one output. "
                   f"Received: {len(info.inputs)} inputs, {len(info.outputs)} outputs")
    inp, out = info.inputs[0], info.outputs[0]
    expected = tuple(manifest.model_input_shape)
    if inp.index < 0 or len(inp.shape) != len(expected) + 1 or inp.shape[1:] != expected:
        made_by = ("the preprocessing produces" if manifest.input_patches == 1
                   else f"the {manifest.input_patches}x{manifest.input_patches} patches of the preprocessed image are")
        raise fail(f"the input must be (batch, *{expected}) as {made_by}. "
                   f"Received: input shape {list(inp.shape)}")
    dtype = manifest.quantization.get("input_dtype", "float32")
    if inp.dtype != dtype:
        raise fail(f"the manifest says input dtype {dtype}. Received: input dtype {inp.dtype}")
    out_dtype = manifest.quantization.get("output", {}).get("dtype")
    if out_dtype is not None and out.dtype != out_dtype:
        raise fail(f"the manifest says output dtype {out_dtype}. Received: output dtype {out.dtype}")
    size = math.prod(out.shape[1:]) if len(out.shape) > 1 else 0
    if out.index < 0 or size != manifest.embedding_size:
        raise fail(f"the output must hold embedding_size={manifest.embedding_size} values per image. "
                   f"Received: output shape {list(out.shape)}")

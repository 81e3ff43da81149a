"""Checks a TFLite model's bytes before this process's interpreter parses them: structure, manifest fit, crash probe.

Three layers, cheapest first, each raising `ModelVerificationError` (a `ValueError`) with what was wrong:

1. Structure, in pure Python: the flatbuffer fields the interpreter will follow (file identifier,
   root/vtable/table/vector/string offsets, schema version, subgraphs, tensors, operators, buffers,
   indices between them, shapes, buffer sizes) all lie inside the file and agree with each other.
2. Semantics, against the bundle's manifest: one float32/int8 input of the manifest's image shape and
   one output of `embedding_size` values.
3. A crash probe: the model is built, allocated and run on zeros in a forked child (with a manifest,
   the output it computes must be (n, embedding_size) for n images), because the TFLite C++ runtime
   can still crash the whole process on a structurally valid but inconsistent model. Measured with ai-edge-litert 2.3.0 (see benchmarks/fuzz_models.py): its own flatbuffer
   verifier rejects every truncation and header corruption, and 4,200 random bit-flip variants never
   crashed it; but a CONV_2D filter input set to -1, an operator code swapped to SPLIT/SLICE/FAKE_QUANT
   or a tensor typed RESOURCE each kill the process with SIGSEGV in allocate_tensors/invoke, and an
   absurd activation shape makes allocation hang. Passing hashes are cached, so each model is probed
   once per process. Without `os.fork` (Windows) the probe is skipped and `ModelInfo.probe` says so.
"""

from __future__ import annotations

import faulthandler
import math
import os
import select
import signal
import struct
import threading
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable

from edgemeta.format.atomic import anonymous_file
from edgemeta.format.checksum import sha256_hex

if TYPE_CHECKING:
    from edgemeta.format.bundle import Manifest

FILE_IDENTIFIER = b"TFL3"
SCHEMA_VERSION = 3
MAX_RANK = 16
# A tensor the interpreter allocates (no constant data) above this is a corrupt shape, not an edge model.
MAX_ACTIVATION_BYTES = 256 << 20
PROBE_TIMEOUT = 10.0  # seconds; a small model is built, allocated and run twice in ~10 ms

# TensorType enum -> (name, bytes per element); 0 marks types whose size is not fixed per element.
# From the TFLite schema (tensorflow/compiler/mlir/lite/schema/schema.fbs, `enum TensorType`).
TENSOR_TYPES: dict[int, tuple[str, float]] = {
    0: ("float32", 4), 1: ("float16", 2), 2: ("int32", 4), 3: ("uint8", 1), 4: ("int64", 8),
    5: ("string", 0), 6: ("bool", 1), 7: ("int16", 2), 8: ("complex64", 8), 9: ("int8", 1),
    10: ("float64", 8), 11: ("complex128", 16), 12: ("uint64", 8), 13: ("resource", 0),
    14: ("variant", 0), 15: ("uint32", 4), 16: ("uint16", 2), 17: ("int4", 0.5), 18: ("bfloat16", 2),
    19: ("int2", 0.25), 20: ("uint4", 0.5), 21: ("float8_e4m3fn", 1), 22: ("float8_e5m2", 1),
}


class ModelVerificationError(ValueError):
    """A model file that must not reach the interpreter; `stage` is "structure", "manifest" or "probe"."""

    def __init__(self, message: str, stage: str = "structure") -> None:
        super().__init__(message)
        self.stage = stage


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


# ---------------------------------------------------------------------------------------------
# Layer 1: structure. A minimal flatbuffer reader for the TFLite schema fields the runtime follows.
# Field ids are the declaration order in schema.fbs (`table Model`, `SubGraph`, `Tensor`, ...); the
# vtable slot of field id i is 4 + 2*i (as in the generated ai_edge_litert/schema_py_generated.py).
# ---------------------------------------------------------------------------------------------


class _Buffer:
    """Bounds-checked little-endian reads; every offset followed goes through `need`."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size = len(data)

    def need(self, pos: int, length: int, what: str) -> None:
        if pos < 0 or length < 0 or pos + length > self.size:
            raise ModelVerificationError(
                f"model.tflite is truncated or corrupt: {what} lies outside the file. "
                f"Received: bytes {pos}..{pos + length} of a {self.size}-byte file")

    def read(self, fmt: str, pos: int, what: str) -> Any:
        self.need(pos, struct.calcsize(fmt), what)
        return struct.unpack_from(fmt, self.data, pos)[0]

    def table(self, pos: int, what: str) -> _Table:
        return _Table(self, pos, what)


class _Table:
    """A flatbuffer table: a signed offset back to its vtable, which maps field ids to offsets."""

    def __init__(self, buf: _Buffer, pos: int, what: str) -> None:
        self.buf, self.pos, self.what = buf, pos, what
        self.vtable = pos - buf.read("<i", pos, f"{what} (table start)")
        self.vtable_size = buf.read("<H", self.vtable, f"{what}'s vtable")
        self.table_size = buf.read("<H", self.vtable + 2, f"{what}'s vtable")
        if self.vtable_size < 4 or self.vtable_size % 2 or self.table_size < 4:
            raise ModelVerificationError(
                f"model.tflite is corrupt: {what} has a malformed vtable. "
                f"Received: vtable size {self.vtable_size}, table size {self.table_size}")
        buf.need(self.vtable, self.vtable_size, f"{what}'s vtable")
        buf.need(pos, self.table_size, what)

    def _field(self, field_id: int, size: int) -> int | None:
        slot = 4 + 2 * field_id
        if slot + 2 > self.vtable_size:
            return None  # written by an older schema: the field has its default
        offset = self.buf.read("<H", self.vtable + slot, f"{self.what}'s vtable")
        if offset == 0:
            return None
        if offset + size > self.table_size:
            raise ModelVerificationError(
                f"model.tflite is corrupt: field {field_id} of {self.what} lies past the table's end. "
                f"Received: field at +{offset} in a {self.table_size}-byte table")
        return self.pos + offset

    def scalar(self, field_id: int, fmt: str, default: int = 0) -> int:
        pos = self._field(field_id, struct.calcsize(fmt))
        return default if pos is None else self.buf.read(fmt, pos, f"field {field_id} of {self.what}")

    def _target(self, field_id: int, what: str) -> int | None:
        pos = self._field(field_id, 4)
        if pos is None:
            return None
        return pos + self.buf.read("<I", pos, what)  # uoffset: relative to where it is stored

    def table(self, field_id: int, what: str) -> _Table | None:
        target = self._target(field_id, what)
        return None if target is None else _Table(self.buf, target, what)

    def vector(self, field_id: int, element_size: int, what: str) -> tuple[int, int] | None:
        """(start, length) of a vector field, with all `length` elements inside the file."""
        target = self._target(field_id, what)
        if target is None:
            return None
        length = self.buf.read("<I", target, f"{what} (length)")
        self.buf.need(target + 4, length * element_size, f"{what} ({length} elements)")
        return target + 4, length

    def ints(self, field_id: int, fmt: str, what: str) -> tuple[int, ...]:
        vector = self.vector(field_id, struct.calcsize(fmt), what)
        if vector is None:
            return ()
        start, length = vector
        return struct.unpack_from(f"<{length}{fmt}", self.buf.data, start)

    def tables(self, field_id: int, what: str) -> list[_Table]:
        vector = self.vector(field_id, 4, what)
        if vector is None:
            return []
        start, length = vector
        return [
            _Table(self.buf, start + 4 * i + self.buf.read("<I", start + 4 * i, f"{what}[{i}]"), f"{what}[{i}]")
            for i in range(length)
        ]

    def string(self, field_id: int, what: str) -> str:
        vector = self.vector(field_id, 1, what)
        if vector is None:
            return ""
        start, length = vector
        self.buf.need(start + length, 1, f"{what} (terminator)")  # flatbuffer strings end in a 0 byte
        return self.buf.data[start:start + length].decode("utf-8", "replace")


def _error(message: str) -> ModelVerificationError:
    return ModelVerificationError(f"model.tflite is invalid: {message}")


def read_model(model_bytes: bytes, *, sha256: str | None = None) -> ModelInfo:
    """Layer 1: parses and cross-checks the model's flatbuffer without any interpreter."""
    buf = _Buffer(bytes(model_bytes))
    if buf.size < 8 or buf.data[4:8] != FILE_IDENTIFIER:
        raise ModelVerificationError(
            f"model.tflite is not a TFLite model: expected the file identifier {FILE_IDENTIFIER!r} at "
            f"bytes 4..8. Received: {buf.data[4:8]!r} in a {buf.size}-byte file")
    model = buf.table(buf.read("<I", 0, "the root table offset"), "the model (root table)")
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

    subgraphs = model.tables(2, "subgraphs")
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
    tensors = main.tables(0, "subgraphs[0].tensors")
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


def _buffer_size(buffer: _Table, buf: _Buffer) -> int:
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


def _check_subgraph(subgraph: _Table, buffer_sizes: list[int], num_codes: int) -> int:
    name = subgraph.what
    tensors = subgraph.tables(0, f"{name}.tensors")
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


def _check_tensor(tensor: _Table, buffer_sizes: list[int]) -> None:
    what = tensor.what
    shape = tensor.ints(0, "i", f"{what}.shape")
    if len(shape) > MAX_RANK:
        raise _error(f"{what} has rank {len(shape)}, more than {MAX_RANK}. Received: shape {list(shape)}")
    if any(d < 0 for d in shape):
        raise _error(f"{what} has a negative dimension. Received: shape {list(shape)}")
    signature = tensor.ints(7, "i", f"{what}.shape_signature")
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


def _tensor_info(tensors: list[_Table], index: int) -> TensorInfo:
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
        made_by = "the preprocessing produces" if manifest.input_patches == 1 else f"the {manifest.input_patches}x{manifest.input_patches} patches of the preprocessed image are"
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


# ---------------------------------------------------------------------------------------------
# Layer 3: the crash probe.
# ---------------------------------------------------------------------------------------------

_probed: dict[str, tuple] = {}  # sha256 -> its runs (batch, output shape), of models that ran cleanly here
_probed_lock = threading.Lock()


def probe_model(model_bytes: bytes, *, sha256: str | None = None, strict: bool = True,
                timeout: float = PROBE_TIMEOUT) -> tuple[str, tuple[tuple[int, tuple[int, ...]], ...]]:
    """Layer 3: builds, allocates and runs the model (on zeros, at its own batch, then at batch 2 for a
    dynamic batch) in a forked child. Returns `(status, runs)`: runs are (batch, shape of outputs[0]);
    status "passed", "passed (cached)", "inconclusive: ..." or "skipped: ..." (no fork, no runs).

    A child killed by a signal or still running after `timeout` s raises ModelVerificationError; so
    does a Python error in the child when `strict` (otherwise the probe is "inconclusive: ...").
    """
    sha256 = sha256 or sha256_hex(model_bytes)
    with _probed_lock:
        if sha256 in _probed:
            return "passed (cached)", _probed[sha256]
    if not hasattr(os, "fork"):
        # Windows has no fork, and a spawned interpreter would cost a second per load: the model is
        # loaded in-process after layers 1-2 only. The edge targets (Linux boards) all have fork.
        return "skipped: this platform has no os.fork", ()
    from edgemeta.runtime.interpreter import interpreter_class

    interpreter = interpreter_class()[0]  # import it here, once, so the child does not have to
    status, detail, notes = _run_in_child(lambda send: _probe_run(interpreter, bytes(model_bytes), send), timeout)
    if status == "ok":
        runs = tuple(_parse_run(n) for n in notes if n.startswith("run "))
        with _probed_lock:
            _probed[sha256] = runs
        return "passed", runs
    if status == "error" and not strict:
        return f"inconclusive: {detail}", ()
    raise ModelVerificationError(detail, stage="probe")


def _probe_run(interpreter: type, model_bytes: bytes, send: Callable[[str], None]) -> None:
    import numpy as np

    def stage(name: str) -> None:
        send(f"stage {name}")

    stage("building the interpreter")
    it = interpreter(model_content=model_bytes, num_threads=1)
    stage("allocate_tensors")
    it.allocate_tensors()
    inputs = it.get_input_details()
    # The model's own batch, then (for a dynamic batch) a resize, as the Embedder does for n images.
    dynamic = all(len(s) and s[0] == -1 for s in (d.get("shape_signature", d["shape"]) for d in inputs))
    for batch in (None, 2) if dynamic else (None,):
        if batch is not None:
            stage(f"resizing to a batch of {batch}")
            for d in inputs:
                it.resize_tensor_input(d["index"], [batch, *d["shape"][1:]])
            it.allocate_tensors()
            inputs = it.get_input_details()
        stage("invoke")
        for d in inputs:
            it.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
        it.invoke()
        shapes = [it.get_tensor(d["index"]).shape for d in it.get_output_details()]
        send(f"run {inputs[0]['shape'][0] if inputs and len(inputs[0]['shape']) else 0} "
             + ",".join(map(str, shapes[0] if shapes else ())))


def _parse_run(line: str) -> tuple[int, tuple[int, ...]]:
    _, batch, *dims = line.split(" ")
    return int(batch), tuple(int(d) for d in (dims[0].split(",") if dims and dims[0] else ()))


def _run_in_child(work: Callable[[Callable[[str], None]], None], timeout: float) -> tuple[str, str, list[str]]:
    """Runs `work(send)` in a forked child. Returns `(status, message, lines)`: status "ok" (message
    ""), "error" for a Python exception, or "crash" for a signal or a hang. The child's `send(line)`
    reaches the parent as it happens: "stage NAME" lines say where the child is (so a crash can say
    in which step), the others are returned in `lines`."""
    log = anonymous_file()  # the child's stderr: the interpreter's own error lines
    read_end, write_end = os.pipe()
    try:
        pid = os.fork()
    except OSError:
        os.close(read_end), os.close(write_end), log.close()
        raise
    if pid == 0:  # child: never returns into the caller's code, never runs its atexit handlers
        try:
            os.close(read_end)
            os.dup2(log.fileno(), 2)
            faulthandler.disable()  # a crash here is the expected outcome, not a traceback for the user
            work(lambda line: os.write(write_end, (line.replace("\n", " ") + "\n").encode()))
            os._exit(0)
        except BaseException as e:  # noqa: BLE001 - every failure is reported to the parent
            try:
                os.write(write_end, f"error {type(e).__name__}: {e}".replace("\n", " ").encode()[:4000] + b"\n")
            finally:
                os._exit(1)
        finally:
            os._exit(2)
    os.close(write_end)
    try:
        output, timed_out = _read_until_eof(read_end, time.monotonic() + timeout)
        if timed_out:
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        log.seek(0)
        stderr = log.read().decode("utf-8", "replace")
    finally:
        os.close(read_end)
        log.close()
    lines = output.decode("utf-8", "replace").splitlines()
    notes = [l for l in lines if not l.startswith(("stage ", "error "))]
    return (*_verdict(lines, status, timed_out, timeout, stderr), notes)


def _verdict(lines: list[str], status: int, timed_out: bool, timeout: float, stderr: str) -> tuple[str, str]:
    """(status, message) of a finished probe child, from what it sent, how it ended and its stderr."""
    stage = next((l[6:] for l in reversed(lines) if l.startswith("stage ")), "starting")
    errors = [l[6:] for l in lines if l.startswith("error ")]
    if timed_out:
        return "crash", (f"model.tflite hangs the interpreter: no result after {timeout:g} s in {stage} "
                         "(a corrupt shape or an endless graph?). Received: a model that never finishes a run")
    if os.WIFSIGNALED(status):
        name = signal.Signals(os.WTERMSIG(status)).name
        hint = [l for l in stderr.splitlines() if l.strip() and not l.startswith("INFO:")][-1:]
        return "crash", (f"model.tflite crashes the interpreter ({name}) in {stage}: the file is corrupt or "
                         "inconsistent and was not loaded in this process."
                         + (f" Interpreter said: {hint[0][:300]}" if hint else "")
                         + " Received: a model that kills the process that runs it")
    if errors:
        return "error", (f"model.tflite fails in {stage}, so it was not loaded in this process. The interpreter "
                         f"said: {errors[-1][:600]} Received: a model the interpreter cannot run")
    code = os.WEXITSTATUS(status)
    if code != 0:
        return "crash", f"model.tflite probe exited with status {code} in {stage}. Received: a model that cannot run"
    return "ok", ""


def _read_until_eof(fd: int, deadline: float) -> tuple[bytes, bool]:
    chunks = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            return b"".join(chunks), True
        chunk = os.read(fd, 65536)
        if not chunk:  # every copy of the write end is closed: the child has exited
            return b"".join(chunks), False
        chunks.append(chunk)

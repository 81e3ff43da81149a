"""Checks a TFLite model against the Coral Edge TPU's requirements and compiles a bundle with edgetpu_compiler.

Needs no TensorFlow: the model is read with the runtime's interpreter and its bounds-checked flatbuffer
reader (`edgemeta.runtime.verify.flatbuffer`), so the check also runs on a board.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgemeta.format.bundle import MODEL_FILE, read_bundle, update_provenance, write_bundle_file
from edgemeta.runtime.interpreter import make_interpreter
from edgemeta.runtime.verify.flatbuffer import FILE_IDENTIFIER, TENSOR_SHAPE_SIGNATURE, Buffer, Table, subgraph_tensors

COMPILER = "edgetpu_compiler"
COMPILED_FILE = "model_edgetpu.tflite"
# Coral's compiler page (https://coral.ai/docs/edgetpu/compiler/): x86-64 Debian/Ubuntu only; no ARM64
# builds since compiler 2.1, so it runs on the workstation, not on the board.
COMPILER_INSTALL = (
    "Install it on an x86-64 Debian or Ubuntu workstation from Coral's apt repository "
    "(https://coral.ai/docs/edgetpu/compiler/): add the `coral-edgetpu-stable` repository, then "
    "`sudo apt-get install edgetpu-compiler`. Debian itself does not package it, and Coral builds it "
    "for x86-64 only (not for a Raspberry Pi or the Coral Dev Board)."
)

# Operations the Edge TPU compiler can map, as TFLite builtin names. From Coral's "TensorFlow models on
# the Edge TPU", section "Supported operations" (https://coral.ai/docs/edgetpu/models-intro/#supported-operations).
# Each also has limits listed there (e.g. MEAN/PAD not over the batch dimension, no fused activation on
# pooling); the compiler's log is the final word.
SUPPORTED_OPS = frozenset({
    "ADD", "AVERAGE_POOL_2D", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D", "EXPAND_DIMS",
    "FULLY_CONNECTED", "L2_NORMALIZATION", "LOGISTIC", "LSTM", "UNIDIRECTIONAL_SEQUENCE_LSTM", "MAXIMUM",
    "MAX_POOL_2D", "MEAN", "MINIMUM", "MUL", "PACK", "PAD", "PRELU", "QUANTIZE", "REDUCE_MAX", "REDUCE_MIN",
    "RELU", "RELU6", "RELU_N1_TO_1", "RESHAPE", "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "RSQRT",
    "SLICE", "SOFTMAX", "SPACE_TO_DEPTH", "SPLIT", "SQUEEZE", "STRIDED_SLICE", "SUB", "SUM",
    "SQUARED_DIFFERENCE", "TANH", "TRANSPOSE", "TRANSPOSE_CONV",
})
_QUANTIZED = (np.int8, np.uint8)
_OPERAND_TYPES = (np.int8, np.uint8, np.int32)  # int32: biases and shape/axis parameters of quantized ops


@dataclass
class EdgeTPUReport:
    """What keeps a model from running fully on the Edge TPU.

    `compatible` is True only with no problems at all. `first_cpu_op` is the first op in execution order
    that would run on the CPU (e.g. "op 3 MEAN: not supported"): the compiler maps only the ops before it.
    `dynamic_batch` is True when the only shape problem is the batch dimension, which
    `static_batch_model` (and `compile_for_edgetpu`) fix by setting it to 1.
    """

    compatible: bool
    problems: list[str]
    first_cpu_op: str | None
    ops: list[str]
    int8: bool = True
    dynamic_batch: bool = False
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        head = "Edge TPU check: compatible" if self.compatible else f"Edge TPU check: {len(self.problems)} problem(s)"
        lines = [head, f"  ops ({len(self.ops)}): {' '.join(self.ops)}"]
        lines += [f"  problem: {p}" for p in self.problems]
        lines.append(f"  first op on the CPU: {self.first_cpu_op or 'none'}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def check_edgetpu(model: bytes | str | os.PathLike) -> EdgeTPUReport:
    """Checks TFLite bytes, a `.tflite` path, or a bundle directory for the Edge TPU: full int8 (int8/uint8
    input, output and op tensors), static shapes, one subgraph, and ops on Coral's supported list."""
    model_bytes = _model_bytes(model)
    subgraphs = len(_subgraph_tensors(model_bytes))  # also refuses bytes that are not a TFLite model
    interpreter = make_interpreter(model_content=model_bytes)
    problems, notes = [], []

    if subgraphs != 1:
        problems.append(f"the model has {subgraphs} subgraphs; the Edge TPU compiler supports one")

    io = [("input", d) for d in interpreter.get_input_details()] + [("output", d) for d in interpreter.get_output_details()]
    int8 = True
    for kind, d in io:
        if np.dtype(d["dtype"]) not in [np.dtype(t) for t in _QUANTIZED]:
            int8 = False
            problems.append(f"{kind} {d['name']!r} is {np.dtype(d['dtype']).name}; the Edge TPU needs int8 or uint8 "
                            "input and output (export the bundle with --quantization int8)")

    dynamic_batch, other_dynamic = False, []
    for kind, d in io:
        signature = [int(v) for v in d.get("shape_signature", d["shape"])]
        if signature and signature[0] == -1:
            dynamic_batch = True
        if any(v == -1 for v in signature[1:]):
            other_dynamic.append(f"{kind} {d['name']!r} {signature}")
    if dynamic_batch:
        problems.append(
            "the input has a dynamic batch dimension (shape_signature starts with -1); the Edge TPU needs static "
            "shapes with batch 1. compile_for_edgetpu compiles a batch-1 copy (static_batch_model); the compiled "
            "model then takes one image per call"
        )
    if other_dynamic:
        problems.append(f"dynamic dimensions other than the batch: {', '.join(other_dynamic)}; re-export with fixed "
                        "height, width and channels")

    op_details = interpreter._get_ops_details()  # execution order of the (first) subgraph
    # Activations (model inputs and op outputs), not weights: a conv filter is 4-D by design.
    activations = {int(d["index"]) for _, d in io} | {int(i) for op in op_details for i in op["outputs"]}
    for t in interpreter.get_tensor_details():
        shape = [int(v) for v in t["shape"]]
        if t["index"] in activations and len(shape) > 3 and any(v > 1 for v in shape[:-3]):
            problems.append(f"tensor {t['name']!r} has shape {shape}; the Edge TPU allows sizes above 1 only in the "
                            "3 innermost dimensions")
            break

    ops, first_cpu, float_ops, unsupported = [], None, 0, []
    for op in op_details:
        name = op["op_name"]
        ops.append(name)
        reason = None
        bad_types = sorted({np.dtype(t).name for t in op["operand_types"]
                            if np.dtype(t) not in [np.dtype(x) for x in _OPERAND_TYPES]}
                           | {np.dtype(t).name for t in op["result_types"]
                              if np.dtype(t) not in [np.dtype(x) for x in _QUANTIZED]})
        if name not in SUPPORTED_OPS:
            reason = "not supported by the Edge TPU"
            unsupported.append(name)
        elif bad_types:
            reason = f"{'/'.join(bad_types)} tensors (the Edge TPU computes in int8/uint8 only)"
        if bad_types:
            float_ops += 1
        if reason and first_cpu is None:
            first_cpu = f"op {op['index']} {name}: {reason}"
    if float_ops:
        int8 = False
        problems.append(f"not fully int8: {float_ops} of {len(ops)} op(s) use non-int8 tensors")
    if unsupported:
        problems.append(f"op(s) not on Coral's supported list: {sorted(set(unsupported))}")
    if first_cpu is not None:
        notes.append("the compiler maps only the ops before the first CPU op; everything from it on runs on the CPU")
    return EdgeTPUReport(compatible=not problems, problems=problems, first_cpu_op=first_cpu, ops=ops, int8=int8,
                         dynamic_batch=dynamic_batch and not other_dynamic, notes=notes)


def static_batch_model(model: bytes | str | os.PathLike) -> bytes:
    """Returns the model with every dynamic batch dimension (-1 first in a tensor's shape_signature) set to
    1, the static shape the Edge TPU compiler needs. Weights and ops are unchanged: same bytes otherwise."""
    model_bytes = _model_bytes(model)
    data = bytearray(model_bytes)
    for tensors in _subgraph_tensors(model_bytes):
        for tensor in tensors:
            signature = tensor.vector(TENSOR_SHAPE_SIGNATURE, 4, f"{tensor.what}.shape_signature")
            if signature is not None and signature[1] > 0 and struct.unpack_from("<i", data, signature[0])[0] == -1:
                struct.pack_into("<i", data, signature[0], 1)
    return bytes(data)


def compile_for_edgetpu(bundle_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                        timeout: float = 600) -> Path:
    """Compiles a bundle's int8 model with `edgetpu_compiler` and returns the path of `model_edgetpu.tflite`.

    A dynamic batch is fixed to 1 first (`static_batch_model`). Written into the bundle by default, in
    which case the manifest's `provenance["edgetpu"]` records the file, its sha256, the compiler's version
    and the check; with `out_dir` the bundle is left untouched. Raises RuntimeError when the compiler is
    not installed, ValueError when the model is not fully int8.
    """
    model_path, manifest = read_bundle(bundle_dir)
    model_bytes = model_path.read_bytes()
    report = check_edgetpu(model_bytes)
    compiler = shutil.which(COMPILER)
    if compiler is None:
        verdict = ("The compatibility check passed." if report.compatible else
                   "The compatibility check found: " + "; ".join(report.problems) + ".")
        raise RuntimeError(f"{COMPILER} was not found on PATH. {COMPILER_INSTALL} {verdict} "
                           f"Received: bundle {str(bundle_dir)!r}")
    if not report.int8:
        raise ValueError("The Edge TPU compiles only fully int8 models; re-export the bundle with --quantization int8. "
                         f"Received: {str(bundle_dir)!r} with problems: {'; '.join(report.problems)}")
    if report.dynamic_batch:
        model_bytes = static_batch_model(model_bytes)
    bundle_dir = Path(bundle_dir)
    target = Path(out_dir) if out_dir is not None else bundle_dir
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / MODEL_FILE  # the compiler names its output <stem>_edgetpu.tflite
        source.write_bytes(model_bytes)
        result = subprocess.run([compiler, "-s", "-o", tmp, str(source)], capture_output=True, text=True, timeout=timeout)
        compiled = Path(tmp) / COMPILED_FILE
        if result.returncode != 0 or not compiled.is_file():
            raise RuntimeError(f"{COMPILER} failed (exit {result.returncode}). Received output:\n"
                               f"{result.stdout[-3000:]}{result.stderr[-3000:]}")
        write_bundle_file(target / COMPILED_FILE, compiled.read_bytes())  # bundle members: atomic, readable by all
        log = Path(tmp) / "model_edgetpu.log"
        if log.is_file():
            write_bundle_file(target / "model_edgetpu.log", log.read_bytes())
    out = target / COMPILED_FILE
    if target.resolve() == bundle_dir.resolve():
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60).stdout.strip()
        provenance = dict(manifest.provenance)
        provenance["edgetpu"] = {
            "file": COMPILED_FILE,
            "sha256": hashlib.sha256(out.read_bytes()).hexdigest(),
            "compiler": version,
            "batch": 1 if report.dynamic_batch else None,
            "first_cpu_op": report.first_cpu_op,
            "log": "model_edgetpu.log",
        }
        update_provenance(bundle_dir, provenance)
    return out


def _model_bytes(model: bytes | str | os.PathLike) -> bytes:
    if isinstance(model, (bytes, bytearray, memoryview)):
        return bytes(model)
    path = Path(model)
    if path.is_dir():
        path, _ = read_bundle(path)
    if not path.is_file():
        raise FileNotFoundError(f"Expected TFLite bytes, a .tflite file or a bundle directory. Received: {str(model)!r}")
    return path.read_bytes()


def _subgraph_tensors(model_bytes: bytes) -> list[list[Table]]:
    """Every tensor table, per subgraph, read with the runtime's bounds-checked flatbuffer reader (a
    corrupt file raises `ModelVerificationError`, a ValueError)."""
    buf = Buffer(model_bytes)
    if not buf.has_identifier():
        raise ValueError(f"Not a TFLite flatbuffer (no {FILE_IDENTIFIER.decode()} identifier). "
                         f"Received: {bytes(model_bytes[:8])!r}")
    return subgraph_tensors(buf.root())

"""Memory planning: predicts the adapter process's peak resident memory for a bundle, a batch size
and a number of classes, so a board's budget is checked before deployment and enforced while enrolling.

The prediction is a sum of parts, each either measured once or computed from the model:

- `runtime`: Python, numpy, Pillow and the interpreter library, loaded and run once: measured in a
  fresh process on the machine that plans, once per machine (cached), minus the model's own parts.
- `model`: the model bytes, held once by the runtime and once more as the kernels' packed weights.
- `arena`: the interpreter's activation tensors at the batch size, from the model's op order: the
  largest set of tensors alive at once.
- `working`: the transient arrays of one call (raw and preprocessed images, the distance matrix), for
  images of the size the bundle's manifest expects (`edgemeta.runtime.budget.working_set_bytes`).
- `store`: the prototype store, per class (`PrototypeStore.bytes_per_class`), and what classify keeps
  per class between calls (a squared norm, a label slot).
- `block`: classify's float64 copy of the prototypes, kept for up to `RESIDENT_CLASSES` classes.

The costs themselves are `edgemeta.runtime.budget`'s, which the adapter's budget uses too; this module
measures (resident memory, the activation arena, the runtime's own overhead) and adds them up.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgemeta.runtime.budget import classify_buffer_bytes, raw_image_bytes, working_set_bytes
from edgemeta.runtime.index import CLASSIFY_ARRAYS, CLASSIFY_CACHE_BYTES, RESIDENT_CLASSES

MB = 1 << 20


def current_rss_bytes() -> int:
    """This process's resident memory now (Linux `VmRSS`), else its peak so far."""
    return _proc_status("VmRSS:") or peak_rss_bytes()


def peak_rss_bytes() -> int:
    """This process's peak resident memory: Linux `VmHWM`, else `ru_maxrss` (KiB on Linux, bytes on
    macOS). `ru_maxrss` survives exec, so a child started from a large process (a test runner with
    TensorFlow loaded) would report its parent's size; `VmHWM` belongs to the new program alone."""
    hwm = _proc_status("VmHWM:")
    if hwm:
        return hwm
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def _proc_status(field: str) -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def tensor_arena_bytes(interpreter, batch: int) -> int:
    """Bytes of the activation tensors alive at once, at most, when the model runs on `batch` images.

    Activations are the graph's inputs and every op's outputs; a tensor lives from the op that writes
    it to the last op that reads it (TFLite's arena planner reuses memory the same way)."""
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    ops = interpreter._get_ops_details()  # the op order the interpreter runs; public API has none
    produced = {int(t): i for i, op in enumerate(ops) for t in op["outputs"]}
    for t in interpreter.get_input_details():
        produced.setdefault(int(t["index"]), 0)
    last_use = dict(produced)
    for i, op in enumerate(ops):
        for t in op["inputs"]:
            if int(t) in produced:
                last_use[int(t)] = max(last_use[int(t)], i)
    for t in interpreter.get_output_details():
        last_use[int(t["index"])] = len(ops)

    def nbytes(index: int) -> int:
        d = details[index]
        shape = [int(s) for s in d["shape"]]
        if shape:
            shape[0] = batch  # activations carry the batch first
        return int(np.prod(shape)) * np.dtype(d["dtype"]).itemsize

    return max(sum(nbytes(t) for t in produced if produced[t] <= i <= last_use[t]) for i in range(len(ops) + 1))


@dataclass(frozen=True)
class MemoryPlan:
    """Predicted resident memory, in bytes, of an adapter for one bundle (see the module docstring)."""

    runtime: int
    model: int
    arena: int
    working: int
    per_class: int
    batch: int
    block: int
    runtime_measured_on: str

    @property
    def fixed(self) -> int:
        """Everything but the classes."""
        return self.runtime + self.model + self.arena + self.working

    @property
    def per_class_peak(self) -> int:
        """A class's bytes at the peak: its row in the store, its share of the store's spare rows (the
        arrays grow by a quarter), its column in classify's (batch, classes) float64 arrays, and what
        classify keeps of it between calls."""
        return int(self.per_class * 1.25) + 8 * CLASSIFY_ARRAYS * self.batch + CLASSIFY_CACHE_BYTES

    def predict(self, classes: int) -> int:
        """Peak resident memory with `classes` enrolled classes."""
        return self.fixed + self.block * min(classes, RESIDENT_CLASSES) + classes * self.per_class_peak

    def max_classes(self, budget_bytes: int) -> int:
        """How many classes fit in `budget_bytes` (0 when even the model does not)."""
        room = budget_bytes - self.fixed - self.block * RESIDENT_CLASSES
        return max(0, room // self.per_class_peak)

    def to_dict(self) -> dict:
        return asdict(self)


def plan_memory(bundle: str | os.PathLike, batch: int = 8, shots: int = 5, prototype_dtype: str = "float32",
                keep_support: str | None = None, runtime_bytes: int | None = None) -> MemoryPlan:
    """The `MemoryPlan` of an adapter on `bundle` that embeds up to `batch` images per call and whose
    classes have `shots` shots. `runtime_bytes` defaults to this machine's measured runtime overhead."""
    from edgemeta.format.bundle import read_bundle
    from edgemeta.runtime.interpreter import interpreter_class
    from edgemeta.runtime.store import PrototypeStore

    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive integer. Received: {batch!r}")
    model_path, manifest = read_bundle(bundle)
    model_bytes = Path(model_path).read_bytes()
    interpreter = interpreter_class()[0](model_content=model_bytes)
    interpreter.allocate_tensors()
    arena = tensor_arena_bytes(interpreter, batch)
    store = PrototypeStore(manifest.embedding_size, manifest.model_sha256, prototype_dtype, keep_support)
    measured_on = "given"
    if runtime_bytes is None:
        runtime_bytes, measured_on = runtime_overhead_bytes(bundle)
    return MemoryPlan(runtime=runtime_bytes, model=2 * len(model_bytes), arena=arena,
                      working=working_set_bytes(manifest, batch),
                      per_class=store.bytes_per_class(shots, image_bytes=raw_image_bytes(manifest)), batch=batch,
                      runtime_measured_on=measured_on,
                      # classify's buffers, spread over the RESIDENT_CLASSES classes they are kept for
                      block=classify_buffer_bytes(manifest.embedding_size, prototype_dtype) // RESIDENT_CLASSES)


_PROBE = r"""
import json, sys
from edgemeta.runtime import Embedder
from edgemeta.runtime.budget import raw_image_shape
from edgemeta.runtime.memory import peak_rss_bytes
import numpy as np
embedder = Embedder.from_bundle(sys.argv[1], num_threads=1)
h, w, c = raw_image_shape(embedder.manifest)
embedder.embed(np.zeros((1, h, w) if c == 1 else (1, h, w, c), np.uint8))
print(json.dumps({"peak": peak_rss_bytes()}))
"""


def runtime_overhead_bytes(bundle: str | os.PathLike, refresh: bool = False) -> tuple[int, str]:
    """Resident memory of the runtime itself (interpreter library included), measured once per machine
    in a fresh process that loads `bundle` and embeds one image (of `raw_image_shape`), minus that bundle's model and batch-1
    arena. Cached in `$XDG_CACHE_HOME/edgemeta/runtime-overhead.json`; returns `(bytes, machine)`."""
    from edgemeta.format.bundle import read_bundle
    from edgemeta.runtime.interpreter import interpreter_class

    machine = f"{platform.machine()} {platform.system()} Python {platform.python_version()} {interpreter_class()[1]}"
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgemeta" / "runtime-overhead.json"
    try:
        cached = json.loads(cache.read_text())
    except (OSError, ValueError):
        cached = {}
    if machine in cached and not refresh:
        return int(cached[machine]), machine
    result = subprocess.run([sys.executable, "-c", _PROBE, str(bundle)], capture_output=True, text=True, check=False,
                            timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"Measuring the runtime's memory failed: {result.stderr[-2000:]}")
    peak = json.loads(result.stdout.strip().splitlines()[-1])["peak"]
    model_path, _ = read_bundle(bundle)
    model_bytes = Path(model_path).read_bytes()
    interpreter = interpreter_class()[0](model_content=model_bytes)
    interpreter.allocate_tensors()
    overhead = peak - 2 * len(model_bytes) - tensor_arena_bytes(interpreter, 1)
    cached[machine] = int(overhead)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(cached, indent=2) + "\n")
    except OSError:  # a read-only home: measure again next time
        pass
    return int(overhead), machine

"""Memory planning: predicts the adapter process's peak resident memory for a bundle, a batch size
and a number of classes, so a board's budget is checked before deployment and enforced while enrolling.

The prediction is a sum of parts, each either measured once or computed from the model:

- `runtime`: Python, numpy, Pillow and the interpreter library, loaded and run once: measured in a
  fresh process on the machine that plans, once per machine (cached), minus the model's own parts.
  Of it, `runtime_anonymous` is the process's own anonymous memory (heap, arenas); the rest is pages
  of shared libraries, which are counted at this measured figure, never read live: how many of them
  a process has mapped grows when another process keeps the same libraries in use, so a budget that
  read them live would pass or fail by what else runs on the board.
- `model`: the model bytes, held once by the runtime and once more as the kernels' packed weights.
- `arena`: the interpreter's activation tensors at the batch size, from the model's op order: the
  largest set of tensors alive at once.
- `working`: the transient arrays of one call (raw and preprocessed images, the distance matrix), for
  images of the size the bundle's manifest expects (`edgemeta.runtime.budget.working_set_bytes`).
- `store`: the prototype store, per class (`PrototypeStore.bytes_per_class`; with `thumbnails`, each class's
  thumbnail at its largest, `THUMBNAIL_CLASS_BYTES`), what saving or loading it holds transiently
  (`persist`, and per class `budget.persist_bytes_per_class`), and what classify keeps per class between
  calls (a squared norm, a label slot).
- `block`: classify's float64 copy of the prototypes, kept for up to `resident_classes` classes.
- `request`: what one request may take beyond `working`: converting the largest image the adapter accepts
  (`pixel_bytes` per pixel of `max_pixels`) and, for the service, its body, parsed JSON and decoded
  files (`edgemeta.serve.api.body_reserve`).

`FewShotAdapter`'s budget (`edgemeta.runtime.budget.MemoryBudget`) is this same plan, made from the
loaded embedder (`plan_for`), so `edgemeta device check` and a board's adapter agree on what fits.

The costs themselves are `edgemeta.runtime.budget`'s, which the adapter's budget uses too; this module
measures (resident memory, the activation arena, the runtime's own overhead) and adds them up.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgemeta.runtime.budget import (
    classify_buffer_bytes,
    persist_bytes_per_class,
    pixel_bytes,
    raw_image_bytes,
    working_set_bytes,
)
from edgemeta.runtime.index import CLASSIFY_ARRAYS, CLASSIFY_CACHE_BYTES, resident_classes
from edgemeta.runtime.store import PERSIST_FIXED_BYTES

if TYPE_CHECKING:
    from edgemeta.format.bundle import Manifest

MB = 1 << 20


def current_rss_bytes() -> int:
    """This process's resident memory now (Linux `VmRSS`), else its peak so far."""
    return _proc_status("VmRSS:") or peak_rss_bytes()


def anonymous_rss_bytes() -> int:
    """This process's own resident anonymous memory (Linux `RssAnon`: heap, arenas, copied pages), which
    no other process changes; 0 where it cannot be read."""
    return _proc_status("RssAnon:")


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
    request: int = 0
    runtime_anonymous: int = 0
    persist: int = PERSIST_FIXED_BYTES  # saving or loading the store: its fixed part (per class: in per_class)
    resident_classes: int = 1024  # classes whose float64 prototypes classify keeps (`block` bytes each)

    @property
    def fixed(self) -> int:
        """Everything but the classes."""
        return self.runtime + self.model + self.arena + self.working + self.request

    @property
    def for_classes_at_most(self) -> int:
        """What a budget of 0 leaves for classes, to which the budget is added: minus the fixed part and
        classify's buffers (`block` for every resident class)."""
        return -self.fixed - self.block * self.resident_classes

    @property
    def per_class_peak(self) -> int:
        """A class's bytes at the peak: its row in the store, its share of the store's spare rows (the
        arrays grow by a quarter), its column in classify's (batch, classes) float64 arrays, and what
        classify keeps of it between calls."""
        return int(self.per_class * 1.25) + 8 * CLASSIFY_ARRAYS * self.batch + CLASSIFY_CACHE_BYTES

    def predict(self, classes: int) -> int:
        """Peak resident memory with `classes` enrolled classes."""
        return self.fixed + self.persist + self.block * min(classes, self.resident_classes) + classes * self.per_class_peak

    def max_classes(self, budget_bytes: int) -> int:
        """How many classes fit in `budget_bytes` (0 when even the model does not)."""
        return max(0, (budget_bytes + self.for_classes_at_most - self.persist) // self.per_class_peak)

    def to_dict(self) -> dict:
        return asdict(self)


def plan_memory(bundle: str | os.PathLike, batch: int = 8, shots: int = 5, prototype_dtype: str = "float32",
                keep_support: str | None = None, runtime_bytes: int | None = None, request_bytes: int = 0,
                max_pixels: int | None = None, thumbnails: bool = False) -> MemoryPlan:
    """The `MemoryPlan` of an adapter on `bundle` that embeds up to `batch` images per call, accepts images
    of up to `max_pixels` pixels (default: the bundle's, `edgemeta.format.images.max_pixels_for`) and
    whose classes have `shots` shots (and, with `thumbnails`, a thumbnail each: planned at its largest);
    `request_bytes` is what one request may take beyond that (the service's `body_reserve`).
    `runtime_bytes` defaults to this machine's measured overhead."""
    from edgemeta.format.bundle import read_bundle
    from edgemeta.runtime.interpreter import interpreter_class

    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive integer. Received: {batch!r}")
    model_path, manifest = read_bundle(bundle)
    model_bytes = Path(model_path).read_bytes()
    interpreter = interpreter_class()[0](model_content=model_bytes)
    interpreter.allocate_tensors()
    runtime = RuntimeOverhead(runtime_bytes, 0, "given") if runtime_bytes is not None else None
    if max_pixels is None:
        from edgemeta.format.images import max_pixels_for

        max_pixels = max_pixels_for(manifest)
    return plan_for(manifest, len(model_bytes), tensor_arena_bytes(interpreter, batch), batch, shots, prototype_dtype,
                    keep_support, runtime=runtime, request_bytes=request_bytes, max_pixels=max_pixels,
                    thumbnails=thumbnails)


def plan_for(manifest: Manifest, model_size: int, arena: int, batch: int, shots: int = 5,
             prototype_dtype: str = "float32", keep_support: str | None = None, runtime: RuntimeOverhead | None = None,
             request_bytes: int = 0, max_pixels: int = 0, thumbnails: bool = False) -> MemoryPlan:
    """The `MemoryPlan` of a model of `model_size` bytes, `arena` bytes of activations at `batch`, and
    `manifest`, for images of up to `max_pixels` pixels (and classes with thumbnails, with `thumbnails`):
    what `plan_memory` computes from a bundle and `MemoryBudget.for_adapter` from a running adapter
    (`Embedder.activation_bytes`, `Embedder.max_pixels`)."""
    from edgemeta.runtime.store import PrototypeStore

    store = PrototypeStore(manifest.embedding_size, manifest.model_sha256, prototype_dtype, keep_support)
    runtime = runtime or runtime_overhead()
    return MemoryPlan(runtime=runtime.total, model=2 * model_size, arena=arena,
                      working=working_set_bytes(manifest, batch),
                      per_class=store.bytes_per_class(shots, image_bytes=raw_image_bytes(manifest), thumbnails=thumbnails)
                      + persist_bytes_per_class(shots, keep_support is not None), batch=batch,
                      runtime_measured_on=runtime.machine,
                      # classify's buffers, spread over the classes they are kept for
                      block=classify_buffer_bytes(manifest.embedding_size, prototype_dtype)
                      // resident_classes(manifest.embedding_size),
                      resident_classes=resident_classes(manifest.embedding_size),
                      request=request_bytes + pixel_bytes(manifest.preprocessing.channels) * max_pixels,
                      runtime_anonymous=runtime.anonymous)


@dataclass(frozen=True)
class RuntimeOverhead:
    """The runtime's own resident memory on a machine (`total` bytes), and the anonymous part of it."""

    total: int
    anonymous: int
    machine: str


_PROBE = r"""
import json, sys
from edgemeta.runtime import Embedder
from edgemeta.runtime.budget import raw_image_shape
from edgemeta.runtime.memory import anonymous_rss_bytes, peak_rss_bytes
import numpy as np
embedder = Embedder.from_bundle(sys.argv[1], num_threads=1)
h, w, c = raw_image_shape(embedder.manifest)
embedder.embed(np.zeros((1, h, w) if c == 1 else (1, h, w, c), np.uint8))
print(json.dumps({"peak": peak_rss_bytes(), "anonymous": anonymous_rss_bytes()}))
"""
PROBE_RUNS = 2  # the smallest of these: another process starting beside the probe only ever adds to it
_CACHE_VERSION = "2"  # bumped when the probe changes, so a figure measured the old way is not reused


def runtime_overhead(refresh: bool = False) -> RuntimeOverhead:
    """Resident memory of the runtime itself (interpreter library included), measured once per machine.

    A fresh process loads the shipped omniglot preset and embeds one image; its peak, minus that
    model's bytes and batch-1 activations, is the overhead (the smallest of `PROBE_RUNS` runs). Cached
    in `$XDG_CACHE_HOME/edgemeta/runtime-overhead.json`, keyed by machine, Python and interpreter."""
    from edgemeta.format.bundle import read_bundle
    from edgemeta.presets import preset_path
    from edgemeta.runtime.interpreter import interpreter_class

    machine = f"{platform.machine()} {platform.system()} Python {platform.python_version()} {interpreter_class()[1]}"
    key = f"v{_CACHE_VERSION} {machine}"
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgemeta" / "runtime-overhead.json"
    try:
        cached = json.loads(cache.read_text())
    except (OSError, ValueError):
        cached = {}
    cached = cached if isinstance(cached, dict) else {}
    entry = cached.get(key)
    if not refresh and isinstance(entry, dict) and all(isinstance(entry.get(k), int) for k in ("total", "anonymous")):
        return RuntimeOverhead(entry["total"], entry["anonymous"], machine)
    import subprocess  # here, not at the top: 0.5 MB of resident memory in every budgeted board process

    bundle = preset_path("omniglot")
    runs = []
    for _ in range(PROBE_RUNS):
        result = subprocess.run([sys.executable, "-c", _PROBE, str(bundle)], capture_output=True, text=True,
                                check=False, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"Measuring the runtime's memory failed: {result.stderr[-2000:]}")
        runs.append(json.loads(result.stdout.strip().splitlines()[-1]))
    probe = min(runs, key=lambda run: run["peak"])
    model_path, _ = read_bundle(bundle)
    model_bytes = Path(model_path).read_bytes()
    interpreter = interpreter_class()[0](model_content=model_bytes)
    interpreter.allocate_tensors()
    model_parts = 2 * len(model_bytes) + tensor_arena_bytes(interpreter, 1)
    overhead = RuntimeOverhead(int(probe["peak"] - model_parts), max(0, int(probe["anonymous"] - model_parts)), machine)
    cached[key] = {"total": overhead.total, "anonymous": overhead.anonymous}
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(cached, indent=2) + "\n")
    except OSError:  # a read-only home: measure again next time
        pass
    return overhead


def runtime_overhead_bytes(bundle: str | os.PathLike | None = None, refresh: bool = False) -> tuple[int, str]:
    """`(runtime_overhead().total, machine)`; `bundle` is ignored (the probe loads the shipped preset)."""
    overhead = runtime_overhead(refresh)
    return overhead.total, overhead.machine

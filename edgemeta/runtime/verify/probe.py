"""Layer 3 of model verification: the crash probe. The model is built, allocated and run on zeros in a
forked child with a timeout, because the TFLite C++ runtime can still crash the whole process on a
structurally valid but inconsistent model (see `edgemeta.runtime.verify`). Passing hashes are cached,
so each model is probed once per process.
"""

from __future__ import annotations

import faulthandler
import os
import select
import signal
import threading
import time
from collections.abc import Callable

from edgemeta.format.atomic import anonymous_file
from edgemeta.format.checksum import sha256_hex
from edgemeta.runtime.verify.flatbuffer import ModelVerificationError

PROBE_TIMEOUT = 10.0  # seconds; a small model is built, allocated and run twice in ~10 ms

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
    notes = [line for line in lines if not line.startswith(("stage ", "error "))]
    return (*_verdict(lines, status, timed_out, timeout, stderr), notes)


def _verdict(lines: list[str], status: int, timed_out: bool, timeout: float, stderr: str) -> tuple[str, str]:
    """(status, message) of a finished probe child, from what it sent, how it ended and its stderr."""
    stage = next((line[6:] for line in reversed(lines) if line.startswith("stage ")), "starting")
    errors = [line[6:] for line in lines if line.startswith("error ")]
    if timed_out:
        return "crash", (f"model.tflite hangs the interpreter: no result after {timeout:g} s in {stage} "
                         "(a corrupt shape or an endless graph?). Received: a model that never finishes a run")
    if os.WIFSIGNALED(status):
        name = signal.Signals(os.WTERMSIG(status)).name
        hint = [line for line in stderr.splitlines() if line.strip() and not line.startswith("INFO:")][-1:]
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

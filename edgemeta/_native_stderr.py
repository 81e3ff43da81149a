"""Hides known noise lines that native libraries (TensorFlow, LiteRT) write straight to file descriptor 2."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import subprocess  # imported where used: the board's runtime never starts a filter process (0.5 MB resident)

# A longer line cannot be one of the short noise lines: it is passed on in pieces, so a writer that
# never ends its line cannot make the filter hold more than this.
MAX_LINE = 64 * 1024
# Kept only so that a filter process still running after its block is not reported as leaked.
_LINGERING: list[subprocess.Popen] = []


def native_logs_wanted() -> bool:
    """True when the user asked TensorFlow for all its C++ logs (TF_CPP_MIN_LOG_LEVEL=0, or verbose logging
    through TF_CPP_MAX_VLOG_LEVEL / TF_CPP_VMODULE): nothing is hidden from them then."""
    return (os.environ.get("TF_CPP_MIN_LOG_LEVEL", "").strip() == "0"
            or any(os.environ.get(name, "").strip() for name in ("TF_CPP_MAX_VLOG_LEVEL", "TF_CPP_VMODULE")))


@contextlib.contextmanager
def filtered_native_stderr(hide: Sequence[str], *, filter_process: bool = False) -> Iterator[None]:
    """Within the block, each line written to file descriptor 2 (by C++, or by Python's sys.stderr) reaches
    the real stderr as soon as it is complete, except lines matching one of the regular expressions `hide`
    (`re.search` on the line without its newline). Other threads' lines pass through too.

    C++ libraries print with fprintf(stderr) or their own loggers, which Python's logging and warnings
    filters cannot reach: the lines are read from a pipe put in place of file descriptor 2. A thread reads
    it by default. `filter_process=True` reads it in a small child Python process instead, for a block that
    loads native libraries: their static initialisers run with the GIL held, so a thread could not drain
    the pipe (a full pipe would block the writer for ever), and a library that aborts while loading
    (TensorFlow on a CPU without the instructions it was built for) would take its last words with it.
    """
    patterns = [re.compile(p) for p in hide]
    try:
        real = os.dup(2)
    except OSError:  # no stderr at all: nothing to filter
        yield
        return
    read_end, write_end = os.pipe()
    stop = (_start_child(read_end, real, hide) if filter_process else None) or _start_thread(read_end, real, patterns)
    _flush_python_stderr()
    os.dup2(write_end, 2)
    os.close(write_end)
    try:
        yield
    finally:
        _flush_python_stderr()
        os.dup2(real, 2)  # the pipe's last write end closes, so the reader reads to its end and stops
        os.close(real)
        # A process started inside the block could still hold the write end: the reader then goes on
        # forwarding its lines, and this block does not wait for that process to exit.
        stop()


def _start_thread(read_end: int, real: int, hide: Sequence[re.Pattern]) -> Callable[[], None]:
    out = os.dup(real)  # the thread's own copy: it may outlive the block
    forwarder = threading.Thread(target=_forward, args=(read_end, out, hide), name="edgemeta-stderr-filter", daemon=True)
    forwarder.start()
    return lambda: forwarder.join(timeout=5)


def _start_child(read_end: int, real: int, hide: Sequence[str]) -> Callable[[], None] | None:
    """Starts the filter process; returns how to wait for it, or None when no process could be started."""
    if not sys.executable:
        return None
    import subprocess

    try:
        # -I -S: no site-packages, no user paths; this file needs the standard library only.
        child = subprocess.Popen([sys.executable, "-I", "-S", __file__, *hide], stdin=read_end, stdout=real, stderr=real)
    except OSError:
        return None
    os.close(read_end)

    def stop() -> None:
        try:
            child.wait(timeout=5)
        except subprocess.TimeoutExpired:
            _LINGERING.append(child)

    return stop


def _flush_python_stderr() -> None:
    if sys.stderr is not None:
        with contextlib.suppress(OSError, ValueError):  # closed or detached: nothing buffered to lose
            sys.stderr.flush()


def _forward(read_end: int, out: int, hide: Sequence[re.Pattern]) -> None:
    pending = b""
    try:
        while chunk := os.read(read_end, 65536):
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                _emit(out, line + b"\n", hide)
            if len(pending) > MAX_LINE:
                _write_all(out, pending)
                pending = b""
        if pending:
            _emit(out, pending, hide)
    finally:
        os.close(read_end)
        os.close(out)


def _emit(out: int, line: bytes, hide: Sequence[re.Pattern]) -> None:
    text = line.decode("utf-8", "replace").rstrip("\r\n")
    if not any(p.search(text) for p in hide):
        _write_all(out, line)


def _write_all(fd: int, data: bytes) -> None:
    while data:
        try:
            data = data[os.write(fd, data):]
        except OSError:  # the real stderr is gone: nowhere to show the line
            return


if __name__ == "__main__":  # the filter process: stdin is the pipe, stdout the real stderr
    _forward(0, 1, [re.compile(p) for p in sys.argv[1:]])

"""What tests share beyond fixtures: paths, real processes of this venv, the CLI, and test images.

Import it as `from tests.harness import ...` (the repository root is on pytest's `pythonpath`).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OMNIGLOT_DIR = Path(os.environ.get("EDGEMETA_OMNIGLOT_DIR") or ROOT.parent / "shared" / "datasets" / "omniglot").resolve()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_python(code: str, timeout: int = 300, **kwargs) -> subprocess.CompletedProcess:
    """Runs `code` in a fresh interpreter of this venv (real process, real imports)."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, **kwargs)


def run_cli(*args: str, timeout: int = 600, cwd: Path | None = None) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("edgemeta")
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=cwd)


def cli_in_process(*args: str) -> subprocess.CompletedProcess:
    """`edgemeta ARGS` through `edgemeta.cli.main` in this process: for error paths, where a fresh
    interpreter (and its TensorFlow import) would cost seconds and prove nothing more."""
    import contextlib
    import io

    from edgemeta.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(map(str, args)))
        except SystemExit as e:  # argparse's usage errors
            code = e.code
    return subprocess.CompletedProcess(["edgemeta", *map(str, args)], code, out.getvalue(), err.getvalue())


def blank_with_square(size: int = 105, lo: int = 30, hi: int = 70) -> np.ndarray:
    """A white (255) image with a black (0) square: an Omniglot-like raw drawing."""
    image = np.full((size, size), 255, np.uint8)
    image[lo:hi, lo:hi] = 0
    return image

"""Shared test harness: the Omniglot location, and one tiny trained digits run with float32 and int8
bundles that most tests reuse (training it once keeps every test small)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
OMNIGLOT_DIR = Path(os.environ.get("EDGEMETA_OMNIGLOT_DIR") or ROOT.parent / "shared" / "datasets" / "omniglot").resolve()


@pytest.fixture(scope="session")
def omniglot_dir() -> Path:
    if not (OMNIGLOT_DIR / "images_background_small1.zip").is_file():
        pytest.skip(f"Omniglot small zips not found in {OMNIGLOT_DIR} (set EDGEMETA_OMNIGLOT_DIR)")
    return OMNIGLOT_DIR


@pytest.fixture(scope="session")
def omniglot(omniglot_dir):
    from edgemeta.data import load_omniglot

    return load_omniglot(omniglot_dir, download=False)


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    """A ProtoNet meta-trained briefly on digits 0-4, exported as float32 and int8 bundles."""
    from converters import export_bundle
    from edgemeta.training import TrainConfig, train

    out = tmp_path_factory.mktemp("digits_run")
    config = TrainConfig(dataset="digits", n_way=5, k_shot=1, n_query=10, steps=150, epochs=1, max_shift=1)
    net, train_set, test_set = train(config, out / "run", verbose=0)
    bundles = {}
    for q in ("float32", "int8"):
        bundles[q] = export_bundle(net.backbone, out / f"bundle-{q}", train_set.preprocessing, q, train_set.images,
                                   provenance={"dataset": "digits", "learner": "protonet"})
    return {"dir": out, "run": out / "run", "net": net, "train": train_set, "test": test_set, "bundles": bundles}


@pytest.fixture(scope="session")
def omniglot_split_run(omniglot, tmp_path_factory):
    """A ProtoNet meta-trained briefly (200 20-way 1-shot episodes) on the 5 training alphabets and
    exported int8; the held-out alphabets' tests (accuracy, open-set) share it instead of each training."""
    from converters import export_bundle
    from edgemeta.training import OMNIGLOT_TEST, OMNIGLOT_TRAIN, TrainConfig, train

    out = tmp_path_factory.mktemp("omniglot_split_run")
    train_set, test_set = omniglot.subset(groups=OMNIGLOT_TRAIN), omniglot.subset(groups=OMNIGLOT_TEST)
    config = TrainConfig(dataset="omniglot", n_way=20, k_shot=1, n_query=5, steps=200, epochs=1, max_shift=1)
    net, _, _ = train(config, out / "run", verbose=0, train_set=train_set)
    bundle = export_bundle(net.backbone, out / "int8", train_set.preprocessing, "int8", train_set.images)
    return {"dir": out, "run": out / "run", "net": net, "train": train_set, "test": test_set, "int8": bundle}


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

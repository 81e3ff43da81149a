"""Shared fixtures: the Omniglot data, one tiny trained digits run with float32 and int8 bundles that most
tests reuse, and one short Omniglot split run for the held-out alphabets (training each once keeps every
test small). Under pytest-xdist (`make test`) one worker trains each run and the others load it."""

from __future__ import annotations

import fcntl
import os
import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.harness import OMNIGLOT_DIR


@pytest.fixture(scope="module")
def no_tensorflow(tmp_path_factory) -> Path:
    """A PYTHONPATH entry whose tensorflow/keras packages refuse to import: board-side commands must not need them."""
    root = tmp_path_factory.mktemp("block_tf")
    for name in ("tensorflow", "tf_keras", "keras"):
        (root / name).mkdir()
        (root / name / "__init__.py").write_text(f"raise ImportError('{name} is blocked: the board has none')\n")
    return root


def trained_once(tmp_path_factory, name: str, build: Callable[[Path], dict[str, Any]],
                 load: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    """`build(out)` writes a run into `out` and returns the fixture's value. Under xdist the first worker
    builds it in a directory all workers of this pytest run share (locked), and later workers `load(out)`
    it from disk instead of training again; without xdist it is built in a fresh temporary directory."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return build(tmp_path_factory.mktemp(name))
    shared = tmp_path_factory.getbasetemp().parent  # this run's root, above each worker's own basetemp
    out, done = shared / name, shared / f"{name}.done"
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if `build` raises
        if done.is_file():
            return load(out)
        shutil.rmtree(out, ignore_errors=True)  # what a worker whose build failed left
        value = build(out)
        done.touch()
        return value


def pytest_collection_modifyitems(config, items) -> None:
    """Under xdist, modules with more slow tests run first (modules keep their own order; a worker takes a
    whole module at a time), so that neither worker ends the run alone on a long module."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    slow = Counter(item.nodeid.split("::")[0] for item in items if item.get_closest_marker("slow"))
    items.sort(key=lambda item: -slow[item.nodeid.split("::")[0]])  # stable sort


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

    def build(out: Path) -> dict[str, Any]:
        from converters import export_bundle
        from edgemeta.train.training import TrainConfig, train

        config = TrainConfig(dataset="digits", n_way=5, k_shot=1, n_query=10, steps=150, epochs=1, max_shift=1)
        net, train_set, test_set = train(config, out / "run", verbose=0)
        for q in ("float32", "int8"):
            export_bundle(net.backbone, out / f"bundle-{q}", train_set.preprocessing, q, train_set.images,
                          provenance={"dataset": "digits", "learner": "protonet"})
        return value(out, net, train_set, test_set)

    def load(out: Path) -> dict[str, Any]:
        from edgemeta.train.training import TrainConfig, load_learner, load_split

        net, info = load_learner(out / "run")
        return value(out, net, *load_split(TrainConfig(**info["config"])))

    def value(out: Path, net, train_set, test_set) -> dict[str, Any]:
        return {"dir": out, "run": out / "run", "net": net, "train": train_set, "test": test_set,
                "bundles": {q: out / f"bundle-{q}" for q in ("float32", "int8")}}

    return trained_once(tmp_path_factory, "digits_run", build, load)


@pytest.fixture(scope="session")
def omniglot_split_run(omniglot, tmp_path_factory):
    """A ProtoNet meta-trained briefly (200 20-way 1-shot episodes) on the 5 training alphabets and
    exported int8; the held-out alphabets' tests (accuracy, open-set) share it instead of each training."""
    from edgemeta.train.training import OMNIGLOT_TEST, OMNIGLOT_TRAIN

    train_set, test_set = omniglot.subset(groups=OMNIGLOT_TRAIN), omniglot.subset(groups=OMNIGLOT_TEST)

    def build(out: Path) -> dict[str, Any]:
        from converters import export_bundle
        from edgemeta.train.training import TrainConfig, train

        config = TrainConfig(dataset="omniglot", n_way=20, k_shot=1, n_query=5, steps=200, epochs=1, max_shift=1)
        net, _, _ = train(config, out / "run", verbose=0, train_set=train_set)
        export_bundle(net.backbone, out / "int8", train_set.preprocessing, "int8", train_set.images)
        return value(out, net)

    def load(out: Path) -> dict[str, Any]:
        from edgemeta.train.training import load_learner

        return value(out, load_learner(out / "run")[0])

    def value(out: Path, net) -> dict[str, Any]:
        return {"dir": out, "run": out / "run", "net": net, "train": train_set, "test": test_set, "int8": out / "int8"}

    return trained_once(tmp_path_factory, "omniglot_split_run", build, load)

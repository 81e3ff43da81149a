"""Shared fixtures: the Omniglot data, and one tiny trained digits run with float32 and int8
bundles that most tests reuse (training it once keeps every test small)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness import OMNIGLOT_DIR


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
    from edgemeta.train.training import TrainConfig, train

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
    from edgemeta.train.training import OMNIGLOT_TEST, OMNIGLOT_TRAIN, TrainConfig, train

    out = tmp_path_factory.mktemp("omniglot_split_run")
    train_set, test_set = omniglot.subset(groups=OMNIGLOT_TRAIN), omniglot.subset(groups=OMNIGLOT_TEST)
    config = TrainConfig(dataset="omniglot", n_way=20, k_shot=1, n_query=5, steps=200, epochs=1, max_shift=1)
    net, _, _ = train(config, out / "run", verbose=0, train_set=train_set)
    bundle = export_bundle(net.backbone, out / "int8", train_set.preprocessing, "int8", train_set.images)
    return {"dir": out, "run": out / "run", "net": net, "train": train_set, "test": test_set, "int8": bundle}

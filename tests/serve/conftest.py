"""The service tests' shared fixture: a board-like Python path without TensorFlow."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def no_tensorflow(tmp_path_factory) -> Path:
    """A PYTHONPATH entry whose tensorflow/keras packages refuse to import: the service must not need them."""
    root = tmp_path_factory.mktemp("block_tf")
    for name in ("tensorflow", "tf_keras", "keras"):
        (root / name).mkdir()
        (root / name / "__init__.py").write_text(f"raise ImportError('{name} is blocked: the board has none')\n")
    return root

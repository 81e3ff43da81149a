"""The board runtime must work with TensorFlow absent: we block it and use the real interpreter."""

import tomllib

from tests.harness import ROOT, run_python

CODE = r"""
import sys
for name in ("tensorflow", "tf_keras", "keras"):
    sys.modules[name] = None  # any import of these now raises ImportError
import numpy as np
from edgemeta.runtime import FewShotAdapter, interpreter_class
adapter = FewShotAdapter.from_preset("omniglot")
square = np.full((105, 105), 255, np.uint8); square[30:70, 30:70] = 0
ring = np.full((105, 105), 255, np.uint8); ring[20:80, 20:80] = 0; ring[30:70, 30:70] = 255
adapter.enroll("square", square); adapter.enroll("ring", ring)
print(interpreter_class()[1], adapter.classify([square, ring])[0].label, adapter.classify(ring)[0].label)
loaded = [m for m in sys.modules if m.split(".")[0] in ("tensorflow", "tf_keras", "keras") and sys.modules[m] is not None]
print("loaded:", loaded)
"""


def test_runtime_runs_with_tensorflow_blocked():
    result = run_python(CODE)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ai_edge_litert.interpreter square ring" in result.stdout
    assert "loaded: []" in result.stdout


def test_issue_one_liner():
    result = run_python("import sys; sys.modules['tensorflow'] = None; from edgemeta.runtime import FewShotAdapter")
    assert result.returncode == 0, result.stderr


def test_device_extra_has_no_tensorflow():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert not [d for d in extras["device"] if "tensorflow" in d.lower() or "keras" in d.lower()]
    assert any(d.startswith("ai-edge-litert") for d in extras["device"])

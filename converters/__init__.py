"""Converts trained tf_keras embedding models into edgemeta bundles (TFLite model + manifest).

Names load on first use, so `converters.edgetpu` (no TensorFlow) also works on a board where
`converters.tflite` (TensorFlow) cannot be imported.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "QUANTIZATIONS": "converters.tflite", "export_bundle": "converters.tflite", "to_tflite": "converters.tflite",
    "EdgeTPUReport": "converters.edgetpu", "check_edgetpu": "converters.edgetpu",
    "compile_for_edgetpu": "converters.edgetpu", "static_batch_model": "converters.edgetpu",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'converters' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)

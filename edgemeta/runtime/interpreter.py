"""Finds a TFLite interpreter without importing TensorFlow unless nothing lighter is installed."""

from __future__ import annotations

import importlib
from typing import Any

# Lightest first: LiteRT (ai-edge-litert), then the older tflite_runtime, then full TensorFlow.
CANDIDATES = ("ai_edge_litert.interpreter", "tflite_runtime.interpreter", "tensorflow.lite")


def interpreter_class() -> tuple[type, str]:
    """Returns `(Interpreter class, module name)` of the first importable candidate."""
    errors = []
    for name in CANDIDATES:
        try:
            module = importlib.import_module(name)
        except ImportError as e:  # also raised for a module that was blocked (sys.modules[name] = None)
            errors.append(f"{name}: {e}")
            continue
        return module.Interpreter, name
    raise ImportError(
        "No TFLite interpreter found. Install one: `pip install edgemeta[device]` (ai-edge-litert). "
        f"Tried: {'; '.join(errors)}"
    )


def make_interpreter(model_path: str, num_threads: int | None = None) -> Any:
    cls, _ = interpreter_class()
    return cls(model_path=str(model_path), num_threads=num_threads)

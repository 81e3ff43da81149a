"""Finds a TFLite interpreter (without importing TensorFlow unless nothing lighter is installed) and
loads an optional hardware delegate (the Coral Edge TPU), falling back to the CPU with a warning."""

from __future__ import annotations

import ctypes
import importlib
import os
import platform
import warnings
from typing import Any

# Lightest first: LiteRT (ai-edge-litert), then the older tflite_runtime, then full TensorFlow.
CANDIDATES = ("ai_edge_litert.interpreter", "tflite_runtime.interpreter", "tensorflow.lite")
DELEGATES = ("edgetpu",)
# The Edge TPU runtime library (Coral's libedgetpu1-std / -max package), per platform.
EDGETPU_LIBRARY = {"Linux": "libedgetpu.so.1", "Darwin": "libedgetpu.1.dylib", "Windows": "edgetpu.dll"}


def interpreter_class() -> tuple[type, str]:
    """Returns `(Interpreter class, module name)` of the first importable candidate."""
    module, name = _interpreter_module()
    return module.Interpreter, name


def make_interpreter(model_path: str | None = None, num_threads: int | None = None, *,
                     model_content: bytes | None = None, delegate: str | None = None) -> Any:
    """Builds an interpreter for a model file (`model_path`) or bytes (`model_content`): exactly one of them.

    `delegate="edgetpu"` loads the Coral Edge TPU delegate. When it cannot be loaded (no libedgetpu,
    no device attached, or a library that does not fit this interpreter), a RuntimeWarning says so
    and a CPU interpreter is returned instead. Tensors are not allocated yet.
    """
    if (model_path is None) == (model_content is None):
        raise ValueError(
            "Pass exactly one of model_path or model_content. Received: "
            f"model_path={model_path!r}, model_content={'None' if model_content is None else f'<{len(model_content)} bytes>'}"
        )
    _check_delegate_name(delegate)
    module, module_name = _interpreter_module()
    source = {"model_path": os.fspath(model_path)} if model_path is not None else {"model_content": bytes(model_content)}
    if delegate is not None:
        loaded, why = _load_delegate(module, module_name, delegate)
        if loaded is not None:
            try:
                return module.Interpreter(**source, num_threads=num_threads, experimental_delegates=[loaded])
            except (ValueError, RuntimeError) as e:  # loaded, but could not take the graph
                why = f"the delegate loaded but could not be applied to the model ({e})"
        warnings.warn(
            f"The Edge TPU delegate was not found or could not be used: {why}. The model runs on the CPU "
            f"({module_name}). Install Coral's libedgetpu1-std and attach the device to use the Edge TPU "
            "(see docs/coral.md).",
            RuntimeWarning,
            stacklevel=2,
        )
    return module.Interpreter(**source, num_threads=num_threads)


def delegate_available(name: str) -> bool:
    """True if delegate `name` (e.g. "edgetpu") loads here: its library is installed and, for the Edge
    TPU, a device is attached. Loads and releases it; never warns."""
    if name not in DELEGATES:
        raise ValueError(f"Unknown delegate {name!r}. Expected one of {list(DELEGATES)}. Received: {name!r}")
    module, module_name = _interpreter_module()
    loaded, _ = _load_delegate(module, module_name, name)
    return loaded is not None


def _check_delegate_name(name: str | None) -> None:
    if name is not None and name not in DELEGATES:
        raise ValueError(f"Unknown delegate {name!r}. Expected None or one of {list(DELEGATES)}. Received: {name!r}")


def _interpreter_module() -> tuple[Any, str]:
    errors = []
    for name in CANDIDATES:
        try:
            module = importlib.import_module(name)
        except ImportError as e:  # also raised for a module that was blocked (sys.modules[name] = None)
            errors.append(f"{name}: {e}")
            continue
        return module, name
    raise ImportError(
        "No TFLite interpreter found. Install one: `pip install edgemeta[device]` (ai-edge-litert). "
        f"Tried: {'; '.join(errors)}"
    )


def _load_delegate(module: Any, module_name: str, name: str) -> tuple[Any | None, str]:
    """Returns `(delegate, "")`, or `(None, why it did not load)`."""
    system = platform.system()
    library = EDGETPU_LIBRARY.get(system)
    if library is None:
        return None, f"no Edge TPU library is known for {system!r} (expected one of {list(EDGETPU_LIBRARY)})"
    # tensorflow.lite keeps load_delegate under experimental; the light runtimes have it at the top.
    load = getattr(module, "load_delegate", None) or getattr(getattr(module, "experimental", None), "load_delegate", None)
    if load is None:
        return None, f"{module_name} has no load_delegate"
    try:
        # Open the library ourselves first: load_delegate on a missing library also prints an
        # "Exception ignored in Delegate.__del__" traceback (its __init__ fails half-way).
        ctypes.CDLL(library)
    except OSError as e:
        return None, f"{library} could not be loaded ({e})"
    try:
        return load(library), ""
    except (ValueError, OSError, RuntimeError, AttributeError) as e:  # ValueError: e.g. no Edge TPU attached
        return None, f"{library} loaded but the delegate could not be created ({str(e).strip() or type(e).__name__})"

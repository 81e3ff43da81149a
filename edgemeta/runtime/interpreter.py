"""Finds a TFLite interpreter (without importing TensorFlow unless nothing lighter is installed) and
loads an optional hardware delegate (the Coral Edge TPU), falling back to the CPU with a warning."""

from __future__ import annotations

import base64
import ctypes
import importlib
import os
import platform
import threading
import warnings
from typing import Any

from edgemeta._native_stderr import filtered_native_stderr, native_logs_wanted

# Lightest first: LiteRT (ai-edge-litert), then the older tflite_runtime, then full TensorFlow.
CANDIDATES = ("ai_edge_litert.interpreter", "tflite_runtime.interpreter", "tensorflow.lite")
DELEGATES = ("edgetpu",)
# The Edge TPU runtime library (Coral's libedgetpu1-std / -max package), per platform.
EDGETPU_LIBRARY = {"Linux": "libedgetpu.so.1", "Darwin": "libedgetpu.1.dylib", "Windows": "edgetpu.dll"}

# Printed to stderr once per process, by C++ (tflite/minimal_logging: fprintf at INFO, the default severity of
# release builds), the first time an interpreter applies its default CPU delegate. No environment variable or
# Python call lowers that severity, so the first allocation is made here, on a tiny model, behind a filter.
XNNPACK_NOTICE = r"^INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.$"
# `x + x` on a float32 [1, 1] tensor: a tf.function converted by tf.lite.TFLiteConverter (TensorFlow 2.21).
_SPEND_NOTICE_MODEL = base64.b64decode(
    "HAAAAFRGTDMUACAAHAAYABQAEAAMAAAACAAEABQAAAAcAAAAHAAAAHQAAAAkAQAANAEAAEwCAAADAAAAAAAAAAIAAAA0AAAABAAAANz/"
    "//8EAAAABAAAABMAAABDT05WRVJTSU9OX01FVEFEQVRBAAgADAAIAAQACAAAAAMAAAAEAAAAEwAAAG1pbl9ydW50aW1lX3ZlcnNpb24A"
    "BQAAAKwAAACkAAAAnAAAAHwAAAAEAAAAkv///wQAAABgAAAAEAAAAAAAAAAIAA4ACAAEAAgAAAAQAAAAJAAAAAAABgAIAAQABgAAAAQA"
    "AAAAAAAADAAYABQAEAAMAAQADAAAAHYVEJsc90kcAwAAAAIAAAAEAAAABgAAADIuMjEuMAAAAAAGAAgABAAGAAAABAAAABAAAAAxLjUu"
    "MAAAAAAAAAAAAAAAvP7//8D+///E/v//DwAAAE1MSVIgQ29udmVydGVkLgABAAAAFAAAAAAADgAYABQAEAAMAAgABAAOAAAAFAAAABwA"
    "AABcAAAAYAAAAGQAAAAEAAAAbWFpbgAAAAABAAAAFAAAAAAADgAUAAAAEAAMAAsABAAOAAAAEAAAAAAAAAsMAAAAEAAAAET///8BAAAA"
    "AQAAAAIAAAAAAAAAAAAAAAEAAAABAAAAAQAAAAAAAAACAAAAWAAAAAQAAADG////AAAAARAAAAAQAAAAAgAAABgAAACQ////CAAAAElk"
    "ZW50aXR5AAAAAAIAAAABAAAAAQAAAAAAFgAYABQAAAAQAAwACAAAAAAAAAAHABYAAAAAAAABEAAAABAAAAABAAAAEAAAAOD///8BAAAA"
    "eAAAAAIAAAABAAAAAQAAAAEAAAAIAAAABAAEAAQAAAA="
)
_notice_spent = False
_notice_lock = threading.Lock()


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
        _spend_xnnpack_notice(module)
        return module, name
    raise ImportError(
        "No TFLite interpreter found. Install one: `pip install edgemeta[device]` (ai-edge-litert). "
        f"Tried: {'; '.join(errors)}"
    )


def _spend_xnnpack_notice(module: Any) -> None:
    """Makes this process's first default-delegate allocation, with its INFO line hidden (other lines pass).
    Left alone when the user asked for native logs (TF_CPP_MIN_LOG_LEVEL=0)."""
    global _notice_spent
    if _notice_spent:  # the common case, without the lock
        return
    with _notice_lock:
        if _notice_spent:
            return
        _notice_spent = True  # one attempt per process, whatever comes of it
        if native_logs_wanted():
            return
        try:
            with filtered_native_stderr([XNNPACK_NOTICE]):
                module.Interpreter(model_content=_SPEND_NOTICE_MODEL, num_threads=1).allocate_tensors()
        except (ValueError, RuntimeError):  # a runtime that cannot run it: the line may show later, nothing else
            pass


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

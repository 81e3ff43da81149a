"""The single import point for TensorFlow and Keras 2 (tf_keras) in edgemeta.

TensorFlow Model Optimization works only with tf_keras, so every model is built from the `keras`
exported here. Moving to Keras 3 later is a change to this file alone.
"""

import contextlib
import ctypes
import functools
import os
import sys

from edgemeta._native_stderr import filtered_native_stderr, native_logs_wanted
from edgemeta.cpu import cpu_flags, onednn_choice

# Must be set before TensorFlow is first imported, or `tf.keras` resolves to Keras 3.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")


def _choose_onednn() -> tuple[bool, str]:
    """Applies `edgemeta.cpu.onednn_choice` before TensorFlow is imported (it reads the variable once). Returns
    (whether edgemeta set the variable, why the kernels are what they are)."""
    if "tensorflow" in sys.modules:
        return False, "TensorFlow's default (TensorFlow was imported before edgemeta)"
    value, reason = onednn_choice(os.environ, cpu_flags())
    if value is not None:
        os.environ["TF_ENABLE_ONEDNN_OPTS"] = value
    return value is not None, reason


ONEDNN_SET_BY_EDGEMETA, ONEDNN_CHOICE = _choose_onednn()
# Hides TensorFlow's INFO and WARNING lines, unless the user chose a level of their own.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# TensorFlow 2.21 prints these while its libraries load, before its logging reads TF_CPP_MIN_LOG_LEVEL
# (abseil logs everything until absl::InitializeLog), so only a filter on the stream can hide them.
IMPORT_NOISE = (
    r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$",
    r"^I\d{4} .*\] oneDNN custom operations are on\.",
    r"^I\d{4} .*\] Could not find cuda drivers on your machine, GPU will not be used\.$",
)
# The one E-line: alarming on a CPU-only machine, where it only repeats that there is no CUDA driver.
NO_DRIVER_NOISE = r"^E\d{4} .*\] failed call to cuInit: "
# Printed while training once edgemeta has turned oneDNN on for a CPU without AVX-512 (MAML's int32 ops run on Eigen
# there): an E-line about a choice edgemeta made, with nothing wrong.
ONEDNN_INT32_NOISE = r"^E\d{4} .*\] oneDNN supports DT_INT32 only on platforms with AVX-512\. Falling back "


def training_stderr_filter() -> contextlib.AbstractContextManager:
    """What training runs inside: hides `ONEDNN_INT32_NOISE` when edgemeta chose oneDNN, and nothing when the
    user asked for TensorFlow's logs or chose the kernels themselves."""
    if native_logs_wanted() or not ONEDNN_SET_BY_EDGEMETA:
        return contextlib.nullcontext()
    return filtered_native_stderr((ONEDNN_INT32_NOISE,))


def _cuda_driver_present() -> bool:
    """True when NVIDIA's driver library loads: cuInit failing then is news, and is shown."""
    if not sys.platform.startswith("linux"):  # TensorFlow's CUDA builds are Linux-only (native Windows: up to 2.10)
        return False
    try:
        ctypes.CDLL("libcuda.so.1")  # what TensorFlow itself loads to reach the GPU
    except OSError:
        return False
    return True


if "tensorflow" in sys.modules or native_logs_wanted():
    import tensorflow as tf
elif _cuda_driver_present():
    # A child process filters, not a thread: the libraries load with the GIL held (see filtered_native_stderr).
    with filtered_native_stderr(IMPORT_NOISE, filter_process=True):
        import tensorflow as tf
else:
    with filtered_native_stderr((*IMPORT_NOISE, NO_DRIVER_NOISE), filter_process=True):
        import tensorflow as tf

        # cuInit is called (once, under a millisecond) at the first device query: made here, inside the filter.
        tf.config.list_physical_devices()
import tf_keras as keras  # noqa: E402

if os.environ["TF_USE_LEGACY_KERAS"] != "1":  # pragma: no cover - guards a user override
    raise RuntimeError(
        "edgemeta needs Keras 2 (tf_keras) for TensorFlow Model Optimization. "
        f"Received: TF_USE_LEGACY_KERAS={os.environ['TF_USE_LEGACY_KERAS']!r}; expected '1'."
    )



def onednn_enabled() -> bool:
    """Whether this TensorFlow runs its oneDNN kernels (else Eigen's)."""
    try:
        from tensorflow.python.util import _pywrap_util_port  # the only place TensorFlow says so

        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):  # pragma: no cover - a TensorFlow without the probe
        return os.environ.get("TF_ENABLE_ONEDNN_OPTS", "").lower() in ("1", "true")


def kernels() -> str:
    """The CPU kernels training uses and why, e.g. 'oneDNN (TensorFlow's default on this CPU ...)'."""
    return f"{'oneDNN' if onednn_enabled() else 'Eigen'} ({ONEDNN_CHOICE})"


@functools.cache  # the machine does not change within a process
def amx_bfloat16_cpu() -> bool:
    """True when TensorFlow sees no GPU and the CPU has AMX-BF16 tiles (Intel Xeon 4th generation and
    later): oneDNN then runs bfloat16 convolutions and matmuls on AMX. A Conv-4 ProtoNet step ran
    1.7-3.1x faster than in float32 here (benchmarks/learners.py, benchmarks/jit_compile.py)."""
    if tf.config.list_physical_devices("GPU"):
        return False
    return "amx_bf16" in cpu_flags()  # Linux's /proc/cpuinfo, less what a CPUID mask hides; elsewhere none


__all__ = ["tf", "keras", "amx_bfloat16_cpu", "kernels", "onednn_enabled", "training_stderr_filter"]

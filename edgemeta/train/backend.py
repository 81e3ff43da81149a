"""The single import point for TensorFlow and Keras 2 (tf_keras) in edgemeta.

TensorFlow Model Optimization works only with tf_keras, so every model is built from the `keras`
exported here. Moving to Keras 3 later is a change to this file alone.
"""

import functools
import os

# Must be set before TensorFlow is first imported, or `tf.keras` resolves to Keras 3.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

if os.environ["TF_USE_LEGACY_KERAS"] != "1":  # pragma: no cover - guards a user override
    raise RuntimeError(
        "edgemeta needs Keras 2 (tf_keras) for TensorFlow Model Optimization. "
        f"Received: TF_USE_LEGACY_KERAS={os.environ['TF_USE_LEGACY_KERAS']!r}; expected '1'."
    )



@functools.cache  # the machine does not change within a process: one read of /proc/cpuinfo
def amx_bfloat16_cpu() -> bool:
    """True when TensorFlow sees no GPU and the CPU has AMX-BF16 tiles (Intel Xeon 4th generation and
    later): oneDNN then runs bfloat16 convolutions and matmuls on AMX. A Conv-4 ProtoNet step ran
    1.7-3.1x faster than in float32 here (benchmarks/learners.py, benchmarks/jit_compile.py)."""
    if tf.config.list_physical_devices("GPU"):
        return False
    try:
        with open("/proc/cpuinfo") as cpuinfo:  # Linux; elsewhere no AMX is assumed
            flags = next((line for line in cpuinfo if line.startswith("flags")), "")
    except OSError:
        return False
    return "amx_bf16" in flags.split()


__all__ = ["tf", "keras", "amx_bfloat16_cpu"]

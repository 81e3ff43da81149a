"""Chooses the tf.distribute strategy a training run uses (`edgemeta train --strategy`) and describes it.

- `default`: one device (TensorFlow's default strategy).
- `mirrored`: `MirroredStrategy` over this machine's GPUs, or over `cpu_replicas` logical CPU devices
  (for trying distribution on a CPU-only machine; it adds no speed there).
- `multi-worker`: `MultiWorkerMirroredStrategy`; the cluster and this process's place in it come from
  the `TF_CONFIG` environment variable, as everywhere in TensorFlow.
- `auto`: `multi-worker` when `TF_CONFIG` is set, `mirrored` when there are several GPUs, else `default`.

Episodes are what gets sharded: a step's global batch of `episodes_per_batch` whole episodes is split
across the replicas (`training.fit_episodes`), so each replica sees complete tasks.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

STRATEGIES = ("auto", "default", "mirrored", "multi-worker")


@dataclass(frozen=True)
class Cluster:
    """Where this process is in a run: replicas in sync, workers, this worker's index, and whether it writes the run."""

    strategy: str
    replicas: int
    workers: int
    worker_index: int
    is_chief: bool

    def to_dict(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "replicas": self.replicas, "workers": self.workers}


def read_tf_config() -> dict[str, Any] | None:
    """The parsed `TF_CONFIG`, or None when unset; a clear error when it is not a usable cluster spec."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return None
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"TF_CONFIG must be JSON like {{\"cluster\": {{\"worker\": [\"host:port\", ...]}}, "
                         f"\"task\": {{\"type\": \"worker\", \"index\": 0}}}}. Received: {raw!r} ({e})") from None
    config = config if isinstance(config, dict) else {}
    cluster, task = config.get("cluster"), config.get("task")
    if not isinstance(cluster, dict) or not isinstance(task, dict) or task.get("type") not in cluster:
        raise ValueError("TF_CONFIG needs a 'cluster' of task lists and a 'task' {'type', 'index'} naming one of them. "
                         f"Received: {raw!r}")
    index = task.get("index", 0)
    if not isinstance(index, int) or not 0 <= index < len(cluster[task["type"]]):
        raise ValueError(f"TF_CONFIG task index must be within its cluster list of {len(cluster[task['type']])}. "
                         f"Received: {index!r}")
    return config


def make_strategy(name: str = "auto", cpu_replicas: int | None = None):
    """Builds strategy `name` (one of `STRATEGIES`). Must run before TensorFlow touches a device when
    `cpu_replicas` splits the CPU into logical devices.

    Example:
        >>> strategy = make_strategy("mirrored", cpu_replicas=2)  # doctest: +SKIP
        >>> with strategy.scope():  # doctest: +SKIP
        ...     train(config, "runs/x")
    """
    if name not in STRATEGIES:
        raise ValueError(f"Unknown strategy {name!r}. Expected one of {list(STRATEGIES)}.")
    if cpu_replicas is not None and (not isinstance(cpu_replicas, int) or cpu_replicas < 1):
        raise ValueError(f"cpu_replicas must be a positive integer. Received: {cpu_replicas!r}")
    from edgemeta.train.backend import tf

    tf_config = read_tf_config()
    gpus = tf.config.list_physical_devices("GPU")
    if name == "auto":
        name = "multi-worker" if tf_config else "mirrored" if (len(gpus) > 1 or (cpu_replicas or 1) > 1) else "default"
    if name == "default":
        if tf_config:
            raise ValueError("TF_CONFIG describes a cluster but strategy 'default' trains on one device. "
                             "Use --strategy multi-worker (or auto), or unset TF_CONFIG.")
        return tf.distribute.get_strategy()
    if cpu_replicas and not gpus:
        _split_cpu(cpu_replicas)
    if name == "mirrored":
        if tf_config:
            raise ValueError("TF_CONFIG describes a cluster; MirroredStrategy uses one machine. Use --strategy multi-worker.")
        devices = [d.name for d in tf.config.list_logical_devices("GPU" if gpus else "CPU")]
        return tf.distribute.MirroredStrategy(devices)
    if not tf_config:
        raise ValueError("Strategy 'multi-worker' needs TF_CONFIG: the cluster's workers and this process's task, e.g. "
                         "TF_CONFIG='{\"cluster\": {\"worker\": [\"host1:12345\", \"host2:12345\"]}, "
                         "\"task\": {\"type\": \"worker\", \"index\": 0}}'. Received: TF_CONFIG unset.")
    # Ring all-reduce over gRPC works everywhere; NCCL is the faster choice between GPUs.
    implementation = (tf.distribute.experimental.CommunicationImplementation.NCCL if gpus
                      else tf.distribute.experimental.CommunicationImplementation.RING)
    return tf.distribute.MultiWorkerMirroredStrategy(
        communication_options=tf.distribute.experimental.CommunicationOptions(implementation=implementation))


def describe(strategy) -> Cluster:
    """This process's place in `strategy`'s run (one worker, chief, for non-cluster strategies)."""
    from edgemeta.train.backend import tf

    resolver = getattr(strategy, "cluster_resolver", None)
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and resolver is not None:
        spec = resolver.cluster_spec().as_dict()
        workers = sum(len(v) for k, v in spec.items() if k in ("chief", "worker"))
        index = resolver.task_id or 0
        chief = resolver.task_type == "chief" or (resolver.task_type == "worker" and index == 0 and "chief" not in spec)
        return Cluster("multi-worker", strategy.num_replicas_in_sync, workers, index, chief)
    name = "mirrored" if isinstance(strategy, tf.distribute.MirroredStrategy) else "default"
    return Cluster(name, strategy.num_replicas_in_sync, 1, 0, True)


def _split_cpu(replicas: int) -> None:
    from edgemeta.train.backend import tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    wanted = [tf.config.LogicalDeviceConfiguration()] * replicas
    current = tf.config.get_logical_device_configuration(cpu)
    if current is not None and len(current) == replicas:
        return
    try:
        tf.config.set_logical_device_configuration(cpu, wanted)
    except RuntimeError as e:  # TensorFlow already initialised its devices
        raise RuntimeError(f"cpu_replicas={replicas} must be set before TensorFlow first uses a device; build the strategy "
                           f"first thing in the process. ({e})") from None

"""Training options a user sets: strategy selection errors, resuming from a backup, mixed precision."""

from __future__ import annotations

import json

import pytest

from edgemeta.train.backend import keras, tf
from edgemeta.train.distribute import make_strategy, read_tf_config
from edgemeta.train.training import TrainConfig, check_global_batch, load_run, resolve_mixed_precision, train
from tests.harness import cli_in_process

CLUSTER = {"cluster": {"worker": ["localhost:1", "localhost:2"]}, "task": {"type": "worker", "index": 0}}


def test_strategy_errors_say_what_was_received(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="Unknown strategy 'ring'"):
        make_strategy("ring")
    with pytest.raises(ValueError, match="needs TF_CONFIG.*Received: TF_CONFIG unset"):
        make_strategy("multi-worker")
    with pytest.raises(ValueError, match="cpu_replicas must be a positive integer. Received: 0"):
        make_strategy("mirrored", cpu_replicas=0)
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="TF_CONFIG must be JSON"):
        read_tf_config()
    monkeypatch.setenv("TF_CONFIG", json.dumps({**CLUSTER, "task": {"type": "worker", "index": 5}}))
    with pytest.raises(ValueError, match="within its cluster list of 2. Received: 5"):
        read_tf_config()
    monkeypatch.setenv("TF_CONFIG", json.dumps(CLUSTER))
    with pytest.raises(ValueError, match="TF_CONFIG describes a cluster"):
        make_strategy("default")
    with pytest.raises(ValueError, match="must be a multiple of the 2 replicas.*episodes_per_batch=3"):
        check_global_batch(3, 2)


def test_cli_refuses_multi_worker_without_tf_config(monkeypatch, tmp_path):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    result = cli_in_process("train", "--out", tmp_path / "run", "--strategy", "multi-worker")
    assert result.returncode == 2 and "needs TF_CONFIG" in result.stderr
    assert not (tmp_path / "run").exists()


class Crash(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            raise RuntimeError("the process died after the first epoch")


class Losses(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.values = []

    def on_train_batch_end(self, batch, logs=None):
        self.values.append(logs["loss"])


def test_interrupted_run_resumes_from_its_backup_and_refuses_another_config(tmp_path):
    """(That a resumed run equals an uninterrupted one is tests/train/test_distribute.py's multi-worker test.)"""
    config = TrainConfig(dataset="digits", n_way=4, k_shot=1, n_query=3, steps=6, epochs=3, max_shift=1, seed=2)
    backup = tmp_path / "backup"
    with pytest.raises(RuntimeError, match="died after the first epoch"):
        train(config, tmp_path / "run", [Crash()], verbose=0, backup_dir=backup)
    assert (backup / "chief" / "checkpoint").is_file() and not (tmp_path / "run" / "embedding.keras").exists()
    saved = sorted(p.name for p in (backup / "chief").iterdir())

    other = TrainConfig(**{**config.__dict__, "learning_rate": 0.01})
    with pytest.raises(ValueError, match="belongs to a run with another config"):
        train(other, tmp_path / "run", verbose=0, backup_dir=backup)
    assert sorted(p.name for p in (backup / "chief").iterdir()) == saved  # the refusal kept the backup

    resumed = Losses()
    train(config, tmp_path / "run", [resumed], verbose=0, backup_dir=backup)
    assert len(resumed.values) == 4  # epochs 1 and 2 only
    assert (tmp_path / "run" / "embedding.keras").is_file() and not backup.exists()


def test_bfloat16_training_learns_and_saves_a_float32_model(tmp_path):
    config = TrainConfig(dataset="digits", n_way=5, k_shot=1, n_query=5, steps=40, epochs=2, mixed_precision="bfloat16")
    net, train_set, test_set = train(config, tmp_path / "run", verbose=0)
    backbone, info = load_run(tmp_path / "run")
    assert info["config"]["mixed_precision"] == "bfloat16" and info["precision"] == "mixed_bfloat16"
    assert info["final_train_accuracy"] > 0.6  # 5-way: chance is 0.2
    assert backbone.compute_dtype == "float32" and all(v.dtype == tf.float32 for v in backbone.weights)
    assert all(layer.dtype_policy.name == "float32" for layer in backbone.layers)
    with pytest.raises(ValueError, match=r"mixed_precision must be one of \('auto', 'float32', 'float16', 'bfloat16', None\)\. "
                                         r"Received: 'fp8'"):
        TrainConfig(mixed_precision="fp8")


def test_auto_precision_is_bfloat16_only_on_amx_cpus_for_checked_learners_and_never_for_deterministic_runs(monkeypatch):
    import edgemeta.train.backend

    monkeypatch.setattr(edgemeta.train.backend, "amx_bfloat16_cpu", lambda: True)
    assert resolve_mixed_precision(TrainConfig()) == "bfloat16"
    assert resolve_mixed_precision(TrainConfig(deterministic=True)) is None  # the preset's float32 must not depend on the CPU
    assert resolve_mixed_precision(TrainConfig(mixed_precision="float32")) is None
    assert resolve_mixed_precision(TrainConfig(mixed_precision=None)) is None  # runs saved before "auto" existed
    assert resolve_mixed_precision(TrainConfig(learner="maml")) == "bfloat16"
    assert resolve_mixed_precision(TrainConfig(learner="relation")) is None  # its bfloat16 accuracy was not measured
    assert resolve_mixed_precision(TrainConfig(learner="relation", mixed_precision="bfloat16")) == "bfloat16"
    monkeypatch.setattr(edgemeta.train.backend, "amx_bfloat16_cpu", lambda: False)
    assert resolve_mixed_precision(TrainConfig()) is None
    assert resolve_mixed_precision(TrainConfig(mixed_precision="float16")) == "float16"

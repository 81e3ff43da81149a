"""Training inside a tf.distribute strategy: two CPU replicas, each taking whole episodes."""

from conftest import run_python

CODE = r"""
from edgemeta.backend import tf, keras
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
from edgemeta.training import TrainConfig, train
with strategy.scope():
    net, _, _ = train(TrainConfig(dataset="digits", n_way=5, k_shot=1, n_query=3, episodes_per_batch=2,
                                  steps=6, epochs=2), "RUN", verbose=0)
assert strategy.num_replicas_in_sync == 2
assert isinstance(net.optimizer.iterations, tf.distribute.DistributedValues) or net.distribute_strategy is strategy
print("replicas", strategy.num_replicas_in_sync, "strategy", type(net.distribute_strategy).__name__)
"""


def test_fit_under_mirrored_strategy(tmp_path):
    result = run_python(CODE.replace("RUN", str(tmp_path / "run")))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "replicas 2 strategy MirroredStrategy" in result.stdout
    assert (tmp_path / "run" / "embedding.keras").is_file()

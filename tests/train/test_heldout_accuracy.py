"""Meta-training transfers: a short ProtoNet run on the 5 training alphabets recognises characters of
the 3 held-out alphabets far better than the same network untrained, in Keras and through the int8
runtime on the same episodes."""

import pytest

from edgemeta.runtime.evaluation import evaluate_adapter
from edgemeta.train.episodes import EpisodeSampler
from edgemeta.train.evaluation import evaluate_keras
from edgemeta.train.learners import conv4


@pytest.mark.slow
def test_short_training_transfers_to_held_out_alphabets(omniglot_split_run):
    from edgemeta.runtime import FewShotAdapter

    net, test_set = omniglot_split_run["net"], omniglot_split_run["test"]
    sampler = EpisodeSampler(test_set, 5, 1, 5, seed=1)
    untrained = evaluate_keras(conv4(), sampler, episodes=200)
    trained = evaluate_keras(net.backbone, sampler, episodes=200)
    assert trained.accuracy > 0.80 and trained.accuracy > untrained.accuracy + 0.1, (trained, untrained)

    on_device = evaluate_adapter(lambda: FewShotAdapter.from_bundle(omniglot_split_run["int8"]), sampler, episodes=200)
    assert abs(on_device.accuracy - trained.accuracy) < 0.02, (on_device, trained)

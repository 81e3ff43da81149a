"""Meta-training transfers: a short ProtoNet run on the 5 training alphabets recognises characters of
the 3 held-out alphabets far better than the same network untrained, in Keras and through the int8
runtime on the same episodes."""

from edgemeta.data.episodes import EpisodeSampler
from edgemeta.evaluation import evaluate_adapter, evaluate_keras
from edgemeta.learners import conv4
from edgemeta.training import OMNIGLOT_TEST, OMNIGLOT_TRAIN, TrainConfig, train


def test_short_training_transfers_to_held_out_alphabets(omniglot, tmp_path):
    from converters import export_bundle
    from edgemeta.runtime import FewShotAdapter

    train_set, test_set = omniglot.subset(groups=OMNIGLOT_TRAIN), omniglot.subset(groups=OMNIGLOT_TEST)
    config = TrainConfig(dataset="omniglot", n_way=20, k_shot=1, n_query=5, steps=200, epochs=1, max_shift=1)
    net, _, _ = train(config, tmp_path / "run", verbose=0, train_set=train_set)
    sampler = EpisodeSampler(test_set, 5, 1, 5, seed=1)
    untrained = evaluate_keras(conv4(), sampler, episodes=200)
    trained = evaluate_keras(net.backbone, sampler, episodes=200)
    assert trained.accuracy > 0.80 and trained.accuracy > untrained.accuracy + 0.1, (trained, untrained)

    bundle = export_bundle(net.backbone, tmp_path / "bundle", train_set.preprocessing, "int8", train_set.images)
    on_device = evaluate_adapter(lambda: FewShotAdapter.from_bundle(bundle), sampler, episodes=200)
    assert abs(on_device.accuracy - trained.accuracy) < 0.02, (on_device, trained)

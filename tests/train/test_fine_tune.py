"""`TrainConfig.fine_tune` and `set_fine_tuned`: "all" trains every weight, "batchnorm" only BatchNorm's, and
"from:LAYER" that layer and the later ones, the earlier ones (BatchNorm statistics included) left exactly as they
were by a fit; names that are no choice or no layer are refused with what was received."""

import numpy as np
import pytest

from edgemeta.train.backend import keras
from edgemeta.train.episodes import EpisodeSampler
from edgemeta.train.learners import build_learner
from edgemeta.train.training import TrainConfig, build_for_training, set_fine_tuned
from tests.harness import tiny_backbone, toy_dataset

# tiny_backbone's layers: image, block0_{conv,bn,relu,pool}, block1_{conv,bn,relu,pool}, embedding.


def weights(backbone) -> dict[str, np.ndarray]:
    """Every weight of `backbone` (BatchNorm's moving statistics too) by its layer and name, e.g. 'block0_bn/gamma'."""
    return {f"{layer.name}/{w.name.split('/')[-1].split(':')[0]}": w.numpy()
            for layer in backbone.layers for w in layer.weights}


def seeded_backbone():
    """tiny_backbone with seeded initial weights: a random init can make the toy episodes so easy that the loss
    saturates and BatchNorm's gammas (at 1.0) move by less than float32 resolves."""
    keras.utils.set_random_seed(0)
    return tiny_backbone()


def fit_briefly(backbone, steps: int = 4) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The backbone's weights before and after a few ProtoNet steps on toy 3-way 1-shot episodes."""
    keras.utils.set_random_seed(0)
    learner = build_learner("protonet", backbone)
    learner.compile(learner.make_optimizer(1e-2), learner.episode_loss())
    before = weights(backbone)
    learner.fit(EpisodeSampler(toy_dataset(classes=6, per_class=4, size=16), 3, 1, 2, seed=0).episodes(),
                steps_per_epoch=steps, epochs=1, verbose=0)
    return before, weights(backbone)


def changed(before, after) -> set[str]:
    return {name for name in before if not np.array_equal(before[name], after[name])}


def test_all_trains_every_weight_even_after_a_freeze():
    backbone = seeded_backbone()
    set_fine_tuned(backbone, "batchnorm")
    set_fine_tuned(backbone, "all")
    assert all(layer.trainable for layer in backbone.layers)
    assert {w.name for w in backbone.trainable_weights} == {
        w.name for w in backbone.weights if "moving_" not in w.name}
    before, after = fit_briefly(backbone)
    assert {"block0_conv/kernel", "block0_bn/gamma", "block0_bn/beta",
            "block1_conv/kernel", "block1_bn/gamma", "block1_bn/beta"} <= changed(before, after)


def test_batchnorm_trains_only_batchnorm():
    backbone = seeded_backbone()
    set_fine_tuned(backbone, "batchnorm")
    assert [layer.name for layer in backbone.layers if layer.trainable] == ["block0_bn", "block1_bn"]
    assert sorted(w.name.split(":")[0] for w in backbone.trainable_weights) == [
        "block0_bn/beta", "block0_bn/gamma", "block1_bn/beta", "block1_bn/gamma"]
    before, after = fit_briefly(backbone)
    moved = changed(before, after)
    assert not {name for name in moved if "conv" in name}, f"conv weights changed: {moved}"
    # BatchNorm learns its scales and offsets and runs on batch statistics (its moving statistics follow them).
    for bn in ("block0_bn", "block1_bn"):
        assert {f"{bn}/gamma", f"{bn}/beta", f"{bn}/moving_mean", f"{bn}/moving_variance"} <= moved


def test_from_layer_freezes_every_earlier_layer_and_trains_the_rest():
    backbone = seeded_backbone()
    set_fine_tuned(backbone, "from:block1_conv")
    names = [layer.name for layer in backbone.layers]
    start = names.index("block1_conv")
    assert [layer.trainable for layer in backbone.layers] == [i >= start for i in range(len(names))]
    before, after = fit_briefly(backbone)
    moved = changed(before, after)
    # The frozen block is exactly as it was, its BatchNorm's moving statistics too (a frozen BN runs in inference mode).
    assert not {name for name in moved if name.startswith("block0")}, f"frozen weights changed: {moved}"
    assert {"block1_conv/kernel", "block1_bn/gamma", "block1_bn/beta", "block1_bn/moving_mean",
            "block1_bn/moving_variance"} <= moved


def test_an_unknown_layer_is_refused_with_its_name():
    backbone = seeded_backbone()
    with pytest.raises(ValueError, match=r"names no layer of backbone .*Received: 'block9_conv'"):
        set_fine_tuned(backbone, "from:block9_conv")
    assert all(layer.trainable for layer in backbone.layers)  # the refusal froze nothing


@pytest.mark.parametrize("choice", ["from:", "some", "BatchNorm", ""])
def test_train_config_refuses_what_is_no_fine_tune_choice(choice):
    with pytest.raises(ValueError, match=f"fine_tune must be 'all', 'batchnorm' or 'from:LAYER'.*Received: {choice!r}"):
        TrainConfig(fine_tune=choice)


def test_training_builds_its_learner_with_the_configured_choice():
    for choice in ("all", "batchnorm", "from:block1_conv"):
        assert TrainConfig(fine_tune=choice).fine_tune == choice
    learner = build_for_training(TrainConfig(dataset="digits", fine_tune="from:block1_conv", backbone_options={"filters": 4},
                                             mixed_precision="float32"), (16, 16, 1))
    trainable = {layer.name: layer.trainable for layer in learner.backbone.layers}
    assert not trainable["block0_conv"] and not trainable["block0_bn"]
    assert trainable["block1_conv"] and trainable["block3_bn"]

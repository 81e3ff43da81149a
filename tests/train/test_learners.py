"""Every registered learner: its loss falls on tiny episodes, it exports to a bundle, and the runtime
adapter learns new classes with it. Plus the registry's errors."""

import numpy as np
import pytest

from converters import export_bundle
from edgemeta.train.backend import keras
from edgemeta.train.episodes import EpisodeSampler
from edgemeta.train.evaluation import evaluate_adapter_on_episodes, evaluate_keras, evaluate_learner
from edgemeta.train.learners import LEARNERS, build_learner, learner_options
from edgemeta.runtime import Embedder, FewShotAdapter
from tests.train.learner_harness import tiny_backbone, toy_dataset

# Gradient learners take several inner steps per task; these options keep their test tiny.
FAST = {"reptile": {"inner_steps": 2, "eval_inner_steps": 2}, "anil": {"inner_steps": 2, "eval_inner_steps": 2}}
LR = {"reptile": 1.0, "relation": 1e-3}  # the relation MLP saturates (sigmoid -> 0) at 3e-3
STEPS = {"relation": 80}  # its MSE loss learns more slowly at that rate


# Proto-MAML heads (Reptile's is checked below: on these toy tasks its prototype head is right from step 0).
PROTO_HEAD = [("fomaml", {"head_init": "prototypes"})]


@pytest.mark.parametrize("name,options", [(n, FAST.get(n, {})) for n in sorted(LEARNERS)] + [("matching", {"fce": True})] + PROTO_HEAD)
def test_learner_loss_falls_then_exports_and_adapts(name, options, tmp_path):
    keras.utils.set_random_seed(0)
    data = toy_dataset(classes=14, size=16)
    train, held_out = data.subset(classes=list(range(8))), data.subset(classes=list(range(8, 14)))
    learner = build_learner(name, tiny_backbone(), **options)
    learner.compile(learner.make_optimizer(LR.get(name, 3e-3)), learner.episode_loss(), ["accuracy"])
    episodes = EpisodeSampler(train, 4, 1, 3, seed=0).episodes(episodes_per_batch=2)
    fixed = episodes.take(6).cache()
    before = learner.evaluate(fixed, verbose=0)[0]
    learner.fit(episodes, steps_per_epoch=STEPS.get(name, 40), epochs=1, verbose=0)
    after = learner.evaluate(fixed, verbose=0)[0]
    assert after < 0.7 * before, f"{name}: loss {before:.3f} -> {after:.3f}"
    learner.finish_training(train.images)

    # Export the embedding; the runtime adapter learns the 6 held-out classes from 1 shot each.
    bundle = export_bundle(learner.backbone, tmp_path / "bundle", train.preprocessing, "int8", train.images, learner.metric)
    embedder = Embedder.from_bundle(bundle)
    assert embedder.manifest.metric == learner.metric
    sampler = EpisodeSampler(held_out, 3, 1, 4, seed=1)
    episodes_idx = list(sampler.indices().take(20).as_numpy_iterator())
    raw = [np.round(255 * im[..., 0]).astype(np.uint8) for im in held_out.images]
    runtime = evaluate_adapter_on_episodes(lambda: FewShotAdapter(embedder), raw, episodes_idx, 3, 1, 4)
    keras_float = evaluate_keras(learner.backbone, sampler, 20, metric=learner.metric)
    # Its own adaptation (inner loop, attention, relation module) on new episodes of the training classes:
    # random toy templates share no structure, so held-out transfer is only judged through the embedding.
    own = evaluate_learner(learner, EpisodeSampler(train, 3, 1, 4, seed=1), 20)
    assert runtime.accuracy > 0.6 and own.accuracy > 0.6, f"{name}: runtime {runtime}, own {own}"
    assert abs(runtime.accuracy - keras_float.accuracy) < 0.1


def test_registry_names_every_family():
    assert {"protonet", "matching", "relation", "maml", "fomaml", "reptile", "anil", "metasgd"} <= set(LEARNERS)
    assert learner_options("fomaml")["first_order"] is True and learner_options("maml")["first_order"] is False
    assert build_learner("fomaml", tiny_backbone()).first_order


def test_registry_errors_say_what_was_received():
    with pytest.raises(ValueError, match="Unknown learner 'mamal'. Expected one of"):
        build_learner("mamal", tiny_backbone())
    with pytest.raises(ValueError, match=r"no option\(s\) \['inner_stepz'\].*Received"):
        build_learner("maml", tiny_backbone(), inner_stepz=3)
    with pytest.raises(ValueError, match="Received: 0"):
        build_learner("maml", tiny_backbone(), inner_steps=0)


def test_gradient_learners_refuse_backbones_they_cannot_run_functionally():
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(2, 3)(inputs)
    x = keras.layers.LayerNormalization()(x)
    backbone = keras.Model(inputs, keras.layers.Flatten()(x))
    with pytest.raises(ValueError, match="Received: layer .* of type LayerNormalization"):
        build_learner("maml", backbone)


def test_maml_serves_any_way_and_its_own_adaptation_uses_the_support():
    # One meta-learned head vector replicated per class: 3-way and 7-way episodes from one model, and
    # relabelling the support permutes the predictions (the inner loop, not the init, decides).
    keras.utils.set_random_seed(0)
    maml = build_learner("maml", tiny_backbone(), inner_lr=0.5, eval_inner_steps=3)
    data = toy_dataset(classes=7, size=16)
    for way in (3, 7):
        (support, labels, query), _ = next(iter(EpisodeSampler(data, way, 1, 2, seed=0).episodes(1)))
        logits = maml((support, labels, query), training=False).numpy()
        assert logits.shape == (1, 2 * way, way)
    perm = np.roll(np.arange(7), 1)
    swapped = maml((support, perm[labels.numpy()], query), training=False).numpy()
    np.testing.assert_allclose(swapped[..., perm], logits, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["maml", "anil", "reptile"])
def test_prototype_head_starts_as_the_nearest_prototype_classifier(name):
    # Proto-MAML: with a zero inner step size the adapted head *is* the initial one, whose logits
    # 2 c.x - |c|^2 differ from -|x - c|^2 by |x|^2, the same for every class of a query.
    keras.utils.set_random_seed(0)
    learner = build_learner(name, tiny_backbone(), head_init="prototypes", inner_lr=0.0)
    assert not any("head" in w.name for w in learner.trainable_weights)  # nothing to meta-learn in the head
    (support, labels, query), _ = next(iter(EpisodeSampler(toy_dataset(classes=5, size=16), 5, 2, 3, seed=0).episodes(1)))
    from edgemeta.train.learners.functional import forward
    body = learner.backbone.trainable_weights  # the inner loop's features use batch statistics
    s, q = forward(learner.backbone, body, support[0]).numpy(), forward(learner.backbone, body, query[0]).numpy()
    prototypes = np.stack([s[labels[0].numpy() == k].mean(0) for k in range(5)])
    expected = -((q[:, None] - prototypes[None]) ** 2).sum(-1)
    logits = learner((support, labels, query), training=False).numpy()[0]
    shift = (logits - expected)[:, :1]
    np.testing.assert_allclose(logits - shift, expected, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(shift[:, 0], (q ** 2).sum(-1), rtol=1e-4, atol=1e-3)


def test_head_init_errors_say_what_was_received():
    with pytest.raises(ValueError, match="head_init must be .* Received: 'proto'"):
        build_learner("anil", tiny_backbone(), head_init="proto")


def test_reptile_with_prototype_head_meta_learns_the_body_only():
    keras.utils.set_random_seed(0)
    reptile = build_learner("reptile", tiny_backbone(), head_init="prototypes", inner_steps=2, eval_inner_steps=2)
    reptile.compile(reptile.make_optimizer(1.0), reptile.episode_loss(), ["accuracy"])
    episodes = EpisodeSampler(toy_dataset(classes=8, size=16), 4, 1, 3, seed=0).episodes(episodes_per_batch=2)
    before = [w.numpy() for w in reptile.trainable_weights]
    reptile.fit(episodes, steps_per_epoch=2, epochs=1, verbose=0)
    # Tiny moves (the toy tasks are nearly solved by the prototypes), but every body weight moved.
    assert len(before) == len(reptile.backbone.trainable_weights)
    assert all(not np.array_equal(b, w.numpy()) for b, w in zip(before, reptile.backbone.trainable_weights))

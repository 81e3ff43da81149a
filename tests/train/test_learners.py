"""Every registered learner passes `run_learner_test` (its loss falls on tiny episodes, its weights
round-trip, it exports to int8 and the runtime adapter learns new classes with it, as Keras does); plus
the registry's errors and the gradient learners' heads."""

import numpy as np
import pytest

from edgemeta.train.backend import keras
from edgemeta.train.episodes import EpisodeSampler
from edgemeta.train.learners import LEARNERS, build_learner, learner_options
from tests.harness import run_learner_test, tiny_backbone, toy_dataset

SLOW = pytest.mark.slow  # the inner-loop learners trace second-order graphs: ~10 s each
FEW_INNER_STEPS = {"inner_steps": 2, "eval_inner_steps": 2}  # gradient learners: several inner steps per task

# One line per learner: (name, build_learner options, fit settings).
LEARNER_CASES = [
    pytest.param("anil", FEW_INNER_STEPS, {}, id="anil", marks=SLOW),
    pytest.param("fomaml", {}, {}, id="fomaml", marks=SLOW),
    pytest.param("maml", {}, {}, id="maml", marks=SLOW),
    pytest.param("matching", {}, {}, id="matching"),
    pytest.param("metasgd", {}, {}, id="metasgd", marks=SLOW),
    pytest.param("protonet", {}, {}, id="protonet"),
    pytest.param("protonet", {"metric": "cosine"}, {}, id="protonet-cosine"),
    # Trained on labelled batches of the 8 training classes, measured like the others on episodes.
    pytest.param("classifier", {"num_classes": 8}, {}, id="classifier"),
    # A student that keeps a (random, frozen) teacher's geometry at half its resolution, as a fast photo student does.
    pytest.param("distill", {"teacher": "half-resolution"}, {}, id="distill"),
    # The relation MLP saturates (sigmoid -> 0) at 3e-3; its MSE loss then learns more slowly.
    pytest.param("relation", {}, {"learning_rate": 1e-3, "steps": 80}, id="relation"),
    pytest.param("reptile", FEW_INNER_STEPS, {"learning_rate": 1.0}, id="reptile", marks=SLOW),  # SGD meta-step on the weights
    pytest.param("matching", {"fce": True}, {}, id="matching-fce", marks=SLOW),
    # Proto-MAML's head (Reptile's is checked below: on these toy tasks its prototype head is right from step 0).
    pytest.param("fomaml", {"head_init": "prototypes"}, {}, id="fomaml-prototype-head", marks=SLOW),
]


def test_every_registered_learner_has_a_case():
    assert {case.values[0] for case in LEARNER_CASES} == set(LEARNERS)


@pytest.mark.parametrize("name,options,fit", LEARNER_CASES)
def test_learner(name, options, fit):
    if options.get("teacher") == "half-resolution":  # built here, not at collection: a model per test run
        options = {**options, "teacher": tiny_backbone(size=32)}
    run_learner_test(name, options, **fit)


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
    reptile.fit(episodes, steps_per_epoch=4, epochs=1, verbose=0)
    # Tiny moves (the toy tasks are nearly solved by the prototypes; 2 steps can stay below float32's
    # resolution), but every body weight moved.
    assert len(before) == len(reptile.backbone.trainable_weights)
    assert all(not np.array_equal(b, w.numpy()) for b, w in zip(before, reptile.backbone.trainable_weights))

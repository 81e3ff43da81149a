import numpy as np
import pytest

from edgemeta.train.backend import keras, tf
from edgemeta.train.episodes import EpisodeSampler
from edgemeta.train.evaluation import evaluate_keras
from edgemeta.train.learners import ProtoNet, conv4
from edgemeta.train.learners.protonet import prototypes, squared_distances
from tests.harness import toy_dataset


def test_prototypes_and_distances_match_numpy():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(2, 6, 4)).astype(np.float32)
    labels = np.array([[0, 0, 1, 1, 2, 2], [2, 1, 0, 2, 1, 0]])
    queries = rng.normal(size=(2, 5, 4)).astype(np.float32)
    protos = prototypes(tf.constant(emb), tf.constant(labels), 3).numpy()
    for b in range(2):
        expected = np.stack([emb[b][labels[b] == c].mean(0) for c in range(3)])
        np.testing.assert_allclose(protos[b], expected, rtol=1e-5)
        d = ((queries[b][:, None] - expected[None]) ** 2).sum(-1)
        got = squared_distances(tf.constant(queries), tf.constant(protos)).numpy()[b]
        np.testing.assert_allclose(got, d, rtol=1e-4, atol=1e-5)


def test_loss_is_cross_entropy_over_negative_distances():
    # Identity "backbone" on 1x1 images: logits must equal -||q - p||^2 and the loss its softmax CE.
    backbone = keras.Sequential([keras.Input((1, 1, 2)), keras.layers.Flatten()])
    net = ProtoNet(backbone)
    support = np.array([[[[[0.0, 0.0]]], [[[4.0, 0.0]]]]], np.float32)  # (1, 2, 1, 1, 2)
    query = np.array([[[[[1.0, 0.0]]]]], np.float32)
    logits = net((support, np.array([[0, 1]]), query)).numpy()
    np.testing.assert_allclose(logits, [[[-1.0, -9.0]]])
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(np.array([[0]]), logits).numpy()
    assert loss == pytest.approx(np.log1p(np.exp(-8.0)), rel=1e-4)


def test_fit_on_toy_problem_learns():
    # Random templates share no structure, so this checks learning (and inference-mode BatchNorm),
    # not transfer; held-out transfer is tested on Omniglot in test_heldout_accuracy.py.
    keras.utils.set_random_seed(0)
    train = toy_dataset(classes=8)
    net = ProtoNet(conv4(filters=16))
    net.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True), ["accuracy"])
    history = net.fit(EpisodeSampler(train, 4, 1, 4, seed=0).episodes(episodes_per_batch=2), steps_per_epoch=30,
                      epochs=2, verbose=0)
    assert history.history["loss"][-1] < 0.1 * history.history["loss"][0]
    result = evaluate_keras(net.backbone, EpisodeSampler(train, 4, 1, 5, seed=1), episodes=100)
    assert result.accuracy > 0.95 and result.episodes == 100 and result.ci95 < 0.05


def test_conv4_embedding_size_and_input_check():
    assert conv4((28, 28, 1)).output_shape == (None, 64)
    with pytest.raises(ValueError, match="Received: \\(8, 8, 1\\)"):
        conv4((8, 8, 1))

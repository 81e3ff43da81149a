"""Second-order MAML's meta-gradient is the true gradient of the post-adaptation query loss (checked by
finite differences in float64), and FOMAML's differs from it by exactly the dropped term
-alpha * H_support . grad_query."""

import numpy as np
import pytest

from edgemeta.train.backend import keras, tf
from edgemeta.train.learners import LEARNERS
from edgemeta.train.learners.functional import forward

ALPHA = 0.3


def tiny_float64_learner(name, **options):
    keras.utils.set_random_seed(1)
    inputs = keras.Input((6, 6, 1), dtype="float64")
    x = keras.layers.Conv2D(2, 3, padding="same", dtype="float64")(inputs)
    x = keras.layers.BatchNormalization(dtype="float64")(x)
    x = keras.layers.ReLU(dtype="float64")(x)
    x = keras.layers.MaxPool2D(2, dtype="float64")(x)
    backbone = keras.Model(inputs, keras.layers.Flatten(dtype="float64")(x))
    build = LEARNERS[name]  # the class itself: keras' dtype is not a learner option
    learner = build.learner_class(backbone, inner_lr=ALPHA, dtype="float64", **{**build.defaults, **options})
    rng = np.random.default_rng(0)
    learner.head_kernel.assign(rng.normal(0, 0.5, learner.head_kernel.shape))
    learner.head_bias.assign(0.1)
    return learner


def episode():
    rng = np.random.default_rng(2)
    support = tf.constant(rng.random((1, 3, 6, 6, 1)))
    query = tf.constant(rng.random((1, 6, 6, 6, 1)))
    return (support, tf.constant([[0, 1, 2]]), query), tf.constant([[0, 0, 1, 1, 2, 2]])


def meta_loss(learner, x, y):
    logits = learner(x, training=True)
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))


def meta_gradient(learner, x, y):
    with tf.GradientTape() as tape:
        loss = meta_loss(learner, x, y)
    return [g.numpy() for g in tape.gradient(loss, learner.trainable_variables)]


def finite_difference(learner, x, y, direction, eps=1e-5):
    variables = learner.trainable_variables
    values = [v.numpy() for v in variables]

    def at(sign):
        for v, w, d in zip(variables, values, direction):
            v.assign(w + sign * eps * d)
        return float(meta_loss(learner, x, y))

    plus, minus = at(1.0), at(-1.0)
    for v, w in zip(variables, values):
        v.assign(w)
    return (plus - minus) / (2 * eps)


@pytest.mark.parametrize("name,options", [("maml", {"inner_steps": 1}), ("maml", {"inner_steps": 2}),
                                          ("metasgd", {}), ("anil", {"inner_steps": 2})])
def test_second_order_meta_gradient_matches_finite_differences(name, options):
    learner = tiny_float64_learner(name, **options)
    x, y = episode()
    rng = np.random.default_rng(3)
    for _ in range(3):  # three random directions
        direction = [rng.normal(size=v.shape) for v in learner.trainable_variables]
        analytic = sum(float((g * d).sum()) for g, d in zip(meta_gradient(learner, x, y), direction))
        assert analytic == pytest.approx(finite_difference(learner, x, y, direction), rel=1e-5, abs=1e-9)


def test_fomaml_differs_by_exactly_the_dropped_second_order_term():
    maml = tiny_float64_learner("maml", inner_steps=1)
    fomaml = tiny_float64_learner("fomaml", inner_steps=1)
    x, y = episode()
    (support, s_labels, query), q_labels = x, y
    g_second, g_first = meta_gradient(maml, x, y), meta_gradient(fomaml, x, y)
    variables = maml.trainable_variables  # [body..., head_kernel, head_bias]
    n_body = len(maml.backbone.trainable_weights)

    # Reference, written independently of the learner: fast weights p' = p - alpha grad L_s(p) over the
    # tiled parameters p = [body, W = tile(w), b = tile(b)], u = grad L_q(p'), H u by central differences
    # of grad L_s. FOMAML keeps d p'/d theta = tiling; MAML adds -alpha H u (then un-tiled by summing).
    def support_grad(p):
        with tf.GradientTape() as tape:
            tape.watch(p)
            logits = tf.matmul(forward(maml.backbone, p[:n_body], support[0]), p[-2]) + p[-1]
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(s_labels[0], logits))
        return tape.gradient(loss, p)

    p = [tf.identity(v) for v in variables[:n_body]]
    p += [tf.tile(maml.head_kernel[:, None], [1, 3]), tf.tile(maml.head_bias[None], [3])]
    fast = [a - ALPHA * g for a, g in zip(p, support_grad(p))]
    with tf.GradientTape() as tape:
        tape.watch(fast)
        logits = tf.matmul(forward(maml.backbone, fast[:n_body], query[0]), fast[-2]) + fast[-1]
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(q_labels[0], logits))
    u = tape.gradient(loss, fast)
    eps = 1e-5
    plus = support_grad([a + eps * d for a, d in zip(p, u)])
    minus = support_grad([a - eps * d for a, d in zip(p, u)])
    hu = [((a - b) / (2 * eps)).numpy() for a, b in zip(plus, minus)]
    untile = lambda t: list(t[:n_body]) + [t[-2].sum(1), t[-1].sum()]  # noqa: E731

    for got, expected in zip(g_first, untile([t.numpy() for t in u])):
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)
    dropped = [-ALPHA * h for h in untile(hu)]
    for second, first, term in zip(g_second, g_first, dropped):
        np.testing.assert_allclose(second - first, term, rtol=1e-5, atol=1e-9)
    # ... and that term is not negligible here, so the check has teeth.
    assert sum(float(np.abs(t).sum()) for t in dropped) > 1e-2 * sum(float(np.abs(g).sum()) for g in g_first)

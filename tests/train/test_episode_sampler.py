import numpy as np
import pytest

from edgemeta.data import load_digits
from edgemeta.data.episodes import EpisodeIndices
from edgemeta.train.episodes import EpisodeSampler, random_affine


@pytest.fixture(scope="module")
def digits():
    return load_digits()


def take(sampler, n):
    return list(sampler.indices().take(n).as_numpy_iterator())


@pytest.mark.parametrize("n_way, k_shot, n_query", [(5, 1, 5), (3, 4, 2), (10, 5, 15)])
def test_episode_invariants(digits, n_way, k_shot, n_query):
    for s_idx, s_lab, q_idx, q_lab in take(EpisodeSampler(digits, n_way, k_shot, n_query, seed=3), 20):
        assert s_idx.shape == (n_way * k_shot,) and q_idx.shape == (n_way * n_query,)
        # Class-major episode-local labels 0..N-1.
        np.testing.assert_array_equal(s_lab, np.repeat(np.arange(n_way), k_shot))
        np.testing.assert_array_equal(q_lab, np.repeat(np.arange(n_way), n_query))
        # No image is both support and query, nor used twice.
        assert len(set(s_idx) | set(q_idx)) == len(s_idx) + len(q_idx)
        # Each episode label maps to one dataset class, distinct across the episode.
        true_s, true_q = digits.labels[s_idx], digits.labels[q_idx]
        classes = [set(true_s[s_lab == c]) | set(true_q[q_lab == c]) for c in range(n_way)]
        assert all(len(c) == 1 for c in classes)
        assert len(set().union(*classes)) == n_way


def test_same_seed_same_episodes_other_seed_differs(digits):
    a = take(EpisodeSampler(digits, 5, 1, 5, seed=7), 5)
    b = take(EpisodeSampler(digits, 5, 1, 5, seed=7), 5)
    c = take(EpisodeSampler(digits, 5, 1, 5, seed=8), 5)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x[0], y[0])
    assert any(not np.array_equal(x[0], z[0]) for x, z in zip(a, c))


def test_episodes_cover_the_classes(digits):
    seen = set()
    for s_idx, *_ in take(EpisodeSampler(digits, 3, 1, 1, seed=0), 50):
        seen |= set(digits.labels[s_idx].tolist())
    assert seen == set(range(10))


def test_within_group_keeps_one_alphabet(omniglot):
    sampler = EpisodeSampler(omniglot, 20, 1, 2, within_group=True, seed=0)
    groups_seen = set()
    for s_idx, *_ in take(sampler, 30):
        groups = {omniglot.groups[c] for c in omniglot.labels[s_idx]}
        assert len(groups) == 1
        groups_seen |= groups
    assert len(groups_seen) > 1


def test_tf_data_yields_the_numpy_descriptions_episodes(digits):
    """One description: the Keras side (tf.data) and the TensorFlow-free bundle evaluation (numpy) draw
    the same episodes for one seed, so their accuracies compare on identical tasks."""
    sampler = EpisodeSampler(digits, 4, 2, 3, within_group=False, seed=11)
    described = EpisodeIndices(digits, 4, 2, 3, seed=11)
    for i, episode in enumerate(take(sampler, 8)):
        for x, y in zip(episode, described[i]):
            np.testing.assert_array_equal(x, y)
    (support, _, query), _ = next(iter(sampler.episodes(episodes_per_batch=1, start=5)))
    np.testing.assert_array_equal(support[0].numpy(), digits.images[described[5].support])
    np.testing.assert_array_equal(query[0].numpy(), digits.images[described[5].query])


def test_keras_ready_batches_have_images(digits):
    sampler = EpisodeSampler(digits, 5, 2, 3, seed=0)
    (support, s_lab, query), q_lab = next(iter(sampler.episodes(episodes_per_batch=4)))
    assert support.shape == (4, 10, 28, 28, 1) and query.shape == (4, 15, 28, 28, 1)
    assert s_lab.shape == (4, 10) and q_lab.shape == (4, 15)
    s_idx = next(iter(sampler.indices()))[0].numpy()
    np.testing.assert_allclose(support[0].numpy(), digits.images[s_idx])


def test_random_affine():
    from edgemeta.train.backend import tf

    image = np.zeros((1, 16, 16, 1), np.float32)
    image[0, 6:10, 6:10] = 1.0
    batch = tf.constant(np.repeat(image, 50, 0))
    seed = tf.constant([1, 2], tf.int64)
    np.testing.assert_array_equal(random_affine(batch, seed).numpy(), batch.numpy())  # no parameters: identity
    shifted = random_affine(batch, seed, max_shift=2).numpy()
    np.testing.assert_allclose(shifted.sum(axis=(1, 2, 3)), 16.0, rtol=1e-4)  # translation keeps the ink
    assert len({s.tobytes() for s in shifted}) > 40  # each image gets its own offset
    np.testing.assert_array_equal(random_affine(batch, seed, max_shift=2).numpy(), shifted)  # seeded
    turned = random_affine(batch, seed, max_rotation=30, max_scale=0.2, max_shear=0.2).numpy()
    assert not np.allclose(turned, batch.numpy()) and turned.min() >= 0 and turned.max() <= 1 + 1e-6


def test_errors_name_the_problem(digits):
    # The checks and their messages are EpisodeIndices' (tests/data/test_episodes.py); the sampler inherits them.
    with pytest.raises(ValueError, match="needs k_shot \\+ n_query = 300 images"):
        EpisodeSampler(digits, 5, 150, 150)
    with pytest.raises(ValueError, match="within_group needs a group with at least n_way=11"):
        EpisodeSampler(digits, 11, 1, 1, within_group=True)


def test_input_pipelines_assemble_disjoint_shares_of_each_step(digits):
    """Under tf.distribute each input pipeline builds only its replicas' slices of a step's episodes:
    2 pipelines x 2 replicas each, a global batch of 4, give exactly the one-device episodes in order."""
    import tensorflow as tf

    sampler = EpisodeSampler(digits, 3, 1, 2, seed=5)
    single = [x[0] for x, _ in sampler.episodes(4).take(3).as_numpy_iterator()]  # (4, 3, H, W, C) support per step
    shares = []
    for pipeline in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline, num_replicas_in_sync=4)
        batches = [x[0] for x, _ in sampler.episodes(4, input_context=context).take(6).as_numpy_iterator()]
        assert all(b.shape[0] == 1 for b in batches)  # per-replica batch: one whole episode
        shares.append(batches)
    for step in range(3):
        # pipeline p's replicas r = 0, 1 take episodes 4 * step + 2 * p + r
        rebuilt = np.concatenate([shares[p][2 * step + r] for p in range(2) for r in range(2)])
        np.testing.assert_array_equal(rebuilt, single[step])
    resumed = [x[0] for x, _ in sampler.episodes(4, start=4).take(2).as_numpy_iterator()]
    np.testing.assert_array_equal(resumed[0], single[1])  # `start` skips whole steps' episodes


def test_global_batch_must_split_into_whole_episodes(digits):
    import tensorflow as tf

    context = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0, num_replicas_in_sync=2)
    with pytest.raises(ValueError):
        EpisodeSampler(digits, 3, 1, 2).episodes(3, input_context=context)

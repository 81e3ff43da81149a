"""The numpy episode description: invariants, one generator per episode, and the old import path."""

from __future__ import annotations

import numpy as np
import pytest

from edgemeta.data.dataset import ImageClassDataset
from edgemeta.data.episodes import EpisodeIndices
from edgemeta.format.preprocessing import Preprocessing


def toy(classes: int = 12, per_class: int = 8, groups: int = 3) -> ImageClassDataset:
    """Tiny images: only labels and groups matter to episodes."""
    labels = np.repeat(np.arange(classes), per_class).astype(np.int32)
    return ImageClassDataset(np.zeros((len(labels), 2, 2, 1), np.float32), labels, tuple(f"c{c}" for c in range(classes)),
                             tuple(f"g{c % groups}" for c in range(classes)), Preprocessing(), "toy")


@pytest.mark.parametrize("n_way, k_shot, n_query", [(5, 1, 5), (3, 4, 2), (12, 2, 6)])
def test_episode_invariants(n_way, k_shot, n_query):
    data = toy()
    for support, s_lab, query, q_lab in EpisodeIndices(data, n_way, k_shot, n_query, seed=3).take(20):
        assert support.dtype == query.dtype == s_lab.dtype == q_lab.dtype == np.int32
        np.testing.assert_array_equal(s_lab, np.repeat(np.arange(n_way), k_shot))  # class-major, episode-local
        np.testing.assert_array_equal(q_lab, np.repeat(np.arange(n_way), n_query))
        assert len(set(support) | set(query)) == len(support) + len(query)  # no image twice
        true_s, true_q = data.labels[support], data.labels[query]
        classes = [set(true_s[s_lab == c]) | set(true_q[q_lab == c]) for c in range(n_way)]
        assert all(len(c) == 1 for c in classes) and len(set().union(*classes)) == n_way


def test_each_episode_depends_only_on_seed_and_index():
    a, b = EpisodeIndices(toy(), 4, 1, 3, seed=7), EpisodeIndices(toy(), 4, 1, 3, seed=7)
    late = list(b.take(5, start=10))
    for i in range(9, -1, -1):  # drawing other episodes first, in any order, changes nothing
        a[i]
    for i, episode in zip(range(10, 15), late):
        for x, y in zip(a[i], episode):
            np.testing.assert_array_equal(x, y)
    other = EpisodeIndices(toy(), 4, 1, 3, seed=8)
    assert any(not np.array_equal(a[i].support, other[i].support) for i in range(5))
    assert any(not np.array_equal(a[0].support, a[i].support) for i in range(1, 5))
    assert EpisodeIndices(toy(), 4, 1, 3, seed=-1)[0].support.shape == (4,)  # negative seeds are seeds too


def test_episodes_cover_classes_and_stay_in_one_group_when_asked():
    data = toy()
    seen = set()
    for support, *_ in EpisodeIndices(data, 3, 1, 1, seed=0).take(60):
        seen |= set(data.labels[support].tolist())
    assert seen == set(range(data.num_classes))
    groups_seen = set()
    for support, *_ in EpisodeIndices(data, 4, 1, 1, within_group=True, seed=0).take(30):
        groups = {data.groups[c] for c in data.labels[support]}
        assert len(groups) == 1
        groups_seen |= groups
    assert groups_seen == {"g0", "g1", "g2"}


def test_errors_name_the_problem():
    data = toy()
    with pytest.raises(ValueError, match="n_way must be at least 1. Received: 0"):
        EpisodeIndices(data, 0, 1, 1)
    with pytest.raises(ValueError, match="exceeds the dataset's 12 classes"):
        EpisodeIndices(data, 13, 1, 1)
    with pytest.raises(ValueError, match="needs k_shot \\+ n_query = 9 images. Received: class 'c0' has 8"):
        EpisodeIndices(data, 5, 4, 5)
    with pytest.raises(ValueError, match="within_group needs a group with at least n_way=5 classes. Received: groups "
                                         "with at most 4 classes"):
        EpisodeIndices(data, 5, 1, 1, within_group=True)
    with pytest.raises(IndexError, match="Received: -1"):
        EpisodeIndices(data, 5, 1, 1)[-1]


def test_old_path_of_the_tf_data_sampler_warns():
    import edgemeta.data.episodes as episodes

    with pytest.warns(DeprecationWarning, match="moved to edgemeta.train.episodes.EpisodeSampler"):
        from edgemeta.data.episodes import EpisodeSampler
    from edgemeta.train.episodes import EpisodeSampler as current

    assert EpisodeSampler is current
    with pytest.raises(AttributeError):
        episodes.NoSuchName  # noqa: B018


"""The numpy episode description: invariants, one generator per episode, open-set episodes with impostors
drawn the same way, and the old import path."""

from __future__ import annotations

import numpy as np
import pytest

from edgemeta.data.dataset import ImageClassDataset
from edgemeta.data.episodes import EpisodeIndices, OpenSetEpisodes
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


@pytest.mark.parametrize("within_group", [False, True])
def test_open_set_episodes_depend_only_on_seed_and_index(within_group):
    a, b = (OpenSetEpisodes(toy(), 3, 1, 2, within_group=within_group, seed=5, shots_needed=4) for _ in range(2))
    in_sequence = list(a.take(8))
    for i in (7, 3, 0):  # drawn alone, in another order, from a fresh sampler
        for x, y in zip(b[i], in_sequence[i]):
            np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(in_sequence[0].impostors, e.impostors) for e in in_sequence[1:])
    other = OpenSetEpisodes(toy(), 3, 1, 2, within_group=within_group, seed=6, shots_needed=4)
    assert any(not np.array_equal(other[i].shots, in_sequence[i].shots) for i in range(8))


@pytest.mark.parametrize("within_group", [False, True])
def test_impostors_never_come_from_an_enrolled_class(within_group):
    data = toy()
    n_way, n_query = 3, 2
    episodes = OpenSetEpisodes(data, n_way, 2, n_query, within_group=within_group, seed=1, shots_needed=5)
    assert episodes.shots == 5  # 8 images per class: up to 8 - n_query shots are available
    impostor_classes = set()
    for shots, genuine, impostors in episodes.take(120):
        assert shots.shape == (n_way, 5) and genuine.shape == (n_way * n_query,)
        assert shots.dtype == genuine.dtype == impostors.dtype == np.int32
        enrolled = data.labels[shots]
        assert all(len(set(row)) == 1 for row in enrolled) and len(set(enrolled[:, 0])) == n_way
        np.testing.assert_array_equal(data.labels[genuine], np.repeat(enrolled[:, 0], n_query))  # class-major
        assert len(set(shots.ravel()) | set(genuine) | set(impostors)) == shots.size + len(genuine) + len(impostors)
        assert len(impostors) == n_way * n_query
        assert not set(data.labels[impostors]) & set(enrolled[:, 0])
        if within_group:
            assert {data.groups[c] for c in data.labels[np.concatenate([shots.ravel(), impostors])]} == \
                {data.groups[enrolled[0, 0]]}
        impostor_classes |= set(data.labels[impostors].tolist())
    assert impostor_classes == set(range(data.num_classes))  # every class takes its turn as an impostor


def test_open_set_episodes_enroll_what_episode_indices_draw():
    """One description: without groups, an open-set episode's shots and genuine queries are the support
    and query of the same `EpisodeIndices` episode; the impostors are drawn after them."""
    plain, open_set = EpisodeIndices(toy(), 4, 2, 3, seed=9), OpenSetEpisodes(toy(), 4, 2, 3, seed=9)
    for i in range(10):
        np.testing.assert_array_equal(open_set[i].shots.ravel(), plain[i].support)
        np.testing.assert_array_equal(open_set[i].genuine, plain[i].query)


def test_open_set_episodes_leave_a_class_unenrolled_and_name_bad_arguments():
    data = toy()  # 12 classes, 4 per group
    with pytest.raises(ValueError, match=r"more than n_way=4 classes in any group \(largest: 4 classes\), so that some "
                                         r"are never enrolled. Received: "):
        OpenSetEpisodes(data, 4, 1, 1, within_group=True)
    with pytest.raises(ValueError, match=r"more than n_way=12 classes in the dataset \(12 classes\)"):
        OpenSetEpisodes(data, 12, 1, 1)
    assert "3 group(s) (g0, g1, g2), impostors from the enrolled classes' own group" in \
        OpenSetEpisodes(data, 3, 1, 1, within_group=True).description
    for name, args in (("n_way", (0, 1, 1)), ("k_shot", (3, True, 1)), ("n_query", (3, 1, 1.5))):
        with pytest.raises(ValueError, match=f"{name} must be a positive integer. Received: "):
            OpenSetEpisodes(data, *args)
    with pytest.raises(ValueError, match="needs k_shot \\+ n_query = 9 images. Received: class 'c0' has 8"):
        OpenSetEpisodes(data, 3, 4, 5)
    with pytest.raises(ValueError, match="shots_needed must be an integer of at least k_shot=2. Received: 1"):
        OpenSetEpisodes(data, 3, 2, 1, shots_needed=1)
    with pytest.raises(TypeError, match="Expected an edgemeta ImageClassDataset. Received: list"):
        OpenSetEpisodes([], 3, 1, 1)
    with pytest.raises(IndexError, match="Received: -1"):
        OpenSetEpisodes(data, 3, 1, 1)[-1]


def test_old_path_of_the_tf_data_sampler_warns():
    import edgemeta.data.episodes as episodes

    with pytest.warns(DeprecationWarning, match="moved to edgemeta.train.episodes.EpisodeSampler"):
        from edgemeta.data.episodes import EpisodeSampler
    from edgemeta.train.episodes import EpisodeSampler as current

    assert EpisodeSampler is current
    with pytest.raises(AttributeError):
        episodes.NoSuchName  # noqa: B018


"""`MemoizedEmbedder`: the runtime evaluation scores exactly what the plain embedder scores, while each image
object (by identity, not value) is embedded once however many episodes hold it; settings go to the embedder."""

import numpy as np
import pytest

from edgemeta.data.episodes import EpisodeIndices
from edgemeta.runtime import Embedder, FewShotAdapter
from edgemeta.runtime.evaluation import MemoizedEmbedder, evaluate_adapter_on_episodes
from tests.harness import tiny_backbone, toy_dataset

WAY, SHOT, QUERY = 3, 1, 3


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A tiny int8 bundle (an untrained 2-block Conv-4 on 16x16 grey images) and its toy dataset's raw images."""
    from converters import export_bundle
    from edgemeta.train.backend import keras

    keras.utils.set_random_seed(0)
    data = toy_dataset(classes=6, per_class=5, size=16)
    path = export_bundle(tiny_backbone(), tmp_path_factory.mktemp("memo") / "bundle", data.preprocessing, "int8",
                         data.images)
    raw = [np.round(255 * im[..., 0]).astype(np.uint8) for im in data.images]
    return path, data, raw


def counted(embedder: Embedder) -> list[int]:
    """Wraps `embedder.embed` so each call's number of images is recorded in the returned list."""
    calls, embed = [], embedder.embed

    def counting(images):
        out = embed(images)
        calls.append(len(out))
        return out

    embedder.embed = counting
    return calls


def test_evaluation_scores_what_the_plain_embedder_scores(bundle):
    path, data, raw = bundle
    episodes = list(EpisodeIndices(data, WAY, SHOT, QUERY, seed=1).take(12))
    plain_embedder, inner = Embedder.from_bundle(path), Embedder.from_bundle(path)
    plain_calls, inner_calls = counted(plain_embedder), counted(inner)
    memo = MemoizedEmbedder(inner)
    plain = evaluate_adapter_on_episodes(lambda: FewShotAdapter(plain_embedder), raw, episodes, WAY, SHOT, QUERY)
    memoized = evaluate_adapter_on_episodes(lambda: FewShotAdapter(memo), raw, episodes, WAY, SHOT, QUERY)
    assert memoized.per_episode == plain.per_episode and memoized.accuracy == plain.accuracy
    assert 0 < plain.accuracy  # a real score, not a degenerate one
    # Each image the episodes hold went through the model once, against once per appearance for the plain one.
    used = {int(i) for s_idx, _, q_idx, _ in episodes for i in (*s_idx, *q_idx)}
    assert sum(inner_calls) == len(used) < sum(plain_calls) == len(episodes) * WAY * (SHOT + QUERY)


def test_each_image_object_is_embedded_once(bundle):
    path, _, raw = bundle
    inner = Embedder.from_bundle(path)
    calls = counted(inner)
    memo = MemoizedEmbedder(inner)
    images = raw[:6]
    first = memo.embed(images)
    assert calls == [6] and first.shape == (6, inner.embedding_size) and first.dtype == np.float32
    np.testing.assert_array_equal(first, Embedder.from_bundle(path).embed(images))
    # Again, in another order and mixed with new images: only the new ones reach the model.
    again = memo.embed([raw[5], raw[0], raw[7], raw[3], raw[8]])
    assert calls == [6, 2]
    np.testing.assert_array_equal(again[[0, 1, 3]], first[[5, 0, 3]])
    # One image alone (not in a list) and a stacked (n, H, W, C) array are memoized too.
    np.testing.assert_array_equal(memo.embed(raw[2])[0], first[2])
    stack = np.stack(raw[:2])[..., None]
    memo.embed(stack)
    assert calls == [6, 2, 2]  # the stack's rows are new objects


def test_equal_but_distinct_arrays_are_each_embedded(bundle):
    path, _, raw = bundle
    inner = Embedder.from_bundle(path)
    calls = counted(inner)
    memo = MemoizedEmbedder(inner)
    a = memo.embed([raw[0]])
    copies = [raw[0].copy(), raw[0].copy()]
    b = memo.embed(copies)
    assert calls == [1, 2]  # keyed by identity: equal values are no reason to skip the model
    np.testing.assert_array_equal(b, np.repeat(a, 2, axis=0))
    memo.embed(copies)
    assert calls == [1, 2]  # and those objects are now known


def test_settings_reach_the_wrapped_embedder(bundle):
    path, _, raw = bundle
    inner = Embedder.from_bundle(path)
    memo = MemoizedEmbedder(inner)
    memo.max_batch = 3
    assert inner.max_batch == 3 and memo.max_batch == 3
    assert memo.embedding_size == inner.embedding_size and memo.manifest is inner.manifest
    FewShotAdapter(memo, max_batch=2)  # the adapter sets its max_batch on the embedder it is given
    assert inner.max_batch == 2
    assert memo.embed(raw[:5]).shape == (5, inner.embedding_size)

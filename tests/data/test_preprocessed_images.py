"""A dataset too large for memory (`from_raw` above `EAGER_LIMIT_BYTES`) reads as `PreprocessedImages`, which
gives, bit for bit, the images the eager array holds (by int, slice or index array), and stays lazy when selected."""

import numpy as np
import pytest

from edgemeta.data import dataset as dataset_module
from edgemeta.data.dataset import ImageClassDataset, PreprocessedImages, from_raw
from edgemeta.format.preprocessing import Preprocessing, normalization

# Raw 10x12 RGB photos resized to 16x16 and ImageNet-normalized: every step of `Preprocessing.one` is exercised.
PRE = Preprocessing(16, 16, 3, **dict(zip(("mean", "std"), normalization("imagenet"))))
CLASSES, PER_CLASS = 4, 3


def raw_images(n: int = CLASSES * PER_CLASS, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (10, 12, 3), dtype=np.uint8) for _ in range(n)]


def build(raw, monkeypatch=None) -> ImageClassDataset:
    labels = np.repeat(np.arange(CLASSES), PER_CLASS)
    names, groups = [f"c{c}" for c in range(CLASSES)], ["a", "a", "b", "b"]
    if monkeypatch is not None:  # one image's float32 bytes is already above the limit: lazy
        monkeypatch.setattr(dataset_module, "EAGER_LIMIT_BYTES", 100)
    return from_raw(raw, labels, names, groups, PRE, "photos")


@pytest.fixture
def pair(monkeypatch):
    """The same raw images as an eager dataset and as a lazy one."""
    raw = raw_images()
    eager = build(raw)
    lazy = build(raw, monkeypatch)
    return raw, eager, lazy


def test_from_raw_is_lazy_only_above_the_limit(pair):
    raw, eager, lazy = pair
    assert isinstance(eager.images, np.ndarray) and eager.images.dtype == np.float32
    assert isinstance(lazy.images, PreprocessedImages)
    assert lazy.images.shape == eager.images.shape == (len(raw), 16, 16, 3)
    assert len(lazy.images) == len(lazy) == len(raw)
    assert lazy.images.dtype == np.float32 and lazy.images.ndim == 4
    np.testing.assert_array_equal(lazy.labels, eager.labels)
    assert lazy.raw_shape == eager.raw_shape == (10, 12, 3)


def test_reads_are_bit_for_bit_the_runtime_preprocessing(pair):
    raw, eager, lazy = pair
    images = lazy.images
    for i in (0, 5, len(raw) - 1, np.int64(3), -1):
        one = images[i]
        assert one.shape == (16, 16, 3) and one.dtype == np.float32
        assert np.array_equal(one, PRE.one(raw[i])) and np.array_equal(one, eager.images[i])
    for index in (slice(None), slice(2, 9, 3), slice(None, None, -1), [7, 0, 7], np.array([11, 4, 2]),
                  np.arange(len(raw)) % 2 == 0):  # a boolean mask is an index array too
        batch = images[index]
        assert batch.dtype == np.float32
        assert np.array_equal(batch, eager.images[index]), f"index {index!r}"
    assert np.array_equal(np.asarray(images), eager.images)
    assert np.asarray(images, dtype=np.float64).dtype == np.float64


def test_a_two_dimensional_index_is_refused(pair):
    _, _, lazy = pair
    with pytest.raises(IndexError, match=r"Received: array\(\[\[0, 1\],"):
        lazy.images[np.array([[0, 1], [2, 3]])]


def test_take_selects_without_preprocessing(pair, monkeypatch):
    raw, eager, lazy = pair
    calls = []
    one = Preprocessing.one
    monkeypatch.setattr(Preprocessing, "one", lambda self, *a, **k: calls.append(1) or one(self, *a, **k))
    taken = lazy.images.take([9, 1, 4])
    assert isinstance(taken, PreprocessedImages) and not calls  # nothing preprocessed until read
    assert taken.shape == (3, 16, 16, 3) and len(taken) == 3
    assert all(a is b for a, b in zip(taken.raw, [raw[9], raw[1], raw[4]], strict=True))
    assert np.array_equal(taken[:], eager.images.take([9, 1, 4], axis=0))
    with pytest.raises(ValueError, match="Received: axis=1"):
        lazy.images.take([0], axis=1)


def test_subset_of_a_lazy_dataset_stays_lazy_and_matches_the_eager_subset(pair):
    _, eager, lazy = pair
    for kwargs in ({"classes": [3, 1]}, {"groups": ["b"]}):
        lazy_part, eager_part = lazy.subset(**kwargs), eager.subset(**kwargs)
        assert isinstance(lazy_part.images, PreprocessedImages), kwargs
        assert lazy_part.images.shape == eager_part.images.shape
        assert np.array_equal(np.asarray(lazy_part.images), eager_part.images), kwargs
        np.testing.assert_array_equal(lazy_part.labels, eager_part.labels)
        assert lazy_part.class_names == eager_part.class_names
        assert [id(r) for r in lazy_part.raw] == [id(r) for r in eager_part.raw]

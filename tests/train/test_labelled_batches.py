"""`labelled_batches`: batch b is b's alone (from (seed, b): the same on every run, on resume and split across
pipelines), of distinct images with the dataset's labels; lazy datasets give the eager batches; photo
augmentation changes a colour batch but keeps it finite and its shape."""

import numpy as np
import pytest

from edgemeta.data import dataset as dataset_module
from edgemeta.data.dataset import PreprocessedImages, from_raw
from edgemeta.format.preprocessing import Preprocessing, normalization
from edgemeta.train.backend import tf
from edgemeta.train.episodes import PhotoAugment, labelled_batches
from tests.harness import toy_dataset

BATCH = 8


def first(ds, count: int = 3) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(x.numpy(), y.numpy()) for x, y in ds.take(count)]


def rows_of(batch: np.ndarray, images: np.ndarray) -> np.ndarray:
    """The dataset index of each image of `batch` (each must be exactly one of `images`)."""
    matches = [np.flatnonzero((images == x).all(axis=(1, 2, 3))) for x in batch]
    assert all(len(m) == 1 for m in matches), "every batch image is exactly one dataset image"
    return np.array([m[0] for m in matches])


def photo_datasets(monkeypatch):
    """Colour photos (raw 10x12 RGB -> 16x16, ImageNet-normalized) as an eager and a lazy dataset."""
    rng = np.random.default_rng(0)
    raw = [rng.integers(0, 256, (10, 12, 3), dtype=np.uint8) for _ in range(20)]
    pre = Preprocessing(16, 16, 3, **dict(zip(("mean", "std"), normalization("imagenet"))))
    args = (raw, np.repeat(np.arange(4), 5), list("abcd"), ["g"] * 4, pre, "photos")
    eager = from_raw(*args)
    monkeypatch.setattr(dataset_module, "EAGER_LIMIT_BYTES", 0)
    lazy = from_raw(*args)
    assert isinstance(lazy.images, PreprocessedImages) and isinstance(eager.images, np.ndarray)
    return eager, lazy


def test_batch_b_depends_only_on_the_seed_and_b():
    data = toy_dataset(classes=6, per_class=5, size=8)
    one, two = first(labelled_batches(data, BATCH, seed=3)), first(labelled_batches(data, BATCH, seed=3))
    for (x1, y1), (x2, y2) in zip(one, two, strict=True):
        assert x1.shape == (BATCH, 8, 8, 1) and x1.dtype == np.float32 and y1.dtype == np.int32
        assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    resumed = first(labelled_batches(data, BATCH, seed=3, start=2), 1)[0]
    assert np.array_equal(resumed[0], one[2][0]) and np.array_equal(resumed[1], one[2][1])
    # Batches differ from one another, and with another seed.
    assert not np.array_equal(one[0][0], one[1][0])
    assert not np.array_equal(first(labelled_batches(data, BATCH, seed=4), 1)[0][0], one[0][0])


def test_batches_are_distinct_images_with_the_dataset_labels():
    data = toy_dataset(classes=6, per_class=5, size=8)
    seen = set()
    for x, y in first(labelled_batches(data, BATCH, seed=0), 5):
        rows = rows_of(x, data.images)
        assert len(set(rows)) == BATCH, f"an image repeated within a batch: {rows}"
        np.testing.assert_array_equal(y, data.labels[rows])
        seen |= set(rows)
    assert len(seen) > BATCH  # different batches draw different images
    # The whole dataset in one batch: each image once.
    x, y = first(labelled_batches(data, len(data), seed=1), 1)[0]
    assert sorted(rows_of(x, data.images)) == list(range(len(data)))


def test_a_batch_size_the_dataset_cannot_fill_is_refused():
    data = toy_dataset(classes=3, per_class=4, size=8)
    with pytest.raises(ValueError, match=r"batch_size must be in \[1, 12\].*Received: 13"):
        labelled_batches(data, 13)
    with pytest.raises(ValueError, match="Received: 0"):
        labelled_batches(data, 0)


def test_pipelines_of_a_distributed_run_split_the_one_device_batches():
    data = toy_dataset(classes=6, per_class=5, size=8)
    whole = first(labelled_batches(data, BATCH, seed=5), 2)
    parts = [first(labelled_batches(data, BATCH, seed=5, input_context=tf.distribute.InputContext(2, i, 2)), 2)
             for i in range(2)]
    for b, (x, y) in enumerate(whole):
        assert np.array_equal(np.concatenate([p[b][0] for p in parts]), x)
        assert np.array_equal(np.concatenate([p[b][1] for p in parts]), y)


def test_a_lazy_dataset_gives_the_eager_batches(monkeypatch):
    eager, lazy = photo_datasets(monkeypatch)
    for (xe, ye), (xl, yl) in zip(first(labelled_batches(eager, 6, seed=2)), first(labelled_batches(lazy, 6, seed=2)),
                                  strict=True):
        assert xl.shape == xe.shape == (6, 16, 16, 3)
        assert np.array_equal(xl, xe) and np.array_equal(yl, ye)


def test_photo_augmentation_changes_a_colour_batch_but_keeps_it_finite(monkeypatch):
    eager, lazy = photo_datasets(monkeypatch)
    plain = first(labelled_batches(eager, 6, seed=2), 1)[0]
    photo = first(labelled_batches(eager, 6, seed=2, photo=PhotoAugment()), 1)[0]
    assert photo[0].shape == plain[0].shape and np.isfinite(photo[0]).all()
    assert not np.allclose(photo[0], plain[0])
    np.testing.assert_array_equal(photo[1], plain[1])  # the same images, augmented: the same labels
    # Augmented images stay within the normalized range of pixels in [0, 1].
    mean, std = np.array(eager.preprocessing.mean), np.array(eager.preprocessing.std)
    assert (photo[0] >= -mean / std - 1e-5).all() and (photo[0] <= (1 - mean) / std + 1e-5).all()
    # Deterministic too, and the same from a lazy dataset.
    again = first(labelled_batches(lazy, 6, seed=2, photo=PhotoAugment()), 1)[0]
    np.testing.assert_allclose(again[0], photo[0], rtol=0, atol=1e-6)

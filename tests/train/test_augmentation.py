"""Photo augmentation of training episodes (crop, flip, colour jitter): drawn from (seed, episode) only, never
applied to evaluation episodes, on by default for photos and off for grayscale symbols (whose numbers stay)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from edgemeta.data.dataset import ImageClassDataset
from edgemeta.format.preprocessing import Preprocessing, normalization
from edgemeta.train.episodes import EpisodeSampler, PhotoAugment, photo_augment
from edgemeta.train.training import TrainConfig, augments_photos, resolve_data
from tests.harness import cli_in_process


def photos(classes: int = 6, per_class: int = 6, size: int = 24, pre: Preprocessing | None = None) -> ImageClassDataset:
    """Random smooth colour images (a coarse grid scaled up), preprocessed by `pre` (default 3 channels)."""
    pre = pre or Preprocessing(size, size, 3)
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, (classes * per_class, 4, 4, 3), dtype=np.uint8)
    raw = [np.asarray(Image.fromarray(c).resize((size, size), Image.Resampling.BILINEAR)) for c in coarse]
    images = pre(raw)
    return ImageClassDataset(images, np.repeat(np.arange(classes), per_class).astype(np.int32),
                             tuple(map(str, range(classes))), ("photos",) * classes, pre, "photos", raw)


def first_batches(dataset, count=3, seed=0, **kwargs):
    episodes = EpisodeSampler(dataset, 3, 2, 2, seed=seed).episodes(2, **kwargs)
    return [((s.numpy(), q.numpy()), labels.numpy()) for (s, _, q), labels in episodes.take(count)]


def test_augmented_episodes_depend_on_the_seed_and_the_episode_only():
    data = photos()
    a = first_batches(data, photo=PhotoAugment())
    b = first_batches(data, photo=PhotoAugment())
    for (x, _), (y, _) in zip(a, b):
        for u, v in zip(x, y):
            assert np.array_equal(u, v)  # bit for bit
    # Episode 3 of a pipeline started at episode 2 is the same augmented episode as in a pipeline from 0.
    later = EpisodeSampler(data, 3, 2, 2, seed=0).episodes(2, start=2, photo=PhotoAugment())
    (s, _, q), _ = next(iter(later))
    assert np.array_equal(s.numpy(), a[1][0][0]) and np.array_equal(q.numpy(), a[1][0][1])
    other = first_batches(data, seed=1, photo=PhotoAugment())
    assert not np.array_equal(a[0][0][0], other[0][0][0])


def test_evaluation_episodes_are_the_images_as_they_are():
    data = photos()
    plain = first_batches(data)
    augmented = first_batches(data, photo=PhotoAugment())
    sampler = EpisodeSampler(data, 3, 2, 2, seed=0)
    for i, ((s, q), _) in enumerate(plain):
        episodes = [sampler[2 * i + j] for j in range(2)]
        assert np.array_equal(s, np.stack([data.images[e.support] for e in episodes]))
        assert np.array_equal(q, np.stack([data.images[e.query] for e in episodes]))
        assert not np.array_equal(s, augmented[i][0][0])  # the same episodes, augmented differently
        # Labels and tasks are the augmentation's business no more than the images' order.
        np.testing.assert_array_equal(augmented[i][1], plain[i][1])
    augmented_support = augmented[0][0][0]
    assert 0.0 <= augmented_support.min() and augmented_support.max() <= 1.0


def test_each_transform_does_what_it_says():
    from edgemeta.train.backend import tf

    data = photos(classes=1, per_class=8)
    images = tf.constant(data.images)
    seed = tf.constant([3, 4], tf.int64)
    # No crop, no jitter, always flipped: the mirror image.
    flipped = photo_augment(images, seed, PhotoAugment(area=(1.0, 1.0), ratio=(1.0, 1.0), flip=1.0, brightness=0.0,
                                                       contrast=0.0, saturation=0.0)).numpy()
    np.testing.assert_allclose(flipped, data.images[:, :, ::-1], atol=1e-6)
    same = photo_augment(images, seed, PhotoAugment(area=(1.0, 1.0), ratio=(1.0, 1.0), flip=0.0, brightness=0.0,
                                                    contrast=0.0, saturation=0.0)).numpy()
    np.testing.assert_allclose(same, data.images, atol=1e-6)
    # Saturation alone changes the colours.
    jitter = PhotoAugment(area=(1.0, 1.0), ratio=(1.0, 1.0), flip=0.0, brightness=0.0, contrast=0.0, saturation=0.9)
    saturated = photo_augment(images, seed, jitter).numpy()
    assert not np.allclose(saturated, data.images, atol=1e-3)
    # A normalized dataset is jittered in [0, 1] and normalized again: the same pictures as unnormalized.
    mean, std = normalization("imagenet")
    normalized = photos(classes=1, per_class=8, pre=Preprocessing(24, 24, 3, mean=mean, std=std))
    a = photo_augment(tf.constant(normalized.images), seed, PhotoAugment(), normalized.preprocessing).numpy()
    b = photo_augment(images, seed, PhotoAugment()).numpy()
    np.testing.assert_allclose(a * np.float32(std) + np.float32(mean), b, atol=1e-5)
    with pytest.raises(ValueError, match=r"area must be \(low, high\) with 0 < low <= high <= 1. Received: \(0.0, 1.0\)"):
        PhotoAugment(area=(0.0, 1.0))
    with pytest.raises(ValueError, match=r"brightness must be in \[0, 1\). Received: 1.5"):
        PhotoAugment(brightness=1.5)


def test_photos_are_augmented_by_default_and_symbols_are_not():
    gray, colour = Preprocessing(28, 28, 1), Preprocessing(84, 84, 3)
    assert not augments_photos(TrainConfig(dataset="omniglot"), gray)
    assert not augments_photos(TrainConfig(dataset="digits"), gray)
    assert not augments_photos(TrainConfig(dataset="folder"), gray)  # a folder of scans or drawings
    assert augments_photos(TrainConfig(dataset="folder"), colour)
    assert augments_photos(TrainConfig(dataset="mini-imagenet"), colour)
    assert not augments_photos(TrainConfig(dataset="mini-imagenet", augment=False), colour)
    assert augments_photos(TrainConfig(dataset="omniglot", augment=True), gray)
    # What run.json records: the dataset's choices made explicit, what was asked for kept.
    data = photos(pre=Preprocessing(24, 24, 3, resize="shorter", resize_to=32, mean=(0.5,) * 3, std=(0.5,) * 3))
    resolved = resolve_data(TrainConfig(dataset="folder", data_dir="x"), data)
    assert (resolved.image_size, resolved.channels, resolved.resize, resolved.resize_to, resolved.normalize,
            resolved.augment) == (24, 3, "shorter", 32, "unit", True)
    kept = resolve_data(TrainConfig(dataset="folder", image_size=24, augment=False, normalize="unit"), data)
    assert (kept.augment, kept.normalize) == (False, "unit")
    assert resolve_data(TrainConfig(), photos(pre=Preprocessing(24, 24, 1))).normalize == "none"


def test_train_on_a_folder_of_photos_keeps_colour_says_so_and_augments(tmp_path, monkeypatch):
    seen = []  # the photo augmentation each training pipeline was built with
    episodes = EpisodeSampler.episodes
    monkeypatch.setattr(EpisodeSampler, "episodes", lambda self, *a, **k: seen.append(k.get("photo")) or episodes(self, *a, **k))
    data = photos(classes=3, per_class=4, size=40)
    for i, image in enumerate(data.raw):
        (tmp_path / "photos" / f"c{data.labels[i]}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(tmp_path / "photos" / f"c{data.labels[i]}" / f"{i}.png")
    result = cli_in_process("train", "--out", tmp_path / "run", "--dataset", "folder", "--data-dir", tmp_path / "photos",
                            "--way", "2", "--shot", "1", "--query", "1", "--steps", "2", "--epochs", "1", "--no-backup",
                            "--mixed-precision", "float32")
    assert result.returncode == 0, result.stderr
    assert ("Input: folder 'photos': 3 channels (colour, colour images found), 28x28 (the dataset's size), squash, "
            "no normalization; photo augmentation (crop, flip, colour jitter) (the dataset's default)") in result.stdout
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert {k: run["config"][k] for k in ("channels", "image_size", "resize", "normalize", "augment")} == {
        "channels": 3, "image_size": 28, "resize": "squash", "normalize": "none", "augment": True}
    assert run["preprocessing"]["channels"] == 3 and "mean" not in run["preprocessing"]
    assert seen == [PhotoAugment()]
    # The run's saved config rebuilds the same input (export and evaluate read it), and --no-augment is kept.
    from edgemeta.data.splits import DataSplit

    assert DataSplit.of(run["config"]).preprocessing() == Preprocessing(28, 28, 3)
    result = cli_in_process("train", "--out", tmp_path / "gray", "--dataset", "folder", "--data-dir", tmp_path / "photos",
                            "--way", "2", "--shot", "1", "--query", "1", "--steps", "1", "--epochs", "1", "--no-backup",
                            "--channels", "1", "--no-augment", "--resize", "shorter", "--normalize", "unit",
                            "--mixed-precision", "float32")
    assert result.returncode == 0, result.stderr
    assert ("Input: folder 'photos': 1 channel (grayscale, as asked), 28x28 (the dataset's size), shorter side to 28 then "
            "the centre 28x28, normalized unit (mean (0.5), std (0.5)); no photo augmentation") in result.stdout
    assert json.loads((tmp_path / "gray" / "run.json").read_text())["config"]["augment"] is False
    assert seen == [PhotoAugment(), None]

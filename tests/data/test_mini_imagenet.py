"""mini-ImageNet read in place from its zips: the standard split's classes (val held out, disjoint from train),
84x84 RGB as the runtime decodes the JPEGs, and the cache of decoded pixels keyed by the zip."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest

from edgemeta.data import mini_imagenet
from edgemeta.data.mini_imagenet import ENV_DIR, load_mini_imagenet, load_pixels
from edgemeta.data.splits import DataSplit, load_split
from edgemeta.format.images import decode_image
from edgemeta.format.preprocessing import Preprocessing

DATA_DIR = mini_imagenet.default_data_dir()


@pytest.fixture(scope="module")
def data_dir() -> Path:
    if not all((DATA_DIR / f"{split}.zip").is_file() for split in ("train", "val")):
        pytest.skip(f"mini-ImageNet's train.zip and val.zip not found in {DATA_DIR} (set {ENV_DIR})")
    return DATA_DIR


def test_the_default_directory_is_the_environment_variable_or_beside_the_repository(monkeypatch, tmp_path):
    monkeypatch.delenv(ENV_DIR, raising=False)
    repository = Path(mini_imagenet.__file__).resolve().parents[2]
    assert mini_imagenet.default_data_dir() == repository.parent / "shared" / "datasets" / "mini-imagenet"
    monkeypatch.setenv(ENV_DIR, str(tmp_path))
    assert mini_imagenet.default_data_dir() == tmp_path
    with pytest.raises(FileNotFoundError, match=rf"val.zip not found in '{tmp_path}': set \${ENV_DIR}"):
        load_pixels("val")
    with pytest.raises(ValueError, match="split must be one of train, val. Received: 'test'"):
        load_pixels("test")


def test_classes_counts_and_shapes_and_val_is_disjoint_from_train(data_dir, tmp_path):
    # Listing the zips is enough for the class sets; two classes of train are decoded for their shape.
    listed = {}
    for split in ("train", "val"):
        with zipfile.ZipFile(data_dir / f"{split}.zip") as z:
            listed[split] = mini_imagenet._members(z, split)
    assert len(listed["train"]) == 64 and {len(f) for f in listed["train"].values()} == {300}
    assert len(listed["val"]) == 16 and {len(f) for f in listed["val"].values()} == {100}
    assert set(listed["train"]).isdisjoint(listed["val"])
    pixels, labels, wnids = load_pixels("train", data_dir, classes=2, cache=False)
    assert pixels.shape == (600, 84, 84, 3) and pixels.dtype == np.uint8 and wnids == sorted(listed["train"])[:2]
    np.testing.assert_array_equal(np.bincount(labels), [300, 300])
    val = load_mini_imagenet("val", data_dir, cache_dir=tmp_path)
    assert (val.num_classes, len(val), val.images.shape[1:], val.raw_shape) == (16, 1600, (84, 84, 3), (84, 84, 3))
    assert list(val.class_names) == sorted(listed["val"]) and set(val.groups) == {"val"}
    assert val.images.dtype == np.float32 and 0.0 <= val.images.min() and val.images.max() <= 1.0
    # Each raw image is what the runtime decodes from the JPEG file, and is preprocessed as the runtime would.
    with zipfile.ZipFile(data_dir / "val.zip") as z:
        member = listed["val"][val.class_names[3]][7]
        data = z.read(member)
    index = int(np.flatnonzero(val.labels == 3)[7])
    np.testing.assert_array_equal(val.raw[index], decode_image(data))
    jpeg = tmp_path / "one.jpg"
    jpeg.write_bytes(data)
    assert np.array_equal(val.preprocessing(jpeg)[0], val.images[index])


def test_decoded_pixels_are_cached_by_the_zips_size_and_time(data_dir, tmp_path, monkeypatch):
    first = load_pixels("val", data_dir, cache_dir=tmp_path)
    cached = sorted(p.name for p in tmp_path.iterdir())
    stat = (data_dir / "val.zip").stat()
    assert cached == [f"val-v1-{stat.st_size}-{stat.st_mtime_ns}.json", f"val-v1-{stat.st_size}-{stat.st_mtime_ns}.npy"]

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although the cache holds the pixels")

    monkeypatch.setattr(mini_imagenet, "_decode", no_decoding)
    again = load_pixels("val", data_dir, cache_dir=tmp_path)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    # A subset from the cache: the classes asked for, relabelled in that order.
    pixels, labels, wnids = load_pixels("val", data_dir, classes=[first[2][5], first[2][1]], cache_dir=tmp_path)
    assert wnids == [first[2][5], first[2][1]] and np.bincount(labels).tolist() == [100, 100]
    np.testing.assert_array_equal(pixels[:100], first[0][first[1] == 5])
    monkeypatch.undo()
    # A damaged cache is a warning and the zip is decoded again.
    (tmp_path / cached[1]).write_bytes(b"not a numpy file")
    with pytest.warns(UserWarning, match="Ignoring the mini-ImageNet cache"):
        pixels, _, _ = load_pixels("val", data_dir, classes=1, cache_dir=tmp_path)
    np.testing.assert_array_equal(pixels, first[0][:100])


def test_the_split_trains_on_train_and_holds_out_val(data_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    split = DataSplit(dataset="mini-imagenet", data_dir=str(data_dir), image_size=32, normalize="imagenet")
    pre = split.preprocessing()
    assert pre.input_shape == (32, 32, 3) and pre.mean == (0.485, 0.456, 0.406) and pre.resize == "squash"
    assert DataSplit(dataset="mini-imagenet").preprocessing() == Preprocessing(84, 84, 3)  # the images as they are
    assert split.describe(pre) == ("mini-imagenet: 3 channels (colour, the dataset's), 32x32, squash, normalized imagenet "
                                   "(mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225))")
    train, val = load_split(split, load_train=False)  # evaluation loads the held-out classes alone
    assert train is None and val.num_classes == 16 and val.images.shape[1:] == (32, 32, 3)
    assert val.preprocessing == pre


def test_a_damaged_zip_names_what_it_holds(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("val/n0/a.png", b"")
    (tmp_path / "val.zip").write_bytes(buffer.getvalue())
    with pytest.raises(ValueError, match=r"to hold val/<wnid>/<file>.jpg. Received: no such member among 1"):
        load_pixels("val", tmp_path, cache=False)

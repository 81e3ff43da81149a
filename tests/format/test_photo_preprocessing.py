"""Photos in and out (issue 19): the manifest's resize and normalization, read and checked field by field; the
runtime applies bit for bit what training fed the model, for every image mode; old manifests read and preprocess
as before; a folder of photos keeps its colour."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from edgemeta.data.folder import detect_channels
from edgemeta.data.splits import DataSplit, load_split
from edgemeta.format.bundle import BundleError, Manifest, parse_manifest, read_manifest
from edgemeta.format.preprocessing import Preprocessing, normalization
from tests.harness import ROOT

PRESET = ROOT / "edgemeta" / "presets" / "omniglot"


def _reference_images() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(19)
    return {"gray": rng.integers(0, 256, (105, 97), dtype=np.uint8), "rgb": rng.integers(0, 256, (60, 90, 3), dtype=np.uint8)}


# sha256 (first 16 hex digits) of the float32 output, computed by the preprocessing before resize, mean and std
# existed (commit 02f2cca): the defaults must give these bits.
BEFORE = {
    ("preset", "gray"): "d50fe40dd6874168", ("preset", "rgb"): "d04a9447897f5841",
    ("gray28", "gray"): "9184cdda4f337993", ("gray28", "rgb"): "d35b5b89c27b71a3",
    ("rgb32", "gray"): "fc2f3c981a60958a", ("rgb32", "rgb"): "a74469d8a0c0f39f",
    ("rgb32x40bicubic", "gray"): "fd57d0042444bc43", ("rgb32x40bicubic", "rgb"): "38194cfbc412d8eb",
}


def test_old_manifests_read_and_preprocess_as_before():
    manifest = read_manifest(PRESET)
    stored = json.loads((PRESET / "manifest.json").read_text())
    pre = manifest.preprocessing
    assert (pre.resize, pre.resize_to, pre.mean, pre.std) == ("squash", None, None, None)
    # Written again, the manifest says the same (no new field, the same format version).
    assert pre.to_dict() == stored["preprocessing"]
    assert manifest.to_dict()["format_version"] == stored["format_version"] == 2
    configs = {"preset": pre, "gray28": Preprocessing(), "rgb32": Preprocessing(32, 32, 3),
               "rgb32x40bicubic": Preprocessing(32, 40, 3, resample="bicubic")}
    for (config, image), digest in BEFORE.items():
        out = configs[config](_reference_images()[image])
        assert hashlib.sha256(out.tobytes()).hexdigest()[:16] == digest, (config, image)


def _photos(root, size=(90, 60)) -> dict[str, object]:
    """One file per PIL mode a board may be handed (colour content, so conversions matter), in two classes."""
    rng = np.random.default_rng(0)
    w, h = size
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
    rgb[..., 1] = np.linspace(255, 0, h, dtype=np.uint8)[:, None]
    rgb[..., 2] = (np.outer(np.arange(h), np.arange(w)) * 255 // ((h - 1) * (w - 1))).astype(np.uint8)  # smooth: JPEG-friendly
    base = Image.fromarray(rgb)
    files = {
        "a/rgb.png": base,
        "a/gray.png": base.convert("L"),
        "a/palette.png": base.convert("P", palette=Image.Palette.ADAPTIVE),
        "a/rgba.png": Image.fromarray(np.dstack([rgb, rng.integers(0, 256, (h, w), dtype=np.uint8)]), "RGBA"),
        "b/cmyk.jpg": base.convert("CMYK"),
        "b/gray16.png": Image.fromarray(np.asarray(base.convert("L"), np.uint16) * 257),
        "b/rgb.jpg": base,
    }
    for name, im in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        im.save(root / name)
    # A phone's portrait photo: stored landscape, EXIF orientation 6 (rotate 90 degrees clockwise to show).
    exif = Image.Exif()
    exif[0x0112] = 6
    base.save(root / "b" / "exif.jpg", exif=exif)
    files["b/exif.jpg"] = base
    return files


@pytest.mark.parametrize("resize, resize_to, normalize", [("squash", None, "none"), ("shorter", 40, "imagenet"),
                                                         ("shorter", None, "efficientnet-lite"), ("squash", None, "unit")])
@pytest.mark.parametrize("channels", [3, 1])
def test_training_and_the_board_give_the_same_bits_for_every_image_mode(tmp_path, resize, resize_to, normalize, channels):
    if normalize == "imagenet" and channels == 1:
        normalize = "unit"  # ImageNet's statistics are per RGB channel
    files = _photos(tmp_path)
    split = DataSplit(dataset="folder", data_dir=str(tmp_path), image_size=32, channels=channels, resize=resize,
                      resize_to=resize_to, normalize=normalize)
    train, _ = load_split(split)  # what training feeds the model
    assert train.images.shape == (len(files), 32, 32, channels) and train.images.dtype == np.float32
    # The board: the manifest written, read back and checked, its preprocessing applied to each file.
    manifest = parse_manifest(json.dumps(Manifest(preprocessing=train.preprocessing, embedding_size=8).to_dict()))
    assert manifest.preprocessing == train.preprocessing
    for i, path in enumerate(train.raw):
        board = manifest.preprocessing(path)[0]
        assert board.dtype == np.float32 and np.array_equal(board, train.images[i]), path
    # The steps did what they say: EXIF rotated (the same picture as rotating it ourselves), gray replicated
    # to every channel, colour kept from palette, CMYK and RGBA files.
    names = [f"{p.parent.name}/{p.name}" for p in train.raw]
    out = dict(zip(names, train.images))
    rotated = manifest.preprocessing(files["b/exif.jpg"].transpose(Image.Transpose.ROTATE_270))[0]
    tolerance = 0.08 / min(train.preprocessing.std or (1.0,))  # a JPEG encoding apart, in normalized units
    np.testing.assert_allclose(out["b/exif.jpg"], rotated, atol=tolerance)
    assert not np.allclose(out["b/exif.jpg"], out["b/rgb.jpg"], atol=tolerance)
    if channels == 3:
        pre = train.preprocessing
        unit = {k: v * np.float32(pre.std) + np.float32(pre.mean) if pre.mean else v for k, v in out.items()}
        for gray in ("a/gray.png", "b/gray16.png"):
            np.testing.assert_allclose(unit[gray], unit[gray][..., :1].repeat(3, -1), atol=1e-6, err_msg=gray)
        for colour in ("a/palette.png", "b/cmyk.jpg", "a/rgba.png"):
            assert np.abs(unit[colour][..., 0] - unit[colour][..., 1]).max() > 0.2, colour


def test_shorter_side_resize_keeps_the_aspect_and_takes_the_centre():
    image = np.zeros((100, 300, 3), np.uint8)  # left third red, centre green, right blue
    image[:, :100, 0] = image[:, 100:200, 1] = image[:, 200:, 2] = 255
    crop = Preprocessing(32, 32, 3, resize="shorter")(image)[0]
    # The centre 100 x 100 scaled to 32 x 32; its outermost columns, as in scaling the whole image and then
    # cropping it, are filtered with a little of their neighbours.
    inner = crop[:, 1:-1]
    assert crop.shape == (32, 32, 3) and np.all(inner[..., 1] == 1.0) and np.all(inner[..., [0, 2]] == 0.0)
    assert crop[:, [0, -1], 1].min() > 0.85
    squash = Preprocessing(32, 32, 3)(image)[0]
    assert squash[:, 0, 0].min() == 1.0 and squash[:, -1, 2].min() == 1.0  # the whole width, squashed
    # resize_to 64 for 32: the central 50 x 50 pixels of the 100-pixel side.
    wide = Preprocessing(32, 32, 3, resize="shorter", resize_to=64)(image)[0]
    assert np.all(wide[..., 1] == 1.0)
    # An image at the input size with no margin to crop is used as it is (no resampling).
    small = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(Preprocessing(32, 32, 3, resize="shorter")(small)[0], small / np.float32(255))
    assert Preprocessing(28, 28, 3, resize="shorter").resize_to == 28  # None resolves to the input size


def test_normalization_is_per_channel_after_scaling_to_unit():
    pixels = np.array([[[0, 127, 255]]], np.uint8).repeat(4, 0).repeat(4, 1)
    unit = Preprocessing(4, 4, 3, mean=(0.5,) * 3, std=(0.5,) * 3)(pixels)[0, 0, 0]
    np.testing.assert_allclose(unit, [-1.0, 127 / 127.5 - 1, 1.0], rtol=1e-6)
    mean, std = normalization("efficientnet-lite")
    lite = Preprocessing(4, 4, 3, mean=mean, std=std)(pixels)[0, 0, 0]
    np.testing.assert_allclose(lite, [-127 / 128, 0.0, 1.0], atol=1e-6)
    mean, std = normalization("imagenet")
    x = Preprocessing(4, 4, 3, mean=mean, std=std)(pixels)[0]
    expected = (pixels / np.float32(255) - np.float32(mean)) / np.float32(std)
    assert np.array_equal(x, expected.astype(np.float32))  # float32 arithmetic, bit for bit
    with pytest.raises(ValueError, match="per RGB channel.*Received: channels=1"):
        normalization("imagenet", 1)
    assert normalization("none") == (None, None) and normalization("unit", 1) == ((0.5,), (0.5,))


@pytest.mark.parametrize("kwargs, message", [
    ({"resize": "crop"}, "resize must be one of squash, shorter. Received: 'crop'"),
    ({"resize_to": 40}, "resize_to applies to resize='shorter' only. Received: resize_to=40"),
    ({"resize": "shorter", "resize_to": 20}, "resize_to must be an integer >= max(height, width) = 28"),
    ({"mean": (0.5,)}, "mean and std are given together (or neither)"),
    ({"mean": (0.5, 0.5), "std": (0.5,)}, "mean must be 1 finite number (one per channel). Received: (0.5, 0.5)"),
    ({"mean": (0.5,), "std": (0.0,)}, "std must be 1 finite number > 0 (one per channel). Received: (0.0,)"),
    ({"mean": (float("nan"),), "std": (1.0,)}, "mean must be 1 finite number"),
])
def test_bad_preprocessing_says_what_was_received(kwargs, message):
    with pytest.raises(ValueError) as error:
        Preprocessing(28, 28, 1, **kwargs)
    assert message in str(error.value)


def _manifest(**preprocessing) -> dict:
    pre = Preprocessing(84, 84, 3, resize="shorter", resize_to=96, mean=(0.5,) * 3, std=(0.25,) * 3)
    d = Manifest(preprocessing=pre, embedding_size=8).to_dict()
    d["preprocessing"].update(preprocessing)
    return {k: v for k, v in d.items()}


def test_the_new_fields_round_trip_at_format_version_3():
    d = _manifest()
    assert d["format_version"] == 3
    assert {k: d["preprocessing"][k] for k in ("resize", "resize_to", "mean", "std")} == {
        "resize": "shorter", "resize_to": 96, "mean": [0.5] * 3, "std": [0.25] * 3}
    assert Manifest.from_dict(json.loads(json.dumps(d))).preprocessing == Preprocessing(
        84, 84, 3, resize="shorter", resize_to=96, mean=(0.5,) * 3, std=(0.25,) * 3)
    # Only a normalization: version 3 as well; squash and no normalization: the version of its other fields.
    assert Manifest(Preprocessing(28, 28, 3, mean=(0.5,) * 3, std=(0.5,) * 3), 8).to_dict()["format_version"] == 3
    assert Manifest(Preprocessing(28, 28, 3), 8).to_dict()["format_version"] == 1


DELETE = object()


@pytest.mark.parametrize("field, value, expected", [
    ("resize", "crop", "preprocessing.resize must be one of 'squash', 'shorter'. Received: 'crop' (str)"),
    ("resize", None, "preprocessing.resize must be one of 'squash', 'shorter'. Received: None"),
    ("resize_to", 50, "preprocessing.resize_to must be an integer in [84, 16384]. Received: 50 (int)"),
    ("resize_to", 96.0, "preprocessing.resize_to must be an integer in [84, 16384]. Received: 96.0 (float)"),
    ("resize_to", DELETE, "preprocessing.resize_to must be an integer in [84, 16384]. Received: nothing (the field is missing)"),
    ("mean", [0.5, 0.5], "preprocessing.mean must be a non-empty list of 3 numbers. Received: [0.5, 0.5] (list)"),
    ("mean", "0.5", "preprocessing.mean must be a non-empty list of 3 numbers. Received: '0.5' (str)"),
    ("mean", [0.5, 127.0, 0.5], "preprocessing.mean[1] must be a number in [-1, 1]. Received: 127.0 (float)"),
    ("mean", [0.5, True, 0.5], "preprocessing.mean[1] must be a number in [-1, 1]. Received: True (bool)"),
    ("std", [0.5, 0.0, 0.5], "preprocessing.std[1] must be a finite number >= 0.001. Received: 0.0 (float)"),
    ("std", DELETE, "preprocessing.std must be given with the other of mean and std (or neither)"),
    ("mean", DELETE, "preprocessing.mean must be given with the other of mean and std (or neither)"),
])
def test_a_bad_new_field_is_refused_by_name(field, value, expected):
    d = _manifest()
    if value is DELETE:
        del d["preprocessing"][field]
    else:
        d["preprocessing"][field] = value
    with pytest.raises(BundleError) as error:
        Manifest.from_dict(d, source="manifest.json")
    assert str(error.value) == f"manifest.json: {expected}" or expected in str(error.value), str(error.value)
    assert str(error.value).startswith("manifest.json: preprocessing.")


def test_a_squash_manifest_may_not_carry_a_crop_size_and_old_versions_may_not_carry_the_new_steps():
    d = _manifest(resize="squash")
    with pytest.raises(BundleError, match=r"preprocessing.resize_to must be null or absent with resize 'squash'. Received: 96"):
        Manifest.from_dict(d)
    d = _manifest()
    d["format_version"] = 2  # a version-2 reader would feed the model squashed, unnormalized images
    with pytest.raises(BundleError, match=r"preprocessing.resize must be absent in a format version 2 manifest .*version 3 "
                                          r"adds it\). Received: 'shorter'"):
        Manifest.from_dict(d)
    d = _manifest(resize="squash", resize_to=None)
    d["format_version"] = 1
    with pytest.raises(BundleError, match="preprocessing.mean must be absent in a format version 1 manifest"):
        Manifest.from_dict(d)


def test_a_folder_of_photos_keeps_its_colour_and_one_of_scans_stays_gray(tmp_path):
    _photos(tmp_path / "photos")
    for name in ("a", "b"):
        (tmp_path / "scans" / name).mkdir(parents=True)
        gray = np.random.default_rng(len(name)).integers(0, 256, (40, 50), dtype=np.uint8)
        Image.fromarray(gray).save(tmp_path / "scans" / name / "1.png")
        # A gray picture stored as an RGB JPEG: its chroma rounding is not colour.
        Image.fromarray(np.dstack([gray] * 3)).save(tmp_path / "scans" / name / "2.jpg", quality=75)
    assert detect_channels(tmp_path / "photos") == 3 and detect_channels(tmp_path / "scans") == 1
    photos = DataSplit(dataset="folder", data_dir=str(tmp_path / "photos"))
    assert photos.preprocessing().input_shape == (28, 28, 3)
    assert photos.describe() == ("folder 'photos': 3 channels (colour, colour images found), 28x28 (the dataset's size), "
                                 "squash, no normalization")
    scans = DataSplit(dataset="folder", data_dir=str(tmp_path / "scans"), image_size=64, resize="shorter", resize_to=72,
                      normalize="unit")
    assert scans.preprocessing().input_shape == (64, 64, 1)
    assert scans.describe() == ("folder 'scans': 1 channel (grayscale, grayscale images found), 64x64, shorter side to 72 "
                                "then the centre 64x64, normalized unit (mean (0.5), std (0.5))")
    asked = DataSplit(dataset="folder", data_dir=str(tmp_path / "photos"), channels=1)
    assert asked.preprocessing().channels == 1 and "(grayscale, as asked)" in asked.describe()
    with pytest.raises(ValueError, match="channels must be 1, 3 or None .*Received: 2"):
        DataSplit(dataset="folder", channels=2)
    with pytest.raises(ValueError, match="normalize must be one of none, imagenet, unit, efficientnet-lite or None. "
                                         "Received: 'z-score'"):
        DataSplit(normalize="z-score")

"""The manifest reader checks every field it uses (type, range, nesting, size) and names the bad one; valid
manifests, the shipped preset's among them, load exactly as before."""

from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgemeta.format.bundle import (
    MANIFEST_FILE,
    MAX_MANIFEST_BYTES,
    MODEL_FILE,
    BundleError,
    Manifest,
    parse_manifest,
    read_bundle,
    read_manifest,
    update_open_set,
    write_bundle,
)
from edgemeta.format.preprocessing import Preprocessing
from edgemeta.presets import preset_path
from tests.harness import blank_with_square

PRESET = Path(preset_path("omniglot"))
PRESET_MANIFEST = json.loads((PRESET / MANIFEST_FILE).read_text())


def bundle_with(tmp_path: Path, manifest: dict | str | bytes) -> Path:
    """A bundle directory holding `manifest` (the model file is a stand-in: read_manifest does not open it)."""
    directory = tmp_path / "bundle"
    directory.mkdir(exist_ok=True)
    (directory / MODEL_FILE).write_bytes(b"stand-in")
    data = manifest if isinstance(manifest, (str, bytes)) else json.dumps(manifest)
    (directory / MANIFEST_FILE).write_bytes(data.encode() if isinstance(data, str) else data)
    return directory


def changed(path: str, value) -> dict:
    """The preset's manifest with the field at dotted `path` set to `value` (deleted for DELETE)."""
    manifest = copy.deepcopy(PRESET_MANIFEST)
    *parents, last = path.split(".")
    node = manifest
    for key in parents:
        node = node[key]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return manifest


DELETE = object()


def test_valid_manifests_load_as_written(tmp_path):
    manifest = read_manifest(PRESET)
    assert manifest.to_dict() == PRESET_MANIFEST  # every field, the calibration's table included
    assert (manifest.input_patches, manifest.raw_shape, manifest.preprocessing.invert) == (3, (105, 105, 1), True)
    # The smallest manifest the project writes: no quantization, provenance or open_set, format version 1.
    written = write_bundle(tmp_path / "plain", b"model bytes", Manifest(Preprocessing(32, 32, 3, resample="box"), 16))
    _, plain = read_bundle(written)
    assert plain.to_dict() == json.loads((written / MANIFEST_FILE).read_text())
    assert (plain.open_set, plain.quantization, plain.format_version) == ({}, {}, 1)
    unwritten = Manifest(Preprocessing(), 16)  # model_sha256 "" until write_bundle hashes the model
    assert Manifest.from_dict(unwritten.to_dict()).to_dict() == unwritten.to_dict()
    # Fields older manifests lack still default as before.
    older = changed("open_set", DELETE)
    del older["input"]["raw_shape"]
    assert read_manifest(bundle_with(tmp_path, older)).open_set == {}


@pytest.mark.parametrize("path, value, expected", [
    # The review's cases: each was a traceback or a silently wrong reading.
    ("embedding_size", 1e400, "embedding_size must be an integer in [1, 65536]. Received: inf (float)"),
    ("open_set", [1], "open_set must be a JSON object. Received: [1] (list)"),
    ("quantization", "int8", "quantization must be a JSON object. Received: 'int8' (str)"),
    ("preprocessing.height", 28.0, "preprocessing.height must be an integer in [1, 16384]. Received: 28.0 (float)"),
    ("preprocessing.invert", "no", "preprocessing.invert must be true or false (a JSON boolean). Received: 'no' (str)"),
    ("open_set.threshold", float("nan"), "open_set.threshold must be a finite number >= 0. Received: nan (float)"),
    ("open_set.threshold", -1, "open_set.threshold must be a finite number >= 0. Received: -1 (int)"),
    # Types: an int is not a float or a bool, a bool is not a string.
    ("embedding_size", True, "embedding_size must be an integer in [1, 65536]. Received: True (bool)"),
    ("embedding_size", 10 ** 400, "embedding_size must be an integer in [1, 65536]. Received: 1000"),
    ("preprocessing.channels", True, "preprocessing.channels must be one of 1, 3. Received: True (bool)"),
    ("preprocessing.width", 0, "preprocessing.width must be an integer in [1, 16384]. Received: 0 (int)"),
    ("preprocessing.height", DELETE, "preprocessing.height must be an integer in [1, 16384]. "
                                     "Received: nothing (the field is missing)"),
    ("preprocessing.grayscale", False, "preprocessing.grayscale must be True (channels is 1). Received: False (bool)"),
    ("preprocessing", None, "preprocessing must be a JSON object. Received: None (NoneType)"),
    # Strings in their allowed sets.
    ("metric", "euclidean", "metric must be one of 'squared_euclidean', 'cosine'. Received: 'euclidean' (str)"),
    ("preprocessing.resample", "cubic", "preprocessing.resample must be one of 'bilinear'"),
    ("quantization.scheme", "int8", "quantization.scheme must be one of 'full_integer'"),
    ("quantization.input_dtype", "float64", "quantization.input_dtype must be one of 'float32'"),
    ("quantization.output", "int8", "quantization.output must be a JSON object. Received: 'int8' (str)"),
    ("quantization.output.scale", float("inf"), "quantization.output.scale must be a finite number >= 0. Received: inf (float)"),
    ("model_sha256", "abc", "model_sha256 must be a SHA-256 in lowercase hex (64 characters). Received: 'abc' (str)"),
    ("model_file", "../model.tflite", "model_file must be 'model.tflite'"),
    # Lists of the right lengths.
    ("input.raw_shape", [105, 105], "input.raw_shape must be [height, width, channels] of positive integers, "
                                    "channels 1 or 3 or 4. Received: [105, 105] (list)"),
    ("input.raw_shape", [105, 105.0, 1], "input.raw_shape must be [height, width, channels]"),
    ("input.raw_shape", [105, 105, 2], "input.raw_shape must be [height, width, channels]"),
    ("input.patches", 2, "input.patches must be an odd integer in [1, 15]. Received: 2 (int)"),
    ("input.patches", 3.0, "input.patches must be an integer in [1, 15]. Received: 3.0 (float)"),
    ("input.shape", [28, 28, 1], "input.shape must be [28, 28, 9] (from preprocessing and input.patches). Received: [28, 28, 1]"),
    ("input.dtype", "float32", "input.dtype must be 'int8' (quantization.input_dtype). Received: 'float32' (str)"),
    # The open-set calibration, as threshold_for reads it.
    ("open_set.threshold", "5.2", "open_set.threshold must be a finite number >= 0. Received: '5.2' (str)"),
    ("open_set.threshold", DELETE, "open_set.threshold must be a finite number >= 0. Received: nothing"),
    ("open_set.target_false_accept", 1.0, "open_set.target_false_accept must be a number in (0, 1). Received: 1.0 (float)"),
    ("open_set.n_way", 20.0, "open_set.n_way must be an integer >= 1. Received: 20.0 (float)"),
    ("open_set.within_group", "yes", "open_set.within_group must be true or false"),
    ("open_set.genuine_quantiles.false_reject", [], "open_set.genuine_quantiles.false_reject must be a non-empty list"),
    ("open_set.genuine_quantiles.false_reject", [0.1, 0.05], "open_set.genuine_quantiles.false_reject must be 2 to 64 "
                                                             "increasing rates"),
    ("open_set.genuine_quantiles.false_reject", [0.1, 1.5],
     "open_set.genuine_quantiles.false_reject[1] must be a number in (0, 1)"),
    ("open_set.genuine_quantiles.distances.5", [1.0, 2.0],
     "open_set.genuine_quantiles.distances.5 must be a non-empty list of 25 numbers"),
    ("open_set.genuine_quantiles.distances.5", [float(d) for d in range(25)],
     "open_set.genuine_quantiles.distances.5 must be distances that do not grow as the rate grows"),
    ("open_set.genuine_quantiles.distances.x", [1.0] * 25, "open_set.genuine_quantiles.distances must be keyed by shot counts"),
    ("open_set.target_false_reject", DELETE, "open_set.target_false_reject must be a number in (0, 1). Received: nothing"),
    ("open_set.probability.coefficients", [1.0, "2", 3.0], "open_set.probability.coefficients[1] must be a number"),
    # What a reader takes from provenance: the compiled model's file name (a path would load a model from elsewhere).
    ("provenance.edgetpu", {"file": "../../x.tflite", "sha256": "0" * 64}, "provenance.edgetpu.file must be the name of a file"),
    ("provenance.edgetpu", {"file": "/etc/passwd", "sha256": "0" * 64}, "provenance.edgetpu.file must be the name of a file"),
    ("provenance.train_config.image_size", 28.5,
     "provenance.train_config.image_size must be an integer in [1, 16384]. Received: 28.5"),
    ("provenance.train_config.test_groups", "Latin", "provenance.train_config.test_groups must be a list of strings or null"),
    ("format_version", True, "has bundle format version True; this edgemeta reads versions 1, 2"),
])
def test_a_bad_field_is_refused_by_name(tmp_path, path, value, expected):
    directory = bundle_with(tmp_path, changed(path, value))
    with pytest.raises(BundleError) as error:
        read_manifest(directory)
    message = str(error.value)
    assert message.startswith(f"{directory / MANIFEST_FILE}: ") or "format version" in message, message
    assert expected in message
    assert "\n" not in message
    assert isinstance(error.value, ValueError)  # so every CLI command prints it as one line, exit 2


def test_depth_size_and_encoding_are_bounded(tmp_path):
    # json's decoder recurses per level: ~1000 levels were a RecursionError from deep inside it.
    for depth in (980, 5000):
        with pytest.raises(BundleError, match=r"manifest.json: the manifest is nested deeper than 16 levels"):
            read_manifest(bundle_with(tmp_path, "[" * depth + "]" * depth))
    deep: dict = {}
    node = deep
    for _ in range(20):  # parses, but deeper than any manifest the project writes (5 levels)
        node["x"] = {}
        node = node["x"]
    with pytest.raises(BundleError, match="nested deeper than 16 levels. Received: a deeper document"):
        read_manifest(bundle_with(tmp_path, changed("provenance.notes", deep)))
    padded = json.dumps(PRESET_MANIFEST) + " " * MAX_MANIFEST_BYTES
    with pytest.raises(BundleError, match=rf"a manifest is at most 1024 KiB. Received: {len(padded)} bytes"):
        read_manifest(bundle_with(tmp_path, padded))
    for broken in (b"\xff\xfe{}", b"{'format': 1}", b"", "{\"embedding_size\": " + "9" * 5000 + "}"):
        with pytest.raises(BundleError, match="Malformed bundle manifest .*not valid JSON"):
            read_manifest(bundle_with(tmp_path, broken))
    with pytest.raises(BundleError, match="the manifest must be a JSON object. Received: \\[\\] \\(list\\)"):
        parse_manifest("[]", "m.json")


def test_a_calibration_readers_would_refuse_is_not_written(tmp_path):
    bundle = shutil.copytree(PRESET, tmp_path / "bundle")
    before = (bundle / MANIFEST_FILE).read_bytes()
    for bad in ({"threshold": math.nan}, {"threshold": -0.5}, {"n_way": 5}):
        with pytest.raises(BundleError, match="open_set to store: open_set.threshold must be a finite number >= 0"):
            update_open_set(bundle, bad)
    assert (bundle / MANIFEST_FILE).read_bytes() == before
    update_open_set(bundle, {"threshold": 1.5})
    assert read_bundle(bundle)[1].open_set == {"threshold": 1.5}


def test_thresholds_that_would_answer_unknown_for_everything_are_refused(tmp_path):
    from edgemeta.runtime import FewShotAdapter

    adapter = FewShotAdapter.from_preset("omniglot")
    adapter.enroll("square", [blank_with_square(lo=30, hi=70)])
    query = blank_with_square(lo=31, hi=71)
    assert adapter.classify(query)[0].label == "square"
    for bad in (math.nan, -1, -0.0 - 1e-9, math.inf, np.float32("nan"), "5", True):
        with pytest.raises(ValueError, match=r"unknown_threshold must be a distance >= 0 or None. Received: "):
            adapter.classify(query, unknown_threshold=bad)
        with pytest.raises(ValueError, match=r"unknown_threshold must be 'calibrated', a distance >= 0 or None"):
            FewShotAdapter(adapter.embedder, unknown_threshold=bad)
    assert adapter.classify(query, unknown_threshold=0.0)[0].unknown  # a real zero is a real threshold
    # A manifest whose calibrated threshold is NaN or negative is refused when the bundle is read.
    for bad in (math.nan, -1.0):
        bundle = shutil.copytree(PRESET, tmp_path / f"bundle{bad}")
        (bundle / MANIFEST_FILE).write_text(json.dumps(changed("open_set.threshold", bad)))
        with pytest.raises(BundleError, match=rf"open_set.threshold must be a finite number >= 0. Received: {bad}"):
            FewShotAdapter.from_bundle(bundle)

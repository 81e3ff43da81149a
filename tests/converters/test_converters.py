import json

import numpy as np
import pytest

from converters import export_bundle, to_tflite
from edgemeta.format.bundle import read_bundle
from edgemeta.runtime import Embedder


def test_float32_bundle_matches_keras(digits_run):
    x = digits_run["test"].images[:64]
    expected = digits_run["net"].backbone(x, training=False).numpy()
    got = Embedder.from_bundle(digits_run["bundles"]["float32"]).embed_preprocessed(x)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_int8_bundle_close_to_keras(digits_run):
    x = digits_run["test"].images[:200]
    expected = digits_run["net"].backbone(x, training=False).numpy()
    got = Embedder.from_bundle(digits_run["bundles"]["int8"]).embed_preprocessed(x)
    relative = np.linalg.norm(got - expected, axis=1) / np.linalg.norm(expected, axis=1)
    assert np.median(relative) < 0.03 and relative.max() < 0.15
    # What matters for few-shot: nearest neighbours among the images are (almost always) kept.
    def nearest(e):
        d = ((e[:, None] - e[None]) ** 2).sum(-1) + np.eye(len(e)) * 1e9
        return d.argmin(1)
    assert np.mean(nearest(got) == nearest(expected)) > 0.9


def test_int8_model_is_full_integer_builtins(digits_run):
    _, manifest = read_bundle(digits_run["bundles"]["int8"])
    q = manifest.quantization
    assert q["scheme"] == "full_integer" and q["input"]["dtype"] == "int8" and q["output"]["dtype"] == "int8"
    assert q["input"]["scale"] == pytest.approx(1 / 255, rel=1e-3)  # [0, 1] inputs
    from edgemeta.runtime.interpreter import interpreter_class

    interp = interpreter_class()[0](model_path=str(digits_run["bundles"]["int8"] / "model.tflite"))
    interp.allocate_tensors()
    float_tensors = [t["name"] for t in interp.get_tensor_details() if t["dtype"] == np.float32]
    assert not float_tensors, f"int8 model still has float tensors: {float_tensors[:5]}"


def test_manifest_records_what_the_runtime_needs(digits_run):
    manifest = json.loads((digits_run["bundles"]["int8"] / "manifest.json").read_text())
    # Version 2 for input.patches: the oldest that describes it (3 adds a resize and normalization it does not use).
    assert manifest["format"] == "edgemeta.bundle" and manifest["format_version"] == 2
    # Conv-4's first layer runs as a 1x1 convolution on each pixel's 3x3 patch (converters.tflite.patch_input).
    assert manifest["input"] == {"shape": [28, 28, 9], "dtype": "int8", "patches": 3} and manifest["embedding_size"] == 64
    assert manifest["preprocessing"]["invert"] is False and manifest["metric"] == "squared_euclidean"
    assert len(manifest["model_sha256"]) == 64 and manifest["provenance"]["learner"] == "protonet"


def test_tampered_or_unknown_bundles_are_refused(digits_run, tmp_path):
    import shutil

    bundle = tmp_path / "b"
    shutil.copytree(digits_run["bundles"]["int8"], bundle)
    with open(bundle / "model.tflite", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ValueError, match="does not match its manifest"):
        read_bundle(bundle)
    shutil.copy(digits_run["bundles"]["int8"] / "model.tflite", bundle / "model.tflite")
    manifest = json.loads((bundle / "manifest.json").read_text())
    (bundle / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(ValueError, match="bundle format version 99"):
        read_bundle(bundle)
    with pytest.raises(FileNotFoundError, match="Bundle directory not found"):
        read_bundle(tmp_path / "nothing")


def test_conversion_input_errors(digits_run):
    backbone = digits_run["net"].backbone
    with pytest.raises(ValueError, match="Received: 'int4'"):
        to_tflite(backbone, "int4")
    with pytest.raises(ValueError, match="needs representative_images"):
        to_tflite(backbone, "int8", None)
    with pytest.raises(ValueError, match="Received: \\(3, 8, 8, 1\\)"):
        to_tflite(backbone, "int8", np.zeros((3, 8, 8, 1), np.float32))
    from edgemeta.format.preprocessing import Preprocessing

    with pytest.raises(ValueError, match="does not match the preprocessing"):
        export_bundle(backbone, "unused", Preprocessing(32, 32, 1), "float32")


def test_patch_input_is_the_same_function_and_only_applies_to_grayscale_convolution_chains(digits_run):
    from converters.tflite import patch_input
    from edgemeta.format.patches import image_patches
    from edgemeta.train.learners import conv4

    backbone = digits_run["net"].backbone
    patched, k = patch_input(backbone)
    assert k == 3 and patched.input_shape == (None, 28, 28, 9)
    x = digits_run["test"].images[:32]
    np.testing.assert_allclose(patched(image_patches(x, 3)).numpy(), backbone(x).numpy(), rtol=1e-5, atol=1e-5)
    from edgemeta.train.backend import keras

    inputs = keras.Input((28, 28, 1))
    strided = keras.Model(inputs, keras.layers.Flatten()(keras.layers.Conv2D(4, 3, strides=2, padding="same")(inputs)))
    for other in (conv4((28, 28, 3), filters=8), strided):
        assert patch_input(other) == (other, 1)  # RGB (not measured) and a strided convolution stay as they are


def test_bundles_without_patches_still_load_and_agree(digits_run, tmp_path):
    """A format-1 int8 bundle (the model takes the image, as every bundle before patches did) runs as before,
    and agrees with the patched export of the same model; float32 exports take the image."""
    from edgemeta.format.bundle import Manifest, write_bundle

    backbone, train = digits_run["net"].backbone, digits_run["train"]
    _, manifest = read_bundle(digits_run["bundles"]["int8"])
    write_bundle(tmp_path / "v1", to_tflite(backbone, "int8", train.images),
                 Manifest(train.preprocessing, 64, quantization=manifest.quantization))
    assert json.loads((tmp_path / "v1" / "manifest.json").read_text())["format_version"] == 1
    x = digits_run["test"].images[:64]
    old, new = (Embedder.from_bundle(b).embed_preprocessed(x) for b in (tmp_path / "v1", digits_run["bundles"]["int8"]))
    cosine = (old * new).sum(1) / np.linalg.norm(old, axis=1) / np.linalg.norm(new, axis=1)
    assert cosine.min() > 0.999
    float_manifest = json.loads((digits_run["bundles"]["float32"] / "manifest.json").read_text())
    assert float_manifest["format_version"] == 1 and float_manifest["input"] == {"shape": [28, 28, 1], "dtype": "float32"}
    # The patched model under a manifest that does not say so is refused before it runs.
    patched = (digits_run["bundles"]["int8"] / "model.tflite").read_bytes()
    write_bundle(tmp_path / "lying", patched, Manifest(train.preprocessing, 64, quantization=manifest.quantization))
    from edgemeta.runtime.verify import ModelVerificationError

    with pytest.raises(ModelVerificationError,
                       match=r"the input must be \(batch, \*\(28, 28, 1\)\).*Received: input shape \[1, 28, 28, 9\]"):
        Embedder.from_bundle(tmp_path / "lying")
    with pytest.raises(ValueError, match="input_patches must be a positive odd integer. Received: 2"):
        Manifest(train.preprocessing, 64, input_patches=2)

"""The backbone registry: every backbone builds at small sizes, trains ProtoNet, exports to full int8 and adapts on the
runtime; clones and reloads keep it; ImageNet weights fail clearly offline; errors say what was received."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import numpy as np
import pytest

from edgemeta.train.backbones import (
    BACKBONES,
    backbone_options,
    build_backbone,
    check_learner,
    supported_learners,
)
from edgemeta.train.backbones.common import DOWNLOAD_TIMEOUT_SECONDS
from edgemeta.train.backend import keras
from tests.harness import cli_in_process

SIZE = 32  # MobileNetV3's smallest input; every backbone takes it
METRIC_LEARNERS = ["classifier", "distill", "matching", "protonet", "relation"]

# name, options, embedding size at 32x32 (the small variants tests and CPU budgets use)
SMALL = {
    "conv4": ({}, 64 * 2 * 2),
    "resnet12": ({"width": 0.25}, 160),
    "mobilenet_v3_small": ({"width": 0.25, "minimalistic": True}, 144),
    "mobilenet_v3_large": ({"width": 0.25, "minimalistic": True}, 240),
}


def toy_rgb_dataset(classes: int = 6, per_class: int = 8, size: int = SIZE, seed: int = 0):
    """`tests.harness.toy_dataset` in colour: each class a random pattern of coloured blobs, plus noise."""
    from edgemeta.data.dataset import ImageClassDataset
    from edgemeta.format.preprocessing import Preprocessing

    rng = np.random.default_rng(seed)
    templates = (rng.random((classes, size, size, 3)) > 0.8).astype(np.float32)
    noise = rng.normal(0, 0.2, (classes * per_class, size, size, 3))
    images = np.clip(np.repeat(templates, per_class, 0) + noise, 0, 1).astype(np.float32)
    return ImageClassDataset(images, np.repeat(np.arange(classes), per_class).astype(np.int32),
                             tuple(map(str, range(classes))), ("toy",) * classes,
                             Preprocessing(height=size, width=size, channels=3), "toy")


def test_registry_names_the_backbones_and_their_learners():
    assert {"conv4", "resnet12", "mobilenet_v3_small", "mobilenet_v3_large"} <= set(BACKBONES)
    assert set(SMALL) <= set(BACKBONES)
    assert supported_learners("conv4") == sorted(["anil", "fomaml", "maml", "metasgd", "reptile", *METRIC_LEARNERS])
    for name in ("resnet12", "mobilenet_v3_small", "mobilenet_v3_large"):
        assert supported_learners(name) == METRIC_LEARNERS
        check_learner(name, "protonet")
    assert backbone_options("resnet12")["activation"] == "leaky_relu"
    assert backbone_options("mobilenet_v3_small")["minimalistic"] is False


def test_registry_errors_say_what_was_received(tmp_path):
    with pytest.raises(ValueError, match="Unknown backbone 'resnet13'. Expected one of .*Received: 'resnet13'"):
        build_backbone("resnet13", (32, 32, 3))
    with pytest.raises(ValueError, match=r"no option\(s\) \['widht'\].*Expected some of .*Received: \{'widht': 0.5\}"):
        build_backbone("resnet12", (32, 32, 3), widht=0.5)
    with pytest.raises(ValueError, match="width must be a positive number.*Received: 0"):
        build_backbone("resnet12", (32, 32, 3), width=0)
    with pytest.raises(ValueError, match="activation must be one of .*Received: 'gelu'"):
        build_backbone("resnet12", (32, 32, 3), activation="gelu")
    with pytest.raises(ValueError, match=r"at least 16x16 pixels.*Received: input_shape=\(12, 12, 3\)"):
        build_backbone("resnet12", (12, 12, 3))
    with pytest.raises(ValueError, match=r"at least 32x32 pixels.*Received: input_shape=\(28, 28, 3\)"):
        build_backbone("mobilenet_v3_small", (28, 28, 3))
    with pytest.raises(ValueError, match=r"takes 1 or 3 channel\(s\). Received: input_shape=\(32, 32, 2\)"):
        build_backbone("mobilenet_v3_small", (32, 32, 2))
    with pytest.raises(ValueError, match="ImageNet weights .* for width 1.0 only. Received: width=0.75"):
        build_backbone("mobilenet_v3_small", (32, 32, 3), "imagenet", width=0.75, minimalistic=True)
    with pytest.raises(ValueError, match="input_range must be .*Received: 'unit'"):
        build_backbone("mobilenet_v3_small", (32, 32, 3), input_range="unit")
    with pytest.raises(ValueError, match="'conv4' has no ImageNet weights.*Received: weights='imagenet'"):
        build_backbone("conv4", (32, 32, 3), "imagenet")
    with pytest.raises(FileNotFoundError, match="No weights file at .*Received: weights="):
        build_backbone("resnet12", (32, 32, 3), str(tmp_path / "missing.weights.h5"))
    with pytest.raises(ValueError, match="weights must be .*Received: 3"):
        build_backbone("conv4", (32, 32, 3), 3)
    with pytest.raises(ValueError, match=r"Learner 'maml' adapts its backbone with fast weights.*trains with "
                                         r"\['classifier', 'distill', 'matching', 'protonet', 'relation'\].*"
                                         r"Received: backbone='resnet12', learner='maml'"):
        check_learner("resnet12", "maml")


@pytest.mark.parametrize("name", [pytest.param(name, marks=pytest.mark.slow if "mobilenet" in name else ()) for name in SMALL])
def test_builds_clones_and_reloads(name, tmp_path):
    from edgemeta.train.training import plain_backbone

    options, dim = SMALL[name]
    images = np.random.default_rng(0).random((4, SIZE, SIZE, 3)).astype(np.float32)
    for channels in (1, 3):
        model = build_backbone(name, (SIZE, SIZE, channels), **options)
        assert model.output_shape == (None, dim), (name, channels)
    # What training does with it: several replicas (synchronised BatchNorm), back to a plain float32 copy, saved, reloaded.
    synced = build_backbone(name, (SIZE, SIZE, 3), synchronized_bn=True, **options)
    assert all(layer.synchronized for layer in synced.layers if isinstance(layer, keras.layers.BatchNormalization))
    plain = plain_backbone(synced)
    assert not any(layer.synchronized for layer in plain.layers if isinstance(layer, keras.layers.BatchNormalization))
    np.testing.assert_allclose(plain(images).numpy(), synced(images).numpy(), rtol=1e-5, atol=1e-5)
    plain.save(tmp_path / "embedding.keras")
    reloaded = keras.models.load_model(tmp_path / "embedding.keras", compile=False)
    np.testing.assert_allclose(reloaded(images).numpy(), plain(images).numpy(), rtol=1e-5, atol=1e-5)
    # ... and the reloaded file is a `weights=PATH` for the same backbone.
    again = build_backbone(name, (SIZE, SIZE, 3), str(tmp_path / "embedding.keras"), **options)
    np.testing.assert_allclose(again(images).numpy(), plain(images).numpy(), rtol=1e-5, atol=1e-5)


def test_standard_sizes():
    # Conv-4 on mini-ImageNet's 84x84 RGB: 64 x 5 x 5; ResNet-12's 640; MobileNetV3's last 1x1 conv.
    assert build_backbone("conv4", (84, 84, 3)).output_shape == (None, 1600)
    resnet = build_backbone("resnet12", (84, 84, 3))
    assert resnet.output_shape == (None, 640)
    assert [resnet.get_layer(f"block{i}_2_conv").filters for i in range(4)] == [64, 160, 320, 640]
    assert [build_backbone("resnet12", (32, 32, 1), width=0.25).get_layer(f"block{i}_2_conv").filters
            for i in range(4)] == [16, 40, 80, 160]


def test_weights_file_must_fit(tmp_path):
    path = tmp_path / "resnet.weights.h5"
    build_backbone("resnet12", (SIZE, SIZE, 3), width=0.25).save_weights(path)
    with pytest.raises(ValueError, match="Could not load the weights file .* into backbone 'resnet12'.*Received: weights="):
        build_backbone("resnet12", (SIZE, SIZE, 3), str(path), width=0.5)


def _patch_download(monkeypatch, fake):
    """Replaces the download Keras' MobileNetV3 calls (its module's `data_utils.get_file`)."""
    module = sys.modules[keras.applications.MobileNetV3Small.__module__]
    monkeypatch.setattr(module.data_utils, "get_file", fake)


def test_imagenet_weights_offline_is_a_clear_error(monkeypatch):
    # What Keras raises offline (this machine cannot resolve storage.googleapis.com); and the download must not hang.
    timeouts = []

    def offline(fname, origin, **kwargs):
        timeouts.append(socket.getdefaulttimeout())
        raise Exception(f"URL fetch failure on {origin}: None -- [Errno -3] Temporary failure in name resolution")

    _patch_download(monkeypatch, offline)
    with pytest.raises(RuntimeError, match=r"Could not download the ImageNet weights of mobilenet_v3_small from "
                                           r"https://storage.googleapis.com/\S+_no_top_v2.h5 .*--weights PATH"
                                           r".*Received: weights='imagenet'"):
        build_backbone("mobilenet_v3_small", (SIZE, SIZE, 3), "imagenet")
    assert timeouts == [DOWNLOAD_TIMEOUT_SECONDS]
    assert socket.getdefaulttimeout() is None  # restored

    def stalled(fname, origin, **kwargs):
        raise TimeoutError("timed out")

    _patch_download(monkeypatch, stalled)
    with pytest.raises(RuntimeError, match="Could not download .*timed out"):
        build_backbone("mobilenet_v3_large", (SIZE, SIZE, 3), "imagenet", minimalistic=True)


def test_imagenet_weights_on_grey_images_are_the_rgb_model(monkeypatch, tmp_path):
    # A stand-in for Keras' file (random weights, the same layout); a grey model sums the first kernel over RGB, so it
    # equals the RGB model on the grey image replicated. A weights=PATH of an RGB file does the same.
    keras.utils.set_random_seed(0)
    rgb_source = build_backbone("mobilenet_v3_small", (SIZE, SIZE, 3), minimalistic=True)
    path = tmp_path / "weights_mobilenet_v3_small_minimalistic_224_1.0_float_no_top_v2.h5"
    rgb_source.save_weights(path)
    _patch_download(monkeypatch, lambda fname, origin, **kwargs: str(path))
    rgb = build_backbone("mobilenet_v3_small", (SIZE, SIZE, 3), "imagenet", minimalistic=True)
    grey = build_backbone("mobilenet_v3_small", (SIZE, SIZE, 1), "imagenet", minimalistic=True)
    from_path = build_backbone("mobilenet_v3_small", (SIZE, SIZE, 1), str(path), minimalistic=True)
    images = np.random.default_rng(1).random((3, SIZE, SIZE, 1)).astype(np.float32)
    expected = rgb(np.repeat(images, 3, -1), training=False).numpy()
    np.testing.assert_allclose(rgb_source(np.repeat(images, 3, -1), training=False).numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(grey(images, training=False).numpy(), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(from_path(images, training=False).numpy(), expected, rtol=1e-4, atol=1e-5)


def _train_export_adapt(name: str, options: dict, tmp_path: Path, steps: int = 6) -> dict:
    """ProtoNet on the colour toy set for a few steps, exported to a full-int8 bundle, adapted on the runtime: two
    classes enrolled from 4 images each, classified. Returns the figures and the Edge TPU report."""
    from converters import export_bundle
    from converters.edgetpu import check_edgetpu
    from edgemeta.runtime import FewShotAdapter
    from edgemeta.train.episodes import EpisodeSampler
    from edgemeta.train.learners import build_learner
    from edgemeta.train.learners.functional import calibrate_batchnorm

    keras.utils.set_random_seed(0)
    data = toy_rgb_dataset()
    learner = build_learner("protonet", build_backbone(name, data.preprocessing.input_shape, **options))
    learner.compile(learner.make_optimizer(1e-3), learner.episode_loss(), ["accuracy"])
    learner.fit(EpisodeSampler(data, 3, 2, 2, seed=0).episodes(1), steps_per_epoch=steps, epochs=1, verbose=0)
    # A few steps leave BatchNorm's moving statistics far from the data's (a real run takes thousands); the exported
    # inference-mode model uses them, so set them as a long run would have.
    calibrate_batchnorm(learner.backbone, data.images)
    bundle = export_bundle(learner.backbone, tmp_path / "bundle", data.preprocessing, "int8", data.images, learner.metric)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["quantization"]["scheme"] == "full_integer" and manifest["quantization"]["input_dtype"] == "int8"
    raw = np.round(255 * data.images).astype(np.uint8)
    adapter = FewShotAdapter.from_bundle(bundle)
    shots = {label: raw[data.labels == int(label)][:4] for label in ("0", "1")}
    for label, images in shots.items():
        adapter.enroll(label, images)
    predicted = {label: [p.nearest for p in adapter.classify(images, unknown_threshold=None)] for label, images in shots.items()}
    adapter.close()
    for label, names in predicted.items():
        assert names == [label] * len(names), (name, predicted)
    return {"report": check_edgetpu(bundle)}


PIPELINES = [
    pytest.param("conv4", {}, id="conv4"),
    pytest.param("resnet12", {"width": 0.25}, id="resnet12"),
    pytest.param("mobilenet_v3_small", {"width": 0.25, "minimalistic": True}, id="mobilenet_v3_small", marks=pytest.mark.slow),
    pytest.param("mobilenet_v3_large", {"width": 0.25, "minimalistic": True}, id="mobilenet_v3_large", marks=pytest.mark.slow),
    pytest.param("resnet12", {"width": 0.25, "activation": "leaky_relu_max"}, id="resnet12-edgetpu", marks=pytest.mark.slow),
    pytest.param("mobilenet_v3_small", {"width": 0.25}, id="mobilenet_v3_small-hard-swish", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("name,options", PIPELINES)
def test_protonet_trains_exports_to_int8_and_adapts_on_the_runtime(name, options, tmp_path):
    from converters.edgetpu import SUPPORTED_OPS

    report = _train_export_adapt(name, options, tmp_path)["report"]
    assert report.int8
    off_tpu = set(report.ops) - SUPPORTED_OPS
    if name == "resnet12" and options.get("activation", "leaky_relu") == "leaky_relu":
        assert off_tpu == {"LEAKY_RELU"}, report
    elif name.startswith("mobilenet") and not options.get("minimalistic"):
        assert off_tpu == {"HARD_SWISH"}, report
    else:
        assert off_tpu == set(), report


def test_cli_trains_resnet12_at_a_quarter_width(tmp_path):
    from edgemeta.train.training import load_run

    out = tmp_path / "run"
    result = cli_in_process("train", "--out", out, "--backbone", "resnet12", "--width", "0.25", "--steps", "3",
                            "--epochs", "1", "--way", "3", "--shot", "1", "--query", "2", "--no-backup")
    assert result.returncode == 0, result.stderr
    model, info = load_run(out)
    assert info["config"]["backbone"] == "resnet12" and info["config"]["backbone_options"] == {"width": 0.25}
    assert info["config"]["weights"] is None
    assert model.output_shape == (None, 160)


def test_cli_refuses_a_learner_the_backbone_cannot_train(tmp_path):
    result = cli_in_process("train", "--out", tmp_path / "run", "--backbone", "mobilenet_v3_small", "--learner", "maml",
                            "--steps", "1", "--no-backup")
    assert result.returncode == 2 and "Received: backbone='mobilenet_v3_small', learner='maml'" in result.stderr
    result = cli_in_process("train", "--out", tmp_path / "run", "--backbone", "resnet12", "--weights", "imagenet",
                            "--steps", "1", "--no-backup")
    assert result.returncode == 2 and "'resnet12' has no ImageNet weights" in result.stderr


def test_a_pretrained_backbone_takes_the_runs_normalization_as_it_is():
    """No input is scaled twice: MobileNetV3 fed `unit` ([-1, 1]) and EfficientNet-Lite fed its own
    (p - 127) / 128 skip their rescaling layers; a normalization a pretrained backbone never saw is refused."""
    from edgemeta.train.backbones import input_options

    assert input_options("mobilenet_v3_small", "unit", "imagenet") == {"input_range": (-1.0, 1.0)}
    assert input_options("efficientnet_lite0", "efficientnet-lite", "imagenet") == {"rescale": False}
    assert input_options("efficientnet_lite0", None, "imagenet") == {} and input_options("conv4", "imagenet") == {}
    assert input_options("mobilenet_v3_large", "imagenet", None) == {}  # from scratch: it learns on what it is fed
    with pytest.raises(ValueError, match="does not match efficientnet_lite0's pretrained input scaling"):
        input_options("efficientnet_lite0", "imagenet", "imagenet")

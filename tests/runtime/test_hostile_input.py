"""Hostile input to the runtime: corrupt or mismatched model files, bad images, concurrent callers."""

from __future__ import annotations

import ctypes
import dataclasses
import json
import struct
import threading
import time

import numpy as np
import pytest
from PIL import Image

from edgemeta.format.bundle import read_bundle, write_bundle
from edgemeta.runtime import Embedder
from edgemeta.runtime.verify import ModelVerificationError, verify_model
from edgemeta.runtime.verify.flatbuffer import Buffer
from edgemeta.runtime.verify.probe import _run_in_child
from tests.harness import ROOT, run_python

FUZZ = r"""
import json, sys
for name in ("tensorflow", "tf_keras", "keras"):
    sys.modules[name] = None  # the runtime's path only, as on a board
from benchmarks import fuzz_models
print("REPORT " + json.dumps(fuzz_models.run_campaign({bundle!r}, 500, seed=0)))
"""


@pytest.fixture(scope="module")
def int8_bundle(digits_run):
    return digits_run["bundles"]["int8"]


@pytest.fixture(scope="module")
def model_bytes(int8_bundle) -> bytes:
    return (int8_bundle / "model.tflite").read_bytes()


def hostile_bundle(directory, model: bytes, source, **preprocessing_changes):
    """A bundle whose manifest vouches for `model` (its sha256 rewritten), as an attacker would write it."""
    _, manifest = read_bundle(source)
    if preprocessing_changes:
        manifest.preprocessing = dataclasses.replace(manifest.preprocessing, **preprocessing_changes)
    return write_bundle(directory, model, manifest)


def test_500_fuzzed_models_never_crash_the_process(int8_bundle):
    # All 500 loads run in one child: a crash anywhere is that child dying, seen here.
    result = run_python(FUZZ.format(bundle=str(int8_bundle)), timeout=120, cwd=ROOT)  # cwd: `benchmarks` importable
    assert result.returncode == 0, f"the loading process died (exit {result.returncode}): {result.stderr[-3000:]}"
    report = json.loads(result.stdout.split("REPORT ", 1)[1])
    print("\nfuzz, manifest unchanged:", report["hash"]["outcomes"], f"{report['hash']['seconds']} s")
    print("fuzz, manifest rewritten to the fuzzed hash:", report["hard"]["outcomes"], f"{report['hard']['seconds']} s")
    print("by corruption kind:", json.dumps(report["hard"]["by_kind"]))
    assert report["cases"] == 500
    assert report["hash"]["outcomes"] == {"rejected: hash": 500}, report["hash"]["examples"]
    hard = report["hard"]["outcomes"]
    unclear = {k: report["hard"]["examples"][k] for k in hard if k.startswith(("UNCLEAR", "LOADED BUT"))}
    assert not unclear, unclear
    assert sum(hard.values()) == 500
    # Every layer had work to do: the file's structure, the probe (or manifest), and valid weight flips.
    assert hard.get("rejected: structure", 0) >= 100  # at least every truncation
    assert hard.get("rejected: probe", 0) + hard.get("rejected: manifest", 0) > 0
    assert hard.get("loaded, runs", 0) > 0
    assert report["hard"]["by_kind"]["truncate"] == {"rejected: structure": 100}


def test_truncated_model_is_refused_before_any_interpreter(int8_bundle, model_bytes, tmp_path):
    truncated = model_bytes[: len(model_bytes) // 2]
    with pytest.raises(ModelVerificationError, match="model.tflite is truncated or corrupt") as info:
        Embedder.from_bundle(hostile_bundle(tmp_path / "b", truncated, int8_bundle))
    assert f"of a {len(truncated)}-byte file" in str(info.value) and "Received" in str(info.value)
    assert info.value.stage == "structure"
    # With the manifest left alone, the sha256 check refuses it first.
    bundle = tmp_path / "c"
    write_bundle(bundle, model_bytes, read_bundle(int8_bundle)[1])
    (bundle / "model.tflite").write_bytes(truncated)
    with pytest.raises(ValueError, match="does not match its manifest"):
        Embedder.from_bundle(bundle)


def test_flipped_identifier_is_refused(int8_bundle, model_bytes, tmp_path):
    damaged = model_bytes[:4] + b"TFL4" + model_bytes[8:]
    with pytest.raises(ModelVerificationError) as info:
        Embedder.from_bundle(hostile_bundle(tmp_path / "b", damaged, int8_bundle))
    assert str(info.value) == (f"model.tflite is not a TFLite model: expected the file identifier b'TFL3' at "
                               f"bytes 4..8. Received: b'TFL4' in a {len(damaged)}-byte file")


def _crashing_variants(model: bytes) -> dict[str, bytes]:
    """Structurally valid edits that LiteRT 2.3 was measured to crash on (SIGSEGV in allocate/invoke)."""
    buf = Buffer(model)
    root = buf.table(buf.read("<I", 0, "root"), "model")
    codes = root.tables(1, "operator_codes")
    builtin = [code.scalar(3, "<i") or code.scalar(0, "<b") for code in codes]
    subgraph = root.tables(2, "subgraphs")[0]

    def patch(edits: list[tuple[int, str, int]]) -> bytes:
        data = bytearray(model)
        for position, fmt, value in edits:
            struct.pack_into(fmt, data, position, value)
        return bytes(data)

    variants = {}
    for i, operator in enumerate(subgraph.tables(3, "operators")):
        if builtin[operator.scalar(0, "<I")] in (3, 22):  # CONV_2D, RESHAPE: input 1 made "optional"
            start, _ = operator.vector(1, 4, "inputs")
            variants[f"operator {i} input 1 = -1"] = patch([(start + 4, "<i", -1)])
    for i, code in enumerate(codes):  # the operator code swapped to SPLIT (49)
        variants[f"operator code {i} -> SPLIT"] = patch([(code._field(3, 4), "<i", 49), (code._field(0, 1), "<b", 49)])
    output = subgraph.ints(2, "i", "outputs")[0]
    variants["output typed RESOURCE"] = patch([(subgraph.tables(0, "tensors")[output]._field(1, 1), "<b", 13)])
    return variants


def test_models_that_segfault_the_interpreter_are_refused_by_the_probe(int8_bundle, model_bytes, tmp_path):
    # Each edit leaves a structurally valid file; loaded in this process, most would kill it (SIGSEGV).
    # Which ones crash rather than raise depends on memory LiteRT reads out of bounds, so the test asks
    # that every one is refused and at least one was a real crash, caught in the forked probe.
    messages = {}
    for i, (name, data) in enumerate(_crashing_variants(model_bytes).items()):
        with pytest.raises(ModelVerificationError) as info:
            Embedder.from_bundle(hostile_bundle(tmp_path / str(i), data, int8_bundle))
        assert info.value.stage in ("probe", "manifest") and "Received" in str(info.value), (name, str(info.value))
        messages[name] = str(info.value)
    crashes = [name for name, m in messages.items() if "crashes the interpreter (SIGSEGV)" in m]
    print(f"\n{len(crashes)} of {len(messages)} variants crashed the probe:", crashes)
    assert crashes, messages
    # This process is still here and still loads good models; a hash that passed is not probed again.
    first = Embedder.from_bundle(int8_bundle)
    assert first.model_info.probe in ("passed", "passed (cached)")
    assert Embedder.from_bundle(int8_bundle).model_info.probe == "passed (cached)"
    assert first.embed(np.zeros((28, 28), np.uint8)).shape == (1, 64)


def test_model_whose_graph_computes_another_output_shape_is_refused(int8_bundle, model_bytes, tmp_path):
    # The file still declares output [1, 64], but the RESHAPE's constant target shape [-1, 64] becomes
    # [-1, 32]: each image yields two rows of 32. Only running the graph shows it.
    buf = Buffer(model_bytes)
    root = buf.table(buf.read("<I", 0, "root"), "model")
    builtin = [code.scalar(3, "<i") or code.scalar(0, "<b") for code in root.tables(1, "operator_codes")]
    subgraph = root.tables(2, "subgraphs")[0]
    reshape = next(op for op in subgraph.tables(3, "operators") if builtin[op.scalar(0, "<I")] == 22)
    target = subgraph.tables(0, "tensors")[reshape.ints(1, "i", "inputs")[1]]
    start, length = root.tables(4, "buffers")[target.scalar(2, "<I")].vector(0, 1, "data")
    assert struct.unpack_from("<2i", model_bytes, start) == (-1, 64)
    edited = bytearray(model_bytes)
    struct.pack_into("<i", edited, start + 4, 32)
    with pytest.raises(ModelVerificationError) as info:
        Embedder.from_bundle(hostile_bundle(tmp_path / "b", bytes(edited), int8_bundle))
    assert info.value.stage == "probe"
    assert str(info.value) == ("model.tflite computes the wrong output: for 1 image(s) the runtime needs shape [1, 64] "
                               "(embedding_size=64); the file declares [1, 64]. Received: output shape [2, 32] when run")


def _segfault(send):
    send("stage reading address 0")
    ctypes.string_at(0)  # a real SIGSEGV


def _hang(send):
    send("stage sleeping")
    time.sleep(60)


def test_probe_reports_a_crash_or_a_hang_of_the_child():
    status, message, _ = _run_in_child(_segfault, timeout=10)
    assert status == "crash" and "crashes the interpreter (SIGSEGV) in reading address 0" in message
    started = time.monotonic()
    status, message, _ = _run_in_child(_hang, timeout=0.5)
    assert status == "crash" and "hangs the interpreter: no result after 0.5 s in sleeping" in message
    assert time.monotonic() - started < 5  # killed, not waited for
    assert _run_in_child(lambda send: send("a note"), timeout=10) == ("ok", "", ["a note"])
    status, message, _ = _run_in_child(lambda send: int("x"), timeout=10)
    assert status == "error" and "ValueError: invalid literal" in message


@pytest.mark.parametrize(
    "changes, fragment",
    [
        ({"height": 32, "width": 32}, "Received: input shape [1, 28, 28, 9]"),
        ({"channels": 3}, "Received: input shape [1, 28, 28, 9]"),
    ],
)
def test_model_that_does_not_fit_its_manifest_is_refused(int8_bundle, model_bytes, tmp_path, changes, fragment):
    bundle = hostile_bundle(tmp_path / "b", model_bytes, int8_bundle, **changes)
    with pytest.raises(ModelVerificationError, match="does not match its manifest") as info:
        Embedder.from_bundle(bundle)
    assert fragment in str(info.value) and info.value.stage == "manifest"


def test_manifest_dtype_and_embedding_size_are_checked(int8_bundle, model_bytes):
    _, manifest = read_bundle(int8_bundle)
    with pytest.raises(ModelVerificationError, match=r"embedding_size=32 .* Received: output shape \[1, 64\]"):
        verify_model(model_bytes, dataclasses.replace(manifest, embedding_size=32), probe=False)
    float_manifest = dataclasses.replace(manifest, quantization={**manifest.quantization, "input_dtype": "float32"})
    with pytest.raises(ModelVerificationError, match="input dtype float32. Received: input dtype int8"):
        verify_model(model_bytes, float_manifest, probe=False)
    info = verify_model(model_bytes, manifest)
    assert info.inputs[0].shape == (1, 28, 28, 9) and info.outputs[0].dtype == "int8"  # 3x3 patches


@pytest.fixture(scope="module")
def embedder(int8_bundle):
    return Embedder.from_bundle(int8_bundle)


def _nan_images():
    images = np.full((2, 28, 28), 0.5, np.float32)
    images[0, 0, :2] = np.nan
    images[1, 5, 5] = np.inf
    return images


@pytest.mark.parametrize(
    "images, error, fragments",
    [
        (_nan_images(), ValueError, ["images contain NaN or Inf", "Received: 3 non-finite values"]),
        ([np.full((28, 28), -np.inf)], ValueError, ["NaN or Inf", "Received: 784 non-finite values"]),
        (np.zeros((0, 28, 28), np.uint8), ValueError, ["at least one image", "Received: an empty array"]),
        ([], ValueError, ["at least one image", "Received: an empty sequence"]),
        (np.zeros((1025, 28, 28), np.uint8), ValueError, ["at most 1024", "Received: 1025 images"]),
        ((np.zeros((28, 28), np.uint8) for _ in range(2000)), ValueError, ["at most 1024", "Received: more than 1024"]),
        (np.zeros((28, 28), np.complex64), TypeError, ["uint8 (0..255), bool, or float", "Received: dtype complex64"]),
        (np.zeros((28, 28), object), TypeError, ["Received: dtype object"]),
        (np.array(["a", "b"]), ValueError, ["Received: an array of shape (2,) (dtype <U1)"]),
        ([[[0, 1], [2]]], ValueError, ["not a rectangular array", "Received: a list"]),
        (np.zeros((2, 28, 28, 2), np.uint8), ValueError, ["C in 1, 3, 4", "Received: shape (28, 28, 2)"]),
        (b"\x89PNG", TypeError, ["Received: bytes"]),
    ],
)
def test_bad_images_raise_saying_what_was_received(embedder, images, error, fragments):
    before = embedder.embed(np.zeros((28, 28), np.uint8))
    with pytest.raises(error) as info:
        embedder.embed(images)
    for fragment in fragments:
        assert fragment in str(info.value)
    np.testing.assert_array_equal(embedder.embed(np.zeros((28, 28), np.uint8)), before)  # no state changed


def test_batch_limit_and_preprocessed_input_checks(embedder, tmp_path):
    images = np.zeros((3, 28, 28), np.uint8)
    with pytest.raises(ValueError, match=r"at most 2 .* Received: 3 images"):
        embedder.preprocessing(images, max_images=2)
    assert embedder.preprocessing(images, max_images=3).shape == (3, 28, 28, 1)
    not_an_image = tmp_path / "x.png"
    not_an_image.write_bytes(b"not a png")
    with pytest.raises(ValueError, match="Cannot read an image from the file .* Received: '.*x.png'"):
        embedder.embed(not_an_image)
    x = np.zeros((2, 28, 28, 1), np.float32)
    x[1, 3, 3, 0] = np.nan
    with pytest.raises(ValueError, match="Received: 1 non-finite values"):
        embedder.embed_preprocessed(x)
    with pytest.raises(ValueError, match=r"at least one preprocessed image. Received: shape \(0, 28, 28, 1\)"):
        embedder.embed_preprocessed(np.zeros((0, 28, 28, 1), np.float32))
    with pytest.raises(TypeError, match="Received: dtype complex64"):
        embedder.embed_preprocessed(np.zeros((1, 28, 28, 1), np.complex64))
    # A bare PIL image is one image, like a path or an array.
    pil = Image.fromarray(np.full((40, 40), 255, np.uint8))
    np.testing.assert_allclose(embedder.embed(pil), embedder.embed(np.full((40, 40), 255, np.uint8)))


def test_threads_sharing_an_embedder_get_serial_results(embedder):
    rng = np.random.default_rng(0)
    sizes = [1, 2, 5, 9, 17, 40, 64, 100]  # different sizes force a resize + allocate between calls
    batches = [rng.random((n, 28, 28, 1), dtype=np.float32) for n in sizes]
    expected = [embedder.embed_preprocessed(b) for b in batches]
    results: dict[int, list[np.ndarray]] = {i: [] for i in range(len(batches))}
    errors: list[BaseException] = []
    start = threading.Barrier(len(batches))

    def work(i: int) -> None:
        try:
            start.wait()
            for _ in range(6):
                results[i].append(embedder.embed_preprocessed(batches[i]))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    for i, want in enumerate(expected):
        assert len(results[i]) == 6
        for got in results[i]:
            np.testing.assert_array_equal(got, want)

"""Edge TPU: the compatibility check on real exported bundles, the batch-1 fix, the compiler (absent here),
and the delegate's CPU fallback in make_interpreter."""

from __future__ import annotations

import hashlib
import shutil
import warnings

import numpy as np
import pytest

from converters.edgetpu import COMPILER, check_edgetpu, compile_for_edgetpu, static_batch_model
from edgemeta.format.bundle import MANIFEST_FILE, MODEL_FILE, read_bundle
from edgemeta.runtime.interpreter import delegate_available, make_interpreter
from tests.harness import ROOT, run_python

CONV4_OPS = ["CONV_2D", "MAX_POOL_2D"] * 4 + ["RESHAPE"]


def _run(interpreter, x: np.ndarray) -> np.ndarray:
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def _int8_images(digits_run, n: int = 1) -> np.ndarray:
    """n test images as the int8 bundle's model takes them: quantized, then as 3x3 patches."""
    from edgemeta.format.patches import image_patches

    _, manifest = read_bundle(digits_run["bundles"]["int8"])
    q = manifest.quantization["input"]
    x = digits_run["test"].images[:n].astype(np.float32)
    x = np.clip(np.round(x / q["scale"] + q["zero_point"]), -128, 127).astype(np.int8)
    return image_patches(x, manifest.input_patches, q["zero_point"])


def test_int8_bundle_needs_only_a_static_batch(digits_run):
    report = check_edgetpu(digits_run["bundles"]["int8"])
    assert report.ops == CONV4_OPS
    assert report.int8 and report.dynamic_batch and not report.compatible
    assert report.first_cpu_op is None  # every op is on Coral's list and int8
    assert len(report.problems) == 1 and "dynamic batch dimension" in report.problems[0]
    assert "first op on the CPU: none" in str(report)


def test_static_batch_copy_is_compatible_and_computes_the_same(digits_run):
    path = digits_run["bundles"]["int8"] / MODEL_FILE
    fixed = static_batch_model(path)
    original = path.read_bytes()
    assert len(fixed) == len(original) and fixed != original
    report = check_edgetpu(fixed)
    assert report.compatible and report.problems == [] and not report.dynamic_batch
    cpu = make_interpreter(str(path))
    batch1 = make_interpreter(model_content=fixed)
    assert list(cpu.get_input_details()[0]["shape_signature"]) == [-1, 28, 28, 9]  # 3x3 patches (edgemeta.format.patches)
    assert list(batch1.get_input_details()[0]["shape_signature"]) == [1, 28, 28, 9]
    x = _int8_images(digits_run)
    np.testing.assert_array_equal(_run(batch1, x), _run(cpu, x))


def test_float32_bundle_is_not_int8(digits_run):
    report = check_edgetpu(digits_run["bundles"]["float32"])
    assert not report.compatible and not report.int8
    assert report.first_cpu_op == "op 0 CONV_2D: float32 tensors (the Edge TPU computes in int8/uint8 only)"
    assert any("input 'serving_default_image:0' is float32" in p for p in report.problems)
    assert any("not fully int8: 9 of 9 op(s)" in p for p in report.problems)


def test_check_refuses_what_is_not_a_model(tmp_path):
    with pytest.raises(ValueError, match=r"Not a TFLite flatbuffer .* Received: b'not a mo'"):
        check_edgetpu(b"not a model at all")
    with pytest.raises(FileNotFoundError, match="Received: '.*missing.tflite'"):
        check_edgetpu(tmp_path / "missing.tflite")


def test_a_truncated_model_is_refused_by_the_checked_reader_not_misread(digits_run):
    """The batch-1 copy walks the flatbuffer with the runtime's bounds-checked reader: a cut file is an
    error naming what lies outside it, never a struct.error or bytes patched at a garbage offset."""
    from edgemeta.runtime.verify import ModelVerificationError

    model = (digits_run["bundles"]["int8"] / MODEL_FILE).read_bytes()
    for cut in (200, len(model) // 2):
        with pytest.raises(ModelVerificationError, match="truncated or corrupt: .* lies outside the file"):
            static_batch_model(model[:cut])


def test_check_itself_needs_no_tensorflow():
    # converters/__init__ imports the TensorFlow converter; the check module alone must not need it.
    code = f"""
import importlib.util, sys
for n in ("tensorflow", "tf_keras", "keras"):
    sys.modules[n] = None
spec = importlib.util.spec_from_file_location("edgetpu_check", {str(ROOT / "converters" / "edgetpu.py")!r})
module = sys.modules["edgetpu_check"] = importlib.util.module_from_spec(spec)  # dataclasses look it up there
spec.loader.exec_module(module)
report = module.check_edgetpu({str(ROOT / "edgemeta" / "presets" / "omniglot")!r})
print(report.int8, report.dynamic_batch, report.first_cpu_op)
"""
    result = run_python(code, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["True", "True", "None"]


def test_compile_without_the_compiler_says_how_to_install_it(digits_run, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # whatever this machine has, no edgetpu_compiler here
    for quantization, verdict in (("int8", "The compatibility check found: the input has a dynamic batch"),
                                  ("float32", "is float32")):
        bundle = digits_run["bundles"][quantization]
        manifest_before = (bundle / MANIFEST_FILE).read_bytes()
        with pytest.raises(RuntimeError) as e:
            compile_for_edgetpu(bundle)
        message = str(e.value)
        assert message.startswith(f"{COMPILER} was not found on PATH.")
        assert "sudo apt-get install edgetpu-compiler" in message and "x86-64" in message
        assert verdict in message and f"Received: bundle {str(bundle)!r}" in message
        assert (bundle / MANIFEST_FILE).read_bytes() == manifest_before
        assert not (bundle / "model_edgetpu.tflite").exists()


@pytest.mark.skipif(shutil.which(COMPILER) is None, reason=f"{COMPILER} is not installed (Coral's apt repository)")
def test_compile_for_real(digits_run, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(digits_run["bundles"]["int8"], bundle)
    out = compile_for_edgetpu(bundle)
    assert out == bundle / "model_edgetpu.tflite" and out.is_file()
    _, manifest = read_bundle(bundle)  # model.tflite untouched: its hash still matches
    record = manifest.provenance["edgetpu"]
    assert record["file"] == "model_edgetpu.tflite" and record["batch"] == 1
    assert record["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()


def test_edgetpu_delegate_falls_back_to_the_cpu_with_a_warning(digits_run):
    if delegate_available("edgetpu"):
        pytest.skip("an Edge TPU is attached here: no fallback to test")
    path = str(digits_run["bundles"]["int8"] / MODEL_FILE)
    with pytest.warns(RuntimeWarning) as caught:
        fallback = make_interpreter(path, 2, delegate="edgetpu")
    message = str(caught[0].message)
    assert "Edge TPU delegate was not found" in message and "libedgetpu.so.1" in message
    assert "runs on the CPU" in message
    x = _int8_images(digits_run)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no delegate asked: no warning
        plain = make_interpreter(path, 2)
    np.testing.assert_array_equal(_run(fallback, x), _run(plain, x))
    with pytest.warns(RuntimeWarning, match="Edge TPU delegate was not found"):
        from_bytes = make_interpreter(model_content=(digits_run["bundles"]["int8"] / MODEL_FILE).read_bytes(),
                                      delegate="edgetpu")
    np.testing.assert_array_equal(_run(from_bytes, x), _run(plain, x))


def test_make_interpreter_argument_errors(digits_run):
    path = str(digits_run["bundles"]["int8"] / MODEL_FILE)
    with pytest.raises(ValueError,
                       match=r"exactly one of model_path or model_content. Received: model_path=None, model_content=None"):
        make_interpreter()
    with pytest.raises(ValueError, match=r"Received: model_path='.*model.tflite', model_content=<3 bytes>"):
        make_interpreter(path, model_content=b"abc")
    with pytest.raises(ValueError, match=r"Unknown delegate 'gpu'. Expected None or one of \['edgetpu'\]. Received: 'gpu'"):
        make_interpreter(path, delegate="gpu")
    with pytest.raises(ValueError, match=r"Received: 'gpu'"):
        delegate_available("gpu")
    with pytest.raises(TypeError):
        make_interpreter(path, 2, None)  # model_content and delegate are keyword-only


def test_bundle_with_a_compiled_model_runs_the_plain_one_when_the_delegate_is_absent(digits_run, tmp_path):
    from edgemeta.format.bundle import update_provenance
    from edgemeta.runtime import Embedder

    bundle = tmp_path / "bundle"
    shutil.copytree(digits_run["bundles"]["int8"], bundle)
    compiled = b"not loadable without libedgetpu"  # never read when the delegate is missing
    (bundle / "model_edgetpu.tflite").write_bytes(compiled)
    _, manifest = read_bundle(bundle)
    update_provenance(bundle, {**manifest.provenance, "edgetpu": {"file": "model_edgetpu.tflite",
                                                                  "sha256": hashlib.sha256(compiled).hexdigest()}})
    assert not delegate_available("edgetpu")
    images = digits_run["test"].images[:4]
    with pytest.warns(RuntimeWarning, match="Edge TPU"):
        on_cpu = Embedder.from_bundle(bundle, delegate="edgetpu")
    np.testing.assert_array_equal(on_cpu.embed_preprocessed(images),
                                  Embedder.from_bundle(digits_run["bundles"]["int8"]).embed_preprocessed(images))

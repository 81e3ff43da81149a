"""Compression recipes on the tiny digits run: each stage reaches what it promises (sparsity, 2:4 structure,
cluster count, student shape), converts to a bundle the runtime uses, and the report has its fields."""

from __future__ import annotations

import gzip
import json
import re

import numpy as np
import pytest

from converters import export_bundle, to_tflite
from edgemeta.compress import CompressionRecipe, compress_variants, load_recipes
from tests.harness import cli_in_process

STEPS = 6  # a few fine-tuning steps per stage: enough to exercise every wrapper and schedule


def _kernels(model):
    from edgemeta.compress.pruning import PRUNABLE

    return {layer.name: layer.kernel.numpy() for layer in model.layers if isinstance(layer, PRUNABLE)}


def _tflite_kernels(model_bytes: bytes) -> list[np.ndarray]:
    """The int8 conv weight tensors of a converted model, as the interpreter holds them."""
    from edgemeta.runtime.interpreter import interpreter_class

    interpreter = interpreter_class()[0](model_content=model_bytes)
    interpreter.allocate_tensors()
    return [interpreter.get_tensor(d["index"]) for d in interpreter.get_tensor_details()
            if d["dtype"] == np.int8 and len(d["shape"]) == 4 and d["shape"][0] > 1
            and len(d["quantization_parameters"]["scales"]) > 1]


def _fine_tune(digits_run, recipe):
    from edgemeta.compress import fine_tune_stages
    from edgemeta.train.training import TrainConfig, load_run

    teacher, run = load_run(digits_run["run"])
    config = TrainConfig(**{**run["config"], "steps": STEPS, "epochs": 1})
    return teacher, fine_tune_stages(teacher, digits_run["train"], config, recipe, verbose=0)


# The report's variants: one run of them serves the report's checks and the pruned variant's.
RECIPES = {"float32": CompressionRecipe(quantization="float32"), "int8": CompressionRecipe(),
           "p75": CompressionRecipe(prune=0.75, steps=STEPS)}


@pytest.fixture(scope="module")
def variants(digits_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("variants")
    report = compress_variants(digits_run["run"], RECIPES, out, episodes=30, verbose=0,
                               export_bundle=export_bundle, to_tflite=to_tflite)
    return out, report


@pytest.mark.slow
def test_pruning_reaches_the_target_sparsity_and_shrinks_the_gzipped_bundle(digits_run, variants):
    out, report = variants
    row = next(v for v in report["variants"] if v["name"] == "p75")
    assert row["sparsity"] == pytest.approx(0.75, abs=0.01)
    kernels = _tflite_kernels((out / "p75" / "model.tflite").read_bytes())
    assert len(kernels) == 4 and sum((k == 0).sum() for k in kernels) / sum(k.size for k in kernels) > 0.74  # in the shipped file
    dense_gzip = len(gzip.compress((digits_run["bundles"]["int8"] / "model.tflite").read_bytes(), 9))
    assert row["gzip_bytes"] < 0.6 * dense_gzip
    manifest = json.loads((out / "p75" / "manifest.json").read_text())
    assert manifest["provenance"]["stages"] == ["prune-0.75"]
    assert manifest["quantization"]["scheme"] == "full_integer"
    assert row["accuracy"]["5-way 1-shot"]["accuracy"] > 0.5  # still far above chance (20 %) on unseen digits


def test_structured_pruning_leaves_two_zeros_in_every_four_weights(digits_run):
    from edgemeta.compress.pruning import kernel_sparsity

    teacher, (model, _, stages) = _fine_tune(digits_run, CompressionRecipe(structured=True, steps=STEPS))
    assert stages == ["prune-2:4"]
    for name, kernel in _kernels(model).items():
        per_filter = np.moveaxis(kernel, -1, 0).reshape(kernel.shape[-1], -1)  # TFMOT's grouping: per output channel
        if per_filter.shape[1] % 4:
            assert (kernel != 0).all(), f"{name} cannot group into fours and must stay dense"
            continue
        zeros = (per_filter.reshape(-1, 4) == 0).sum(1)
        assert (zeros >= 2).all(), name
    assert 0.45 < kernel_sparsity(model) <= 0.5
    assert kernel_sparsity(teacher) == 0  # the teacher the stage started from is untouched


def test_sparsity_preserving_clustering_keeps_at_most_the_cluster_count_and_the_zeros(digits_run):
    from edgemeta.compress.clustering import unique_weights_per_kernel
    from edgemeta.compress.pruning import kernel_sparsity

    _, (model, _, stages) = _fine_tune(digits_run, CompressionRecipe(prune=0.5, cluster=4, quantization="float32", steps=STEPS))
    assert stages == ["prune-0.5", "cluster-4"]
    counts = unique_weights_per_kernel(model)
    assert counts and max(counts.values()) <= 4, counts
    assert kernel_sparsity(model) == pytest.approx(0.5, abs=0.01)  # the pruned zeros stay zeros


@pytest.mark.slow
def test_qat_bundle_is_full_integer_and_matches_its_keras_model(digits_run, tmp_path):
    from edgemeta.runtime import Embedder

    _, (qat_model, float_model, stages) = _fine_tune(digits_run, CompressionRecipe(prune=0.5, qat=True, steps=STEPS))
    assert stages == ["prune-0.5", "pqat"]
    from converters import export_bundle

    images = digits_run["test"].images[:64]
    path = export_bundle(qat_model, tmp_path / "b", digits_run["train"].preprocessing, "int8", digits_run["train"].images[:100])
    assert json.loads((path / "manifest.json").read_text())["input"]["dtype"] == "int8"
    keras_out = qat_model.predict(images, verbose=0)
    tflite_out = Embedder.from_bundle(path).embed_preprocessed(images)
    cosine = (keras_out * tflite_out).sum(1) / (np.linalg.norm(keras_out, axis=1) * np.linalg.norm(tflite_out, axis=1) + 1e-9)
    assert cosine.min() > 0.98, cosine.min()
    # PQAT keeps the pruned zeros through quantization-aware training.
    from edgemeta.compress.pruning import kernel_sparsity

    assert kernel_sparsity(float_model) == pytest.approx(0.5, abs=0.01)
    kernels = _tflite_kernels((path / "model.tflite").read_bytes())
    assert sum((k == 0).sum() for k in kernels) / sum(k.size for k in kernels) > 0.49


@pytest.mark.slow
def test_clustering_then_cluster_preserving_qat_keeps_the_clusters_in_the_int8_file(digits_run, tmp_path):
    from converters import to_tflite
    from edgemeta.compress.clustering import unique_weights_per_kernel

    _, (qat_model, clustered, stages) = _fine_tune(digits_run, CompressionRecipe(cluster=4, qat=True, steps=STEPS))
    assert stages == ["cluster-4", "cqat"]
    counts = unique_weights_per_kernel(clustered)
    assert counts and max(counts.values()) <= 4, counts
    kernels = _tflite_kernels(to_tflite(qat_model, "int8", digits_run["train"].images[:100]))
    assert len(kernels) == 4
    for k in kernels:  # per output channel (first axis in TFLite), at most 4 values after BN folding and int8
        assert max(len(np.unique(channel)) for channel in k) <= 4


@pytest.mark.parametrize("quantization", ["int16x8", "float16", "dynamic"])
def test_post_training_modes_run_in_the_runtime_close_to_keras(digits_run, tmp_path, quantization):
    from converters import export_bundle
    from edgemeta.runtime import Embedder

    net, images = digits_run["net"], digits_run["test"].images[:32]
    path = export_bundle(net.backbone, tmp_path / quantization, digits_run["train"].preprocessing, quantization,
                         digits_run["train"].images[:100])
    out = Embedder.from_bundle(path).embed_preprocessed(images)
    ref = net.backbone.predict(images, verbose=0)
    assert np.abs(out - ref).max() / np.abs(ref).max() < 0.05


def test_distilled_student_is_narrower_separable_and_learns_the_teachers_geometry(digits_run, tmp_path):
    from edgemeta.compress import distil
    from edgemeta.train.backend import keras
    from edgemeta.train.training import TrainConfig, load_run

    teacher, run = load_run(digits_run["run"])
    config = TrainConfig(**{**run["config"], "epochs": 1})
    recipe = CompressionRecipe(distill_width=0.5, separable=True, distill_steps=40)
    student = distil(teacher, digits_run["train"], config, recipe, tmp_path / "student", verbose=0)
    convs = [layer for layer in student.layers if isinstance(layer, keras.layers.Conv2D)
             and not isinstance(layer, keras.layers.DepthwiseConv2D)]
    assert [c.filters for c in convs] == [32] * 4  # half the teacher's 64
    assert sum(isinstance(layer, keras.layers.DepthwiseConv2D) for layer in student.layers) == 3
    assert student.count_params() <= 0.1 * teacher.count_params()
    assert student.input_shape == teacher.input_shape
    info = json.loads((tmp_path / "student" / "student.json").read_text())
    assert np.isfinite(info["final_loss"]) and info["key"]["filters"] == 32
    # A second call with the same recipe reuses the saved student instead of training again.
    again = distil(teacher, digits_run["train"], config, recipe, tmp_path / "student", verbose=0)
    np.testing.assert_array_equal(again.get_weights()[0], student.get_weights()[0])


def test_distiller_geometry_term_pulls_student_distances_toward_the_teachers(digits_run):
    from edgemeta.compress import Distiller
    from edgemeta.compress.distillation import relative_distances
    from edgemeta.train.backend import tf
    from edgemeta.train.episodes import EpisodeSampler
    from edgemeta.train.learners import conv4

    teacher = digits_run["net"].backbone
    images = tf.constant(digits_run["test"].images[None, :40])
    target = relative_distances(teacher(images[0])[None])
    gap = lambda s: float(tf.reduce_mean(tf.square(relative_distances(s(images[0])[None]) - target)))
    student = conv4(teacher.input_shape[1:], filters=8)
    before = gap(student)
    net = Distiller(student, teacher, geometry_weight=10.0)
    net.compile("adam", net.episode_loss())
    net.fit(EpisodeSampler(digits_run["train"], 5, 1, 5, seed=0).episodes(), steps_per_epoch=60, epochs=1, verbose=0)
    assert gap(student) < 0.7 * before
    assert not any(w.trainable for w in teacher.weights if w in net.trainable_weights)


@pytest.mark.slow
def test_report_has_every_field_and_a_pareto_plot(digits_run, variants):
    tmp_path, report = variants
    assert set(report["teacher"]) == {"params", "float32_tflite_bytes", "keras_float"}
    for v in report["variants"]:
        assert {"tflite_bytes", "gzip_bytes", "sparsity", "params", "macs", "latency_ms", "model_latency_ms", "accuracy",
                "pareto"} <= set(v)
        assert 0 < v["model_latency_ms"] <= v["latency_ms"] * 1.5
        assert v["macs"] > 1e6 and v["params"] == report["teacher"]["params"]
        assert set(v["accuracy"]) == {"5-way 1-shot"}  # digits hold out 5 classes: no 20-way task
    rows = {v["name"]: v for v in report["variants"]}
    assert rows["int8"]["tflite_bytes"] < 0.3 * rows["float32"]["tflite_bytes"]
    assert rows["p75"]["pareto"] or rows["int8"]["pareto"]
    assert (tmp_path / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    md = (tmp_path / "report.md").read_text()
    assert all(f"| {name} |" in md for name in RECIPES)
    # Run again: finished variants are reused, not re-trained.
    before = (tmp_path / "p75" / "model.tflite").stat().st_mtime_ns
    compress_variants(digits_run["run"], RECIPES, tmp_path, episodes=30, verbose=0,
                      export_bundle=export_bundle, to_tflite=to_tflite)
    assert (tmp_path / "p75" / "model.tflite").stat().st_mtime_ns == before


def test_pareto_front():
    from edgemeta.compress.report import pareto_front

    assert pareto_front([(10, 0.9), (5, 0.9), (5, 0.8), (1, 0.5)]) == [False, True, False, True]


@pytest.mark.parametrize("kwargs, fragment", [
    ({"prune": 1.5}, "prune must be a sparsity in (0, 1)"),
    ({"prune": 0.5, "structured": True}, "structured (2:4) sparsity is always 50 %"),
    ({"cluster": 1}, "cluster must be an integer number of clusters >= 2"),
    ({"qat": True, "quantization": "float16"}, "qat trains for int8 conversion"),
    ({"quantization": "int4"}, "quantization must be one of"),
    ({"separable": True}, "also pass distill_width"),
    ({"steps": 0}, "steps must be a positive integer"),
    ({"prune": 0.5, "prune_steps": 0}, "prune_steps must be a positive integer"),
])
def test_recipe_errors_say_what_was_received(kwargs, fragment):
    with pytest.raises(ValueError, match="Received|distill_width") as e:
        CompressionRecipe(**kwargs)
    assert fragment in str(e.value)


def test_config_files_json_and_toml(tmp_path):
    (tmp_path / "one.json").write_text(json.dumps({"prune": 0.75, "qat": True}))
    assert list(load_recipes(tmp_path / "one.json")) == ["prune0.75+qat-int8"]
    (tmp_path / "many.toml").write_text('[defaults]\nsteps = 7\n[variants.a]\nprune = 0.5\n'
                                        '[variants.b]\ncluster = 8\nqat = true\n')
    recipes = load_recipes(tmp_path / "many.toml")
    assert recipes["a"] == CompressionRecipe(prune=0.5, steps=7) and recipes["b"].cluster == 8 and recipes["b"].steps == 7
    (tmp_path / "bad.toml").write_text("[variants.a]\nprunes = 0.5\n")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['prunes'\]"):
        load_recipes(tmp_path / "bad.toml")


@pytest.mark.slow
def test_cli_composes_a_recipe_from_flags(digits_run, tmp_path):
    # In-process: the console script's real process is tests/cli's; here the flags -> recipe -> report path.
    result = cli_in_process("compress", digits_run["run"], "--out", tmp_path, "--prune", "0.5", "--steps", "3",
                     "--quantization", "float16", "--episodes", "10")
    assert result.returncode == 0, result.stderr
    assert "prune0.5+float16" in result.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["variants"][0]["recipe"]["prune"] == 0.5 and report["variants"][0]["recipe"]["quantization"] == "float16"
    assert report["command"].startswith("edgemeta compress ")
    bad = cli_in_process("compress", digits_run["run"], "--out", tmp_path / "x", "--prune", "2")
    assert bad.returncode == 2 and "Received: 2.0" in bad.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("field, value, expected", [("prune", "0.75", "prune must be a finite number. Received: '0.75' (str)"),
                                                     ("qat", "yes", "qat must be true or false"),
                                                     ("steps", 10.0, "steps must be an integer. Received: 10.0 (float)"),
                                                     ("learning_rate", float("nan"), "learning_rate must be a finite number")])
def test_a_config_value_of_the_wrong_type_names_its_field(field, value, expected):
    with pytest.raises(ValueError, match=re.escape(expected)):
        CompressionRecipe(**{field: value})

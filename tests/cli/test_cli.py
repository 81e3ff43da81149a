"""The `edgemeta` command, run as a real process."""

import json

import pytest
from PIL import Image

from tests.harness import blank_with_square, cli_in_process, run_cli, run_python


@pytest.mark.slow
def test_train_export_evaluate_adapt(tmp_path):
    run, bundle = tmp_path / "run", tmp_path / "bundle"
    result = run_cli("train", "--dataset", "digits", "--steps", "20", "--epochs", "2", "--out", run,
                     "--tensorboard", tmp_path / "logs", "--checkpoints")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((run / "run.json").read_text())["config"]["steps"] == 20
    # Keras callbacks work as users expect: TensorBoard event files and one checkpoint per epoch.
    assert list((tmp_path / "logs" / "train").glob("events.out.tfevents.*"))
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch001.weights.h5", "epoch002.weights.h5"]

    result = run_cli("export", run, "--out", bundle, "--episodes", "20")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "5-way 1-shot: Keras float prototypes" in result.stdout
    manifest = json.loads((bundle / "manifest.json").read_text())
    measured = manifest["provenance"]["measured_accuracy"]["5-way 1-shot"]
    assert measured["runtime"]["episodes"] == 20 and 0.2 < measured["runtime"]["accuracy"] <= 1.0

    result = run_cli("evaluate", bundle, "--episodes", "20", "--shot", "5")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "5-way 5-shot:" in result.stdout and "(20 episodes" in result.stdout

    support = tmp_path / "support"
    for label, image in (("square", blank_with_square()), ("small", blank_with_square(lo=45, hi=60))):
        (support / label).mkdir(parents=True)
        Image.fromarray(image).save(support / label / "a.png")
    Image.fromarray(blank_with_square(lo=29, hi=71)).save(tmp_path / "query.png")
    state = tmp_path / "taught.npz"
    result = run_cli("adapt", "--bundle", bundle, "--support", support, "--state", state, "--json", tmp_path / "query.png")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout)["label"] == "square"
    # What was taught persists across invocations; forgetting is persisted too.
    result = run_cli("adapt", "--bundle", bundle, "--state", state, "--forget", "small")
    assert result.returncode == 0 and "forgot 'small'" in result.stderr
    result = run_cli("adapt", "--bundle", bundle, "--state", state)
    assert "Enrolled labels: ['square']" in result.stdout


@pytest.mark.slow
def test_demo_prints_the_comparison_table(tmp_path):
    result = run_cli("demo", "--steps", "20", "--episodes", "20", "--out", tmp_path / "demo", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    for row in ("Keras float32", "TFLite float32", "TFLite int8 (runtime)", "5-way 1-shot", "ms/image"):
        assert row in result.stdout
    assert "\nNext:\n" in result.stdout and "device serve --preset photos" in result.stdout  # what to run after it
    assert (tmp_path / "demo" / "bundle-int8" / "model.tflite").is_file()


def test_errors_are_clear_and_exit_2(tmp_path):
    result = run_cli("adapt", "--preset", "imagenet", "x.png")
    assert result.returncode == 2 and "Unknown preset 'imagenet'" in result.stderr
    result = cli_in_process("evaluate", tmp_path / "nothing")
    assert result.returncode == 2 and "No trained model in" in result.stderr
    result = cli_in_process("train", "--dataset", "omniglot", "--data-dir", tmp_path, "--steps", "1", "--out", tmp_path / "r")
    assert result.returncode == 2
    assert "Omniglot files not found" in result.stderr or "download failed" in result.stderr
    result = cli_in_process("train", "--dataset", "folder", "--data-dir", tmp_path / "none", "--out", tmp_path / "r")
    assert result.returncode == 2 and "Image folder not found" in result.stderr
    (tmp_path / "support" / "empty_class").mkdir(parents=True)
    result = cli_in_process("adapt", "--preset", "omniglot", "--support", tmp_path / "support")
    assert result.returncode == 2 and "empty class folder(s) ['empty_class']" in result.stderr


@pytest.mark.slow
def test_train_any_learner_by_name_then_evaluate_its_own_adaptation(tmp_path):
    run = tmp_path / "maml"
    result = run_cli("train", "--learner", "fomaml", "--dataset", "digits", "--steps", "6", "--epochs", "1",
                     "--image-size", "16", "--option", "inner_steps=2", "--option", "inner_lr=0.2", "--out", run)
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads((run / "run.json").read_text())
    # --option overrides single keys; the recipe's other options (its prototype head) stay.
    assert info["learner"] == "fomaml"
    assert info["config"]["learner_options"] == {"inner_steps": 2, "inner_lr": 0.2, "head_init": "prototypes"}
    assert info["config"]["n_way"] == 5 and info["config"]["episodes_per_batch"] == 8  # the learner's episodes
    result = run_cli("evaluate", run, "--adaptation", "own", "--episodes", "10")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "5-way 1-shot:" in result.stdout and "(10 episodes" in result.stdout
    result = run_cli("export", run, "--out", tmp_path / "bundle", "--episodes", "5")
    assert result.returncode == 0 and (tmp_path / "bundle" / "model.tflite").is_file()
    assert "5-way 1-shot: own adaptation" in result.stdout  # both numbers: inner loop and on-device prototypes
    result = cli_in_process("evaluate", tmp_path / "bundle", "--adaptation", "own")
    assert result.returncode == 2 and "adapts by prototypes only" in result.stderr


def test_learner_errors_are_clear(tmp_path):
    result = cli_in_process("train", "--learner", "mamal", "--steps", "1", "--out", tmp_path / "r")
    assert result.returncode == 2 and "Unknown learner 'mamal'. Expected one of" in result.stderr
    result = cli_in_process("train", "--learner", "maml", "--option", "inner_step=3", "--steps", "1", "--out", tmp_path / "r")
    assert result.returncode == 2 and "has no option(s) ['inner_step']" in result.stderr
    result = cli_in_process("train", "--learner", "maml", "--option", "inner_steps", "--out", tmp_path / "r")
    assert result.returncode == 2 and "--option takes KEY=VALUE. Received: 'inner_steps'" in result.stderr


def test_deploy_and_serve_are_wired_into_the_command(digits_run):
    bad = cli_in_process("deploy", digits_run["bundles"]["int8"], "--to", "notaurl")
    assert bad.returncode == 2 and "Received: 'notaurl'" in bad.stderr
    exposed = cli_in_process("device", "serve", "--preset", "omniglot", "--host", "0.0.0.0", "--port", "0")
    assert exposed.returncode == 2 and "give it a token" in exposed.stderr


def test_old_workflow_paths_import_with_a_deprecation_warning():
    """`edgemeta.pipeline` / `edgemeta.train.pipeline` scattered to their homes in 0.2; their names still
    import (the same objects) and say where they went."""
    code = """
import json, warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    from edgemeta.pipeline import RECIPES, export_run, per_image_latency_ms, run_demo
    from edgemeta.train.pipeline import EvalResult, LEARNER_SETTINGS, build_preset, evaluate_path, recipe_for
    from edgemeta.train.evaluation import evaluate_adapter
from edgemeta.cli.demo import run_demo as demo
from edgemeta.cli.export import export_run as export
from edgemeta.runtime import evaluation
from edgemeta.train import recipes
same = [RECIPES is recipes.RECIPES, recipe_for is recipes.recipe_for, export_run is export, run_demo is demo,
        per_image_latency_ms is evaluation.per_image_latency_ms, evaluate_adapter is evaluation.evaluate_adapter,
        EvalResult is evaluation.EvalResult]
print(json.dumps({"same": same, "warnings": [str(w.message) for w in caught if w.category is DeprecationWarning]}))
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.splitlines()[-1])
    assert all(report["same"]), report
    warned = " ".join(report["warnings"])
    for old in ("edgemeta.pipeline moved", "edgemeta.train.pipeline moved", "edgemeta.train.evaluation.evaluate_adapter moved"):
        assert old in warned, report["warnings"]

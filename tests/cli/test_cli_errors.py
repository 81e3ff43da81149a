"""Mistakes a new user made with the CLI end in one line and exit code 2, never a traceback or silence."""

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image

from edgemeta.cli import WORKSTATION_MODULES, _error
from edgemeta.presets import preset_path
from tests.harness import cli_in_process, run_cli, run_python


def test_a_data_dir_without_a_dataset_that_reads_it_is_an_error(tmp_path):
    # Before: `--data-dir my_photos` without `--dataset folder` trained on scikit-learn's digits.
    result = cli_in_process("train", "--data-dir", tmp_path, "--out", tmp_path / "run", "--steps", "1")
    assert result.returncode == 2, result.stderr
    assert "Add --dataset folder" in result.stderr and "Received: --data-dir" in result.stderr
    assert not (tmp_path / "run").exists()


def test_a_board_venv_is_told_which_extra_the_command_needs():
    code = """import sys
for name in ("tensorflow", "tf_keras", "keras", "sklearn"):
    sys.modules[name] = None  # as in a venv with only edgemeta[device]
from edgemeta.cli import main
sys.exit(main(["train", "--out", "unused"]))"""
    result = run_python(code, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "pip install 'edgemeta[train]'" in result.stderr and "'tensorflow'" in result.stderr


def test_adapt_reports_a_budget_refusal_and_a_directory_state_in_one_line(tmp_path):
    (tmp_path / "support" / "a").mkdir(parents=True)
    Image.fromarray(np.zeros((105, 105), np.uint8)).save(tmp_path / "support" / "a" / "1.png")
    refused = cli_in_process("adapt", "--preset", "omniglot", "--memory-budget", "8MB", "--support", tmp_path / "support")
    assert refused.returncode == 2 and refused.stderr.startswith("edgemeta adapt: error: "), refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and "budget" in refused.stderr
    (tmp_path / "state").mkdir()
    directory = cli_in_process("adapt", "--preset", "omniglot", "--state", tmp_path / "state")
    assert directory.returncode == 2 and len(directory.stderr.strip().splitlines()) == 1, directory.stderr
    assert "state" in directory.stderr


def bad_bundle(tmp_path: Path) -> Path:
    """The preset with `preprocessing.height` 28.0: a float where the reader takes an integer."""
    bundle = shutil.copytree(preset_path("omniglot"), tmp_path / "bad-bundle")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["preprocessing"]["height"] = 28.0
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    return bundle


def assert_one_line(result: subprocess.CompletedProcess, command: str, *expected: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith(f"edgemeta {command}: error: "), result.stderr
    for text in expected:
        assert text in result.stderr, (text, result.stderr)


BAD_HEIGHT = "manifest.json: preprocessing.height must be an integer in [1, 16384]. Received: 28.0 (float)"


def test_every_command_that_reads_a_bundle_names_the_bad_manifest_field(tmp_path):
    bundle = bad_bundle(tmp_path)
    for args in (("evaluate", bundle), ("device", "check", bundle, "--device", "raspberry-pi-4"),
                 ("deploy", bundle, "--to", "ssh://127.0.0.1:1/unused"), ("adapt", "--bundle", bundle)):
        assert_one_line(cli_in_process(*args), args[0], BAD_HEIGHT)
    assert_one_line(cli_in_process("device", "serve", "--bundle", bundle), "device serve", BAD_HEIGHT)


def test_the_workstation_commands_fail_in_one_line(tmp_path):
    for command in ("export", "compress"):
        result = cli_in_process(command, tmp_path / "no-run", "--out", tmp_path / "out")
        assert_one_line(result, command, "No trained model in", "edgemeta train")
    assert_one_line(cli_in_process("evaluate", tmp_path / "no-run"), "evaluate", "No trained model in")


def test_a_board_venv_gets_one_line_from_every_command(tmp_path):
    """Without TensorFlow (edgemeta[device] only): the board's commands name the bad manifest field, the
    workstation's say which extra to install."""
    bundle = bad_bundle(tmp_path)
    calls = [["evaluate", str(bundle)], ["device", "check", str(bundle), "--device", "raspberry-pi-4"],
             ["deploy", str(bundle), "--to", "ssh://127.0.0.1:1/unused"],
             ["export", str(tmp_path / "run"), "--out", str(tmp_path / "out")],
             ["compress", str(tmp_path / "run"), "--out", str(tmp_path / "out")],
             ["preset", "omniglot", "--out", str(tmp_path / "out")], ["demo", "--out", str(tmp_path / "out")]]
    code = f"""import contextlib, io, json, sys
for name in {list(WORKSTATION_MODULES)!r}:
    sys.modules[name] = None  # as in a venv with only edgemeta[device]
from edgemeta.cli import main
results = []
for argv in {calls!r}:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        results.append([main(argv), err.getvalue()])
print(json.dumps(results))"""
    result = run_python(code, timeout=180)
    assert result.returncode == 0, result.stderr
    for argv, (returncode, stderr) in zip(calls, json.loads(result.stdout.splitlines()[-1])):
        expected = BAD_HEIGHT if str(bundle) in argv else "pip install 'edgemeta[train]'"
        assert_one_line(subprocess.CompletedProcess(argv, returncode, "", stderr), argv[0], expected)
    assert "Traceback" not in result.stderr


def test_an_error_of_several_lines_is_printed_as_one(capsys):
    assert _error("export", "edgetpu_compiler failed (exit 1). Received output:\nline one\n\n  line two\n") == 2
    expected = "edgemeta export: error: edgetpu_compiler failed (exit 1). Received output: | line one | line two\n"
    assert capsys.readouterr().err == expected


def test_adapt_with_nothing_enrolled_says_what_to_run(tmp_path):
    image = tmp_path / "q.png"
    Image.new("L", (105, 105), 255).save(image)
    result = run_cli("adapt", "--preset", "omniglot", str(image))
    lines = [line for line in result.stderr.splitlines() if not line.startswith("INFO:")]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "No classes enrolled" in lines[0] and "--support FOLDER --state FILE" in lines[0] and "enroll(" not in lines[0]

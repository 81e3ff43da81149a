"""Mistakes a new user made with the CLI end in one line and exit code 2, never a traceback or silence."""

import numpy as np
from PIL import Image

from tests.harness import cli_in_process, run_python


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

"""The board's commands run without TensorFlow, as on a board's `edgemeta[device]` install: `adapt`,
`device`, `deploy`, and `evaluate BUNDLE`, whose accuracy equals the same command's with TensorFlow present."""

from __future__ import annotations

import json

from edgemeta.data.splits import OMNIGLOT_TEST
from edgemeta.presets import preset_path
from tests.harness import cli_in_process, run_python

BLOCKED = ("tensorflow", "tf_keras", "keras", "sklearn")  # what `edgemeta[device]` does not install
PRESET = str(preset_path("omniglot"))


def cli_blocked(*commands: list[str]) -> dict:
    """Runs each `edgemeta` command line through `edgemeta.cli.main` in one fresh interpreter where
    importing any of BLOCKED fails; returns their exit codes and outputs, and the blocked modules loaded."""
    code = f"""
import contextlib, io, json, sys
for name in {BLOCKED!r}:
    sys.modules[name] = None  # importing it now raises ImportError
from edgemeta.cli import main
results = []
for argv in {[list(map(str, c)) for c in commands]!r}:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(argv)
        except SystemExit as e:
            status = e.code
    results.append({{"code": status, "stdout": out.getvalue(), "stderr": err.getvalue()}})
loaded = sorted(m for m in sys.modules if m.split(".")[0] in {BLOCKED!r} and sys.modules[m] is not None)
print(json.dumps({{"results": results, "loaded": loaded}}))
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])


def test_evaluating_a_bundle_needs_no_tensorflow_and_gives_the_same_accuracy(omniglot_dir):
    argv = ["evaluate", PRESET, "--way", "5", "--shot", "1", "--dataset", "omniglot", "--data-dir", omniglot_dir,
            "--alphabets", *OMNIGLOT_TEST, "--episodes", "30", "--seed", "3"]
    within = [*argv, "--within-alphabet", "--seed", "4"]
    blocked = cli_blocked(argv, within)
    assert blocked["loaded"] == []
    for command, result in zip((argv, within), blocked["results"]):
        assert result["code"] == 0, result["stderr"][-3000:]
        assert result["stdout"].startswith("5-way 1-shot: ") and "(30 episodes, 5 queries/class)" in result["stdout"]
        # The same episodes (one seed, one numpy description) and the same runtime: the same figure, to the digit.
        full = cli_in_process(*command)
        assert full.returncode == 0, full.stderr[-3000:]
        assert full.stdout == result["stdout"]
    assert blocked["results"][0]["stdout"] != blocked["results"][1]["stdout"]  # other seed, other episodes


def test_board_commands_import_no_tensorflow(digits_run, tmp_path):
    bundle = digits_run["bundles"]["int8"]
    blocked = cli_blocked(["adapt", "--preset", "omniglot"], ["device", "list"],
                          ["device", "check", PRESET, "--device", "raspberry-pi-4", "--json"],
                          ["deploy", bundle, "--to", "notaurl"], ["evaluate", bundle, "--episodes", "5"])
    assert blocked["loaded"] == []
    adapt, listed, check, deploy, digits = blocked["results"]
    assert adapt["code"] == 0 and "Enrolled labels: []" in adapt["stdout"]
    assert listed["code"] == 0 and "raspberry-pi-4" in listed["stdout"]
    assert check["code"] == 0 and json.loads(check["stdout"])["fits"] is True
    assert deploy["code"] == 2 and "Received: 'notaurl'" in deploy["stderr"]
    # The digits come with scikit-learn, which a board lacks: the error says so instead of a traceback.
    assert digits["code"] == 2 and "The digits dataset comes with scikit-learn, which is not installed" in digits["stderr"]

"""No alarming native log lines on a CPU machine: LiteRT's XNNPACK INFO line on board commands, TensorFlow's
import-time lines on the workstation; the filter behind both passes every other line."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from PIL import Image

from edgemeta._native_stderr import MAX_LINE
from edgemeta.runtime.interpreter import XNNPACK_NOTICE
from tests.harness import blank_with_square, run_python

LOG_VARIABLES = ("TF_CPP_MIN_LOG_LEVEL", "TF_CPP_MAX_VLOG_LEVEL", "TF_CPP_VMODULE")


def quiet_env(**extra: str) -> dict[str, str]:
    """This environment without the user's TensorFlow log settings (a developer's own must not decide the test)."""
    return {**{k: v for k, v in os.environ.items() if k not in LOG_VARIABLES}, **extra}


def noise(stderr: str, patterns) -> list[str]:
    return [line for line in stderr.splitlines() if any(re.search(p, line) for p in patterns)]


def test_a_board_command_prints_no_xnnpack_line_and_keeps_its_own_messages(tmp_path):
    for label, image in (("square", blank_with_square()), ("small", blank_with_square(lo=45, hi=60))):
        (tmp_path / "support" / label).mkdir(parents=True)
        Image.fromarray(image).save(tmp_path / "support" / label / "a.png")
    Image.fromarray(blank_with_square(lo=29, hi=71)).save(tmp_path / "query.png")
    argv = [sys.executable, "-m", "edgemeta.cli", "adapt", "--preset", "omniglot", "--support", tmp_path / "support",
            tmp_path / "query.png"]
    runs = {level: subprocess.run(list(map(str, argv)), capture_output=True, text=True, timeout=120,
                                  env=quiet_env(**({"TF_CPP_MIN_LOG_LEVEL": level} if level else {})))
            for level in ("", "0")}
    for run in runs.values():
        assert run.returncode == 0, run.stderr[-3000:]
        assert run.stdout.split("\t")[1] == "square"
        assert "enrolled 'square': 1 image(s)" in run.stderr  # the command's own stderr still shows
    assert noise(runs[""].stderr, [XNNPACK_NOTICE]) == [], runs[""].stderr
    # The line is real (this runtime prints it), and a user who asks for native logs still gets it.
    assert noise(runs["0"].stderr, [XNNPACK_NOTICE]) == ["INFO: Created TensorFlow Lite XNNPACK delegate for CPU."]


@pytest.mark.slow  # two TensorFlow imports, about 5 s each on 2 cores
def test_the_workstation_imports_tensorflow_without_its_import_lines():
    from edgemeta.train.backend import IMPORT_NOISE, NO_DRIVER_NOISE

    code = """
import numpy as np
from edgemeta.train.backend import keras, tf
model = keras.Sequential([keras.layers.Dense(2, input_shape=(3,))])
model(np.zeros((1, 3), "float32"))
tf.config.list_physical_devices("GPU")
print("built")
"""
    runs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            for env in (quiet_env(), quiet_env(TF_CPP_MIN_LOG_LEVEL="0"))]
    (quiet_out, quiet_err), (loud_out, loud_err) = (r.communicate(timeout=300) for r in runs)
    assert [r.returncode for r in runs] == [0, 0], quiet_err[-3000:] + loud_err[-3000:]
    assert quiet_out.strip() == loud_out.strip() == "built"
    patterns = (*IMPORT_NOISE, NO_DRIVER_NOISE)
    assert noise(quiet_err, patterns) == [], quiet_err
    if not noise(loud_err, patterns):
        pytest.skip("this TensorFlow prints none of the import lines here: nothing to hide")


def filtered(body: str) -> subprocess.CompletedProcess:
    """Runs `body` in a fresh interpreter, whose real file descriptor 2 the test reads (pytest's capture would
    stand in for Python's sys.stderr and skip the descriptor)."""
    code = f"""
import os, sys
from edgemeta._native_stderr import MAX_LINE, filtered_native_stderr
{body}
"""
    return run_python(code, timeout=60)


def test_the_filter_hides_only_matching_lines_and_passes_the_rest_in_order():
    result = filtered("""
with filtered_native_stderr([r"^noise \\d+$"]):
    os.write(2, b"kept 1\\nnoise 1\\n")  # as C++ writes: straight to the file descriptor
    print("kept 2", file=sys.stderr)  # Python's stderr goes through the same descriptor
    os.write(2, b"noise 22\\nnoise 3 is longer\\n" + b"y" * (MAX_LINE + 10) + b"\\nnoise 4\\nno newline")
os.write(2, b"\\nnoise 5\\n")  # after the block: nothing is filtered
""")
    assert result.returncode == 0
    # A line too long to be noise passes in pieces; the last line passes without the newline it never had.
    assert result.stderr == "kept 1\nkept 2\nnoise 3 is longer\n" + "y" * (MAX_LINE + 10) + "\nno newline\nnoise 5\n"


def test_the_filter_process_passes_lines_and_an_error_raised_in_the_block():
    result = filtered("""
with filtered_native_stderr([r"^noise$"], filter_process=True):
    os.write(2, b"noise\\nFatal: the real error\\n")
    raise ImportError("no such library")
""")
    assert result.returncode == 1
    assert result.stderr.startswith("Fatal: the real error\nTraceback") and "ImportError: no such library" in result.stderr
    assert "noise" not in result.stderr
    # A library that aborts inside the block (TensorFlow on a CPU without AVX does, while loading): the child
    # process outlives it and still shows its last words.
    result = filtered("""
with filtered_native_stderr([r"^noise$"], filter_process=True):
    os.write(2, b"noise\\nThe TensorFlow library was compiled to use AVX instructions\\n")
    os.abort()
""")
    assert result.returncode != 0 and result.stderr == "The TensorFlow library was compiled to use AVX instructions\n"

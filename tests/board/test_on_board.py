"""The device side on the board's own architecture: run by `make test-board` inside a Debian bookworm Arm root under
qemu, in the venv `devices/setup-raspberry-pi.sh` installed there (tests/board/run_on_arm.py). It checks that the
presets load and verify, that predictions equal those made on x86-64 for the same image files, that stores move
both ways, that the service answers and stops cleanly on SIGTERM, and that `edgemeta device check` runs.

On the workstation (`make test`) it skips: the exchange directory the runner prepares is not there."""

from __future__ import annotations

import base64
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

EXCHANGE = os.environ.get("EDGEMETA_BOARD_EXCHANGE")
pytestmark = pytest.mark.skipif(
    not EXCHANGE, reason="runs on the board's architecture, inside the Arm root `make test-board` builds "
                         "(EDGEMETA_BOARD_EXCHANGE is not set here)")

# int8 embeddings may differ by rounding between the x86-64 and Arm kernels; predictions must be equal. Measured
# under qemu (docs/boards.md): the Omniglot model's were bit-identical on arm64 and at most 1 output step apart on
# armhf (tflite-runtime 2.14); the photo model's (EfficientNet-Lite0, many more layers to carry a rounding
# difference) up to 16 steps in one component, under 0.8 on average, cosine similarity 0.9955 at worst. The bounds
# leave about twice that.
TOLERANCE = {"omniglot": {"max_steps": 2.0, "min_cosine": 0.9999}, "photos": {"max_steps": 32.0, "min_cosine": 0.99}}


def _exchange() -> Path:
    return Path(EXCHANGE)


def _reference() -> dict:
    return json.loads((_exchange() / "reference.json").read_text())


def _record(key: str, value) -> None:
    """Adds a measured figure to board-results.json, which the runner prints."""
    path = _exchange() / "board-results.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    results[key] = value
    path.write_text(json.dumps(results, indent=1))


def test_this_is_the_board_architecture_with_its_own_interpreter_and_no_tensorflow():
    import edgemeta
    from edgemeta.runtime.interpreter import interpreter_class

    expected = _reference()["board"]
    assert platform.machine() == expected["machine"]
    assert interpreter_class()[1] == expected["interpreter"]
    assert Path(edgemeta.__file__).resolve().is_relative_to(Path(sys.prefix).resolve()), edgemeta.__file__
    assert "tensorflow" not in sys.modules
    _record("python", platform.python_version())
    _record("interpreter", interpreter_class()[1])
    import numpy
    import PIL

    _record("numpy", numpy.__version__)
    _record("pillow", PIL.__version__)


@pytest.mark.parametrize("preset", ["omniglot", "photos"])
def test_the_shipped_presets_load_and_verify(preset):
    from edgemeta.format.bundle import read_bundle
    from edgemeta.presets import preset_path
    from edgemeta.runtime import Embedder

    _, manifest = read_bundle(preset_path(preset))  # checks every field and the model's sha256
    assert manifest.model_sha256 == _reference()["presets"][preset]["model_sha256"]
    assert Embedder.from_bundle(preset_path(preset)).embedding_size == manifest.embedding_size


@pytest.mark.parametrize("preset", ["omniglot", "photos"])
def test_enroll_and_classify_give_the_predictions_made_on_x86(preset, tmp_path):
    from tests.board.parity import embedding_difference, output_scale, teach_and_ask

    reference = _reference()
    x86 = reference["presets"][preset]["x86_64"]
    state = tmp_path / "taught.store"
    here = teach_and_ask(preset, reference["plan"], _exchange() / "images", state)
    assert here["labels"] == x86["labels"] and here["nearest"] == x86["nearest"], (here, x86)
    assert here["shots"] == x86["shots"]
    difference = embedding_difference(here["embeddings"], x86["embeddings"], output_scale(preset))
    _record(f"{preset}.embedding_difference", difference)
    _record(f"{preset}.distance_difference", max(abs(a - b) for a, b in zip(here["distances"], x86["distances"])))
    _record(f"{preset}.embeddings", here["embeddings"])
    tolerance = TOLERANCE[preset]
    assert difference["max_steps"] <= tolerance["max_steps"], difference
    assert difference["min_cosine"] >= tolerance["min_cosine"], difference
    shutil.copyfile(state, _exchange() / f"{preset}-{platform.machine()}.store")  # the runner loads it on x86-64


@pytest.mark.parametrize("preset", ["omniglot", "photos"])
def test_a_store_written_on_x86_loads_and_answers_alike(preset, tmp_path):
    from tests.board.parity import ask_store

    reference = _reference()
    state = tmp_path / "taught.store"
    shutil.copyfile(_exchange() / f"{preset}-x86_64.store", state)
    here = ask_store(preset, reference["plan"], _exchange() / "images", state)
    x86 = reference["presets"][preset]["x86_64"]
    assert here["labels"] == x86["labels"] and here["shots"] == x86["shots"], (here, x86)


def _call(port: int, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_the_service_answers_health_enroll_and_classify_and_stops_cleanly_on_sigterm(tmp_path):
    reference = _reference()
    plan, images = reference["plan"]["omniglot"], _exchange() / "images"
    state = tmp_path / "taught.store"
    port = 8000 + os.getpid() % 1000
    proc = subprocess.Popen([sys.executable, "-m", "edgemeta.cli", "device", "serve", "--preset", "omniglot",
                             "--port", str(port), "--state", str(state)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watchdog = threading.Timer(600, proc.kill)  # a service that never listens fails the test, not the run
    watchdog.start()
    try:
        seen = []  # under qemu without /sys, LiteRT's cpuinfo says so on stderr first (tests/board/run_on_arm.py)
        while not seen or "listening on" not in seen[-1]:
            line = proc.stdout.readline()
            assert line, "the service exited before listening:\n" + "".join(seen)
            seen.append(line)
        status, health = _call(port, "GET", "/health")
        assert status == 200 and health["model_sha256"] == reference["presets"]["omniglot"]["model_sha256"], health
        encode = lambda f: base64.b64encode((images / f).read_bytes()).decode()  # noqa: E731
        for label, files in plan["teach"].items():
            status, out = _call(port, "POST", "/enroll", {"label": label, "images": [encode(f) for f in files]})
            assert status == 200 and out["shots"] == len(files), out
        status, out = _call(port, "POST", "/classify", {"images": [encode(f) for f in plan["ask"]]})
        assert status == 200, out
        assert [p["label"] for p in out["predictions"]] == reference["presets"]["omniglot"]["x86_64"]["labels"]
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0, proc.stdout.read()
        _record("service_stop_seconds", round(time.monotonic() - started, 2))
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
    assert state.is_file()


def test_device_check_runs():
    """The plan runs on the board. Its verdict is for a Pi 4's budget: under qemu the runtime's measured memory is
    the emulator's as well (72 MB on armhf), not a board's."""
    from edgemeta.presets import preset_path

    result = subprocess.run([sys.executable, "-m", "edgemeta.cli", "device", "check", str(preset_path("omniglot")),
                             "--device", "raspberry-pi-4"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"measured on {platform.machine()} Linux" in result.stdout and "fits:" in result.stdout, result.stdout

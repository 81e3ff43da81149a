"""`edgemeta device camera` as a real process (TensorFlow blocked) on the folder camera and the Omniglot preset: it
teaches from stdin's commands while it recognises, keeps what it was taught in --state, reloads it, and ends cleanly
on quit, end of input and SIGTERM; its option errors exit 2 saying what was received."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edgemeta.runtime import FewShotAdapter
from tests.harness import cli_in_process
from tests.runtime.test_camera import drawing, save

WAIT = 60.0  # seconds a line may take to come (the first includes the interpreter's start on a busy machine)


def swap(folder: Path, kind: str, variants) -> None:
    """Puts drawings of `kind` in front of the folder camera: the new files first, then the old ones removed, so a frame
    read meanwhile always finds an image."""
    new = {folder / f"{kind}-{v}.png" for v in variants}
    for path in new:
        save(drawing(kind, int(path.stem.rsplit("-", 1)[1])), path)
    for old in folder.iterdir():
        if old not in new:
            old.unlink()


class Camera:
    """`python -m edgemeta.cli device camera ...` running, its stdin a pipe, its stdout and stderr read by threads."""

    def __init__(self, no_tensorflow: Path, folder: Path, state: Path, *args: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(no_tensorflow)}
        command = [sys.executable, "-m", "edgemeta.cli", "device", "camera", "--preset", "omniglot", "--source",
                   str(folder), "--state", str(state), "--frames", "3", "--seconds", "0", "--interval", "0.05",
                   "--json", *args]
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=env)
        self.out: queue.Queue = queue.Queue()
        self.err: queue.Queue = queue.Queue()
        self.said: list[str] = []
        self.readers = [threading.Thread(target=lambda s=stream, q=lines: [q.put(line) for line in s], daemon=True)
                        for stream, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for reader in self.readers:
            reader.start()

    def send(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def wait_for(self, fragment: str) -> str:
        """The next stderr line holding `fragment` (the lines before it are kept in `said`)."""
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            try:
                line = self.err.get(timeout=1)
            except queue.Empty:
                if self.proc.poll() is not None and self.err.empty():
                    break
                continue
            self.said.append(line)
            if fragment in line:
                return line
        raise AssertionError(f"no line with {fragment!r}; stderr so far:\n{''.join(self.said)}")

    def recognitions(self, n: int, before: str | None = None) -> list[dict]:
        """The next `n` recognitions. `before`: the label of what the camera showed until now; recognitions of it
        printed first (frames read before the folder changed, on a slow machine) are passed over, up to 40."""
        while not self.out.empty():
            self.out.get()
        seen: list[dict] = []
        for _ in range(40 + n):
            p = json.loads(self.out.get(timeout=WAIT))
            if seen or before is None or p["label"] != before:
                seen.append(p)
            if len(seen) == n:
                return seen
        raise AssertionError(f"still recognising {before!r} 40 frames after the change")

    def finish(self) -> int:
        code = self.proc.wait(timeout=WAIT)
        for reader in self.readers:  # every line the process wrote, read
            reader.join(timeout=WAIT)
        self.said += list(self.err.queue)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def camera(no_tensorflow, tmp_path):
    started = []

    def start(*args: str, folder: Path = tmp_path / "camera", state: Path = tmp_path / "taught.store") -> Camera:
        started.append(Camera(no_tensorflow, folder, state, *args))
        return started[-1]

    (tmp_path / "camera").mkdir()
    yield start
    for run in started:
        run.kill()


def test_the_camera_command_teaches_two_classes_recognises_them_and_keeps_them(camera, tmp_path):
    folder, state = tmp_path / "camera", tmp_path / "taught.store"
    swap(folder, "circle", range(3))
    run = camera()
    run.wait_for(f"watching folder:{folder} (3 images); 0 class(es), state {state}")
    run.send("teach circle")
    assert "taught 'circle': 3 frame(s), 3 shot(s) in all; 1 class(es)" in run.wait_for("taught '")
    swap(folder, "cross", range(3))
    run.send("cross")  # a bare label teaches too
    assert "taught 'cross': 3 frame(s), 3 shot(s) in all; 2 class(es)" in run.wait_for("taught '")
    # Bad commands are said and change nothing.
    saved = state.read_bytes()
    run.send("forget nothing")
    assert "no class is enrolled under that label. Received: 'nothing'" in run.wait_for("error")
    run.send("teach " + "x" * 300)
    assert "label must be a non-empty printable string of at most 256 characters" in run.wait_for("error")
    run.send("list")
    assert "circle (3 shots), cross (3 shots)" in run.wait_for("shots")
    assert state.read_bytes() == saved
    for kind, before in (("circle", "cross"), ("cross", "circle")):
        swap(folder, kind, [9])  # a drawing it was not taught with
        for p in run.recognitions(3, before):
            assert p["label"] == kind and p["nearest"] == kind and p["distance"] >= 0, p
    run.send("quit")
    assert run.finish() == 0
    assert any(f"2 class(es) kept in {state}" in line for line in run.said), run.said
    assert not any("Traceback" in line for line in run.said)
    with FewShotAdapter.from_preset("omniglot", state, read_only=True) as taught:
        assert taught.labels == ["circle", "cross"] and taught.shots("circle") == taught.shots("cross") == 3
    # A second run reloads the store and, bounded by --max-frames, recognises at once and stops by itself.
    again = camera("--max-frames", "4")
    again.wait_for("2 class(es), state")
    assert again.finish() == 0
    lines = [json.loads(line) for line in again.out.queue]
    assert len(lines) == 4 and all(p["label"] == "cross" for p in lines)
    assert set(lines[0]) >= {"label", "nearest", "distance", "score"}


def test_sigterm_and_the_end_of_input_stop_it_cleanly_with_what_was_taught_saved(camera, tmp_path):
    folder, state = tmp_path / "camera", tmp_path / "taught.store"
    swap(folder, "zigzag", range(3))
    run = camera()
    run.send("teach zigzag")
    run.wait_for("taught 'zigzag'")
    run.recognitions(1)
    run.proc.send_signal(signal.SIGTERM)
    assert run.finish() == 0
    assert any("1 class(es) kept in" in line for line in run.said), run.said
    ended = camera()
    ended.wait_for("watching")
    ended.proc.stdin.close()  # the end of input, as when a piped script is done
    assert ended.finish() == 0
    assert any("stopped after" in line for line in ended.said), ended.said
    with FewShotAdapter.from_preset("omniglot", state, read_only=True) as taught:
        assert taught.labels == ["zigzag"]


@pytest.mark.parametrize("args, fragment", [
    (["--source", "auto"], "No camera found; looked for picamera2: not installed; OpenCV VideoCapture(0): not "
                           "installed. Give --source picamera2, opencv:N or a folder"),
    (["--source", "none"], "--source none leaves nothing to watch"),
    (["--source", "{tmp}/missing"], "No such directory: a camera is one of auto, none, picamera2"),
    (["--source", "{tmp}"], "The folder camera found no image in"),
    (["--source", "opencv:0"], "OpenCV is not installed: pip install 'edgemeta[camera]'"),
    (["--source", "{tmp}", "--button", "17", "--label", "x"], "--button needs gpiozero: on Raspberry Pi OS `sudo apt "
                                                               "install python3-gpiozero`"),
    (["--source", "{tmp}", "--button", "17"], "--button teaches under --label: give both. Received: --button 17"),
    (["--source", "{tmp}", "--frames", "31"], "--frames must be an integer from 1 to 30. Received: 31"),
    (["--source", "{tmp}", "--seconds", "-1"], "--seconds must be a number of seconds from 0 to 10. Received: -1.0"),
    (["--source", "{tmp}", "--interval", "nan"], "--interval must be a number of seconds from 0 to 3600. Received: nan"),
    (["--source", "{tmp}", "--max-frames", "0"], "--max-frames must be a positive integer. Received: 0"),
])
def test_option_errors_exit_2_saying_what_was_received(args, fragment, tmp_path, monkeypatch):
    for module in ("cv2", "picamera2", "gpiozero"):  # as on this machine, whatever is installed
        monkeypatch.setitem(sys.modules, module, None)
    result = cli_in_process("device", "camera", "--preset", "omniglot", *(a.format(tmp=tmp_path) for a in args))
    assert result.returncode == 2, result
    assert result.stderr.startswith("edgemeta device: error: ") and fragment in result.stderr, result.stderr
    assert "Traceback" not in result.stderr

"""Decompression bombs within the request limits, measured in real processes (peak RSS, VmHWM): a 9000x9000
PNG of 79 KB through the Python API, `edgemeta adapt` and the service; a 3 MB request of PNGs whose text chunks
inflate to 1 MiB each. Each is refused before it is inflated; the service's peak stays near a legal request's."""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import re
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from tests.harness import ROOT, run_cli, run_python

MiB = 2**20

API = r"""
import json, sys
for name in ("tensorflow", "tf_keras", "keras"):
    sys.modules[name] = None  # the board's runtime only
from edgemeta.runtime import Embedder, FewShotAdapter
from edgemeta.presets import preset_path

def peak():
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM"))

adapter = FewShotAdapter.from_preset("omniglot", memory_budget="96MB")
embedder = Embedder.from_bundle(preset_path("omniglot"))
out = {{}}
for name, call in (("enroll", lambda: adapter.enroll("x", {path!r})), ("embed", lambda: embedder.embed({path!r}))):
    before = peak()
    try:
        call()
        out[name] = {{"error": None}}
    except ValueError as e:
        out[name] = {{"error": f"{{type(e).__name__}}: {{e}}"}}
    out[name]["rise"] = peak() - before
out["labels"] = adapter.labels
print("REPORT " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def big_png(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bomb") / "big.png"
    Image.new("L", (9000, 9000)).save(path)  # 81 megapixels in about 79 KB
    assert path.stat().st_size < 100_000
    return path


class Service:
    """`python -m edgemeta.serve --preset omniglot` (TensorFlow blocked, this checkout's code), a fresh process."""

    def __init__(self, tmp_path: Path, no_tensorflow: Path) -> None:
        env = {k: v for k, v in os.environ.items() if k != "EDGEMETA_TOKEN"}
        env["PYTHONPATH"] = os.pathsep.join([str(no_tensorflow), str(ROOT)])
        command = [sys.executable, "-m", "edgemeta.serve", "--preset", "omniglot", "--port", "0"]
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
                                     cwd=tmp_path)
        line = self.proc.stdout.readline()
        match = re.search(r"listening on http://\S+:(\d+)/", line)
        assert match, line
        self.port = int(match.group(1))

    def peak(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))

    def call(self, method: str, path: str, payload: dict | None = None) -> tuple[int, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            body = json.dumps(payload).encode() if payload is not None else None
            conn.request(method, path, body=body, headers={"Content-Type": "application/json"} if body else {})
            response = conn.getresponse()
            return response.status, json.loads(response.read())
        finally:
            conn.close()

    def __enter__(self) -> Service:
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.kill()
        self.proc.wait()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def text_bomb_png(chunks: int, inflated: int) -> bytes:
    """A 105x105 drawing carrying `chunks` zTXt chunks, each inflating to `inflated` bytes (compressed once)."""
    info = PngImagePlugin.PngInfo()
    compressed = zlib.compress(b"A" * inflated, 9)
    for k in range(chunks):
        info.add(b"zTXt", f"comment{k}".encode() + b"\0\0" + compressed)
    noise = np.random.default_rng(chunks).integers(0, 256, (105, 105), np.uint8)  # an incompressible image
    out = io.BytesIO()
    Image.fromarray(noise).save(out, "PNG", pnginfo=info)
    return out.getvalue()


def measure(tmp_path: Path, no_tensorflow: Path, payload: dict) -> tuple[int, dict, int, int]:
    """A fresh service's (status, answer, idle peak, peak after) for one /enroll request."""
    with Service(tmp_path, no_tensorflow) as s:
        idle = s.peak()
        status, answer = s.call("POST", "/enroll", payload)
        labels = s.call("GET", "/labels")[1]
        rows = [{"label": row["label"], "shots": row["shots"]} for row in labels["labels"]]  # not the times
        return status, {**answer, "labels": rows}, idle, s.peak()


def test_a_9000x9000_png_is_refused_before_decoding_by_the_python_api(big_png):
    result = run_python(API.format(path=str(big_png)), timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.split("REPORT ", 1)[1])
    print(f"\nPython API, {big_png.stat().st_size} B PNG of 9000x9000:", report)
    for name in ("enroll", "embed"):
        error = report[name]["error"]
        # 1 MiP under the budget (a budgeted adapter's default), the bundle's 4 MiP for the bare embedder
        limit = 2**20 if name == "enroll" else 4194304
        assert error and error.startswith("ImageTooLargeError: The image is too large: 9000x9000 = 81000000 pixels, "
                                          f"more than max_pixels={limit}"), error
        assert f"Received: '{big_png}'" in error
        assert report[name]["rise"] < 10 * MiB, report  # the header was read, no pixel decoded
    assert report["labels"] == []


def test_edgemeta_adapt_refuses_it_in_one_line(big_png, tmp_path):
    (tmp_path / "support" / "x").mkdir(parents=True)
    (tmp_path / "support" / "x" / "big.png").symlink_to(big_png)
    result = run_cli("adapt", "--preset", "omniglot", "--memory-budget", "96MB", "--support", tmp_path / "support",
                     timeout=120)
    assert result.returncode == 2, result.stderr
    # The CLI's own output is the one line; TFLite's native log ("INFO: Created ... delegate") is not its to silence.
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("INFO: ")]
    assert len(lines) == 1 and lines[0].startswith("edgemeta adapt: error: The image is too large: 9000x9000"), lines


def test_the_service_answers_413_for_it_without_decoding(big_png, tmp_path, no_tensorflow):
    status, answer, idle, peak = measure(tmp_path, no_tensorflow, {"label": "x", "images": [b64(big_png.read_bytes())]})
    print(f"\nservice, 9000x9000 PNG: {status}, peak {idle / MiB:.1f} -> {peak / MiB:.1f} MiB")
    assert status == 413 and "9000x9000" in answer["error"] and "--max-pixels" in answer["error"], answer
    assert answer["labels"] == [] and peak - idle < 10 * MiB


def test_a_3mb_request_of_text_chunk_bombs_peaks_under_twice_the_largest_legal_request(tmp_path, no_tensorflow):
    # The largest legal request with the default limits: one 1000x1000 RGB PNG of noise (1e6 pixels, a 4 MB body).
    legal = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (1000, 1000, 3), np.uint8)).save(legal, "PNG")
    status, answer, legal_idle, legal_peak = measure(tmp_path, no_tensorflow, {"label": "big", "images": [b64(legal.getvalue())]})
    assert status == 200, answer

    # 32 drawings, each with 63 zTXt chunks that inflate to 1 MiB (Pillow's default limits allow 64 MiB per image).
    bomb = text_bomb_png(63, MiB)
    payload = {"label": "bomb", "images": [b64(bomb)] * 32}
    body = len(json.dumps(payload))
    assert 2.8e6 < body < 3.5e6
    status, answer, bomb_idle, bomb_peak = measure(tmp_path, no_tensorflow, payload)
    print(f"\nlargest legal request ({len(legal.getvalue())} B PNG, 1000x1000 RGB): peak {legal_idle / MiB:.1f} -> "
          f"{legal_peak / MiB:.1f} MiB; text-chunk request ({body} B, 32 x 63 chunks of 1 MiB inflated): {status}, "
          f"peak {bomb_idle / MiB:.1f} -> {bomb_peak / MiB:.1f} MiB; ratio {bomb_peak / legal_peak:.2f}")
    assert status == 413 and "images[0] is too large: its PNG text" in answer["error"], answer
    assert answer["labels"] == []
    assert bomb_peak < 2 * legal_peak

    # Chunks just under the limits (4 x 250 KiB per image): read, and the request is served, still cheaply.
    near = text_bomb_png(4, 250 * 2**10)
    status, answer, near_idle, near_peak = measure(tmp_path, no_tensorflow, {"label": "near", "images": [b64(near)] * 32})
    print(f"32 images with 4 x 250 KiB of text each: {status}, peak {near_idle / MiB:.1f} -> {near_peak / MiB:.1f} MiB")
    assert status == 200 and answer["labels"] == [{"label": "near", "shots": 32}], answer
    assert near_peak < 2 * legal_peak and near_peak - near_idle < 10 * MiB

"""The service as a board's systemd unit runs it, with a board profile's memory budget: it starts whatever
else runs on the machine, serves enroll and classify, and its peak RSS stays under the profile's budget."""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
from PIL import Image

from edgemeta.profiles import load_profile
from tests.harness import fresh_runtime_figure

DEVICE = "raspberry-pi-zero-2-w"


def _png(rng: np.random.Generator, size: int) -> str:
    image = np.full((size, size), 255, np.uint8)
    x, y = rng.integers(5, size - 40, 2)
    image[y : y + 30, x : x + 6] = 0
    image[x : x + 6, y : y + 30] = 0
    out = io.BytesIO()
    Image.fromarray(image).save(out, "PNG")
    return base64.b64encode(out.getvalue()).decode()


def _call(port: int, path: str, payload: dict | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        body = json.dumps(payload).encode() if payload is not None else None
        conn.request("POST" if payload is not None else "GET", path, body=body,
                     headers={"Content-Type": "application/json"} if body else {})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def _peak_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


class _Service:
    """`edgemeta device serve` of a preset with the Pi Zero 2 W profile, as its systemd unit runs it."""

    def __init__(self, tmp_path: Path, preset: str) -> None:
        env = {k: v for k, v in os.environ.items() if k != "EDGEMETA_TOKEN"}
        env["PYTHONUNBUFFERED"] = "1"  # the URL line, read from a pipe
        command = [sys.executable, "-m", "edgemeta.cli", "device", "serve", "--preset", preset, "--device", DEVICE,
                   "--port", "0", "--state", str(tmp_path / "taught.store")]
        self.log_path = tmp_path / "service.log"
        self.log = self.log_path.open("w")
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=self.log, text=True, env=env, cwd=tmp_path)
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in self.proc.stdout], daemon=True).start()
        line = ""
        for _ in range(90):  # until the URL line, or the process's end (a refusal to start)
            try:
                line = lines.get(timeout=1)
                break
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
        if not line:
            self.stop()
            raise AssertionError(f"the service did not start:\n{self.log_path.read_text()}")
        match = re.search(r"listening on http://\S+:(\d+)/", line)
        assert match, (line, self.log_path.read_text())
        self.port = int(match.group(1))

    def call(self, path: str, payload: dict | None = None) -> tuple[int, dict]:
        return _call(self.port, path, payload)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=30)
        self.log.close()
        assert code == 0, self.log_path.read_text()


def test_the_pi_zero_service_starts_serves_and_stays_under_its_profiles_budget(tmp_path):
    budget = load_profile(DEVICE).budget_bytes
    service = _Service(tmp_path, "omniglot")
    try:
        status, health = service.call("/health")
        assert status == 200 and health["memory"]["budget_bytes"] == budget, health
        rng = np.random.default_rng(0)
        # The largest legal requests: 32 images (--max-images) of 176x176, just under 1 M pixels (--max-pixels).
        for c in range(6):
            status, out = service.call("/enroll", {"label": f"c{c}", "images": [_png(rng, 176) for _ in range(32)]})
            assert status == 200 and out["shots"] == 32, out
        for c in range(6, 206):  # and many small ones, as a user teaching symbols
            status, out = service.call("/enroll", {"label": f"c{c}", "images": [_png(rng, 105) for _ in range(2)]})
            assert status == 200, out
        status, out = service.call("/classify", {"images": [_png(rng, 176) for _ in range(32)]})
        assert status == 200 and len(out["predictions"]) == 32, out
        peak = _peak_bytes(service.proc.pid)
        assert peak < budget, f"peak RSS {peak} B is over the profile's budget of {budget} B"
        print(json.dumps({"peak_rss_bytes": peak, "budget_bytes": budget, "classes": 206}))
    finally:
        service.stop()


def _noise_png(rng: np.random.Generator, side: int) -> str:
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (side, side, 3), np.uint8)).save(out, "PNG", compress_level=1)
    return base64.b64encode(out.getvalue()).decode()


def test_the_photos_preset_serves_on_a_pi_zero_with_its_largest_requests_under_the_plan(tmp_path, monkeypatch):
    """The photos preset on the Pi Zero 2 W profile: the largest legal request, a million RGB pixels of noise in a
    PNG (about 3 MB of body, the most that compresses worst), enrolled and classified; the peak RSS stays under
    what `edgemeta device check` plans for those classes, and under the budget."""
    from edgemeta.presets import preset_path
    from edgemeta.runtime.memory import plan_memory
    from edgemeta.serve.api import Limits, body_reserve

    budget = load_profile(DEVICE).budget_bytes
    # The plan's runtime figure measured afresh, in the state of this venv, for the service and for this check alike.
    monkeypatch.setenv("XDG_CACHE_HOME", fresh_runtime_figure(tmp_path)["XDG_CACHE_HOME"])
    service = _Service(tmp_path, "photos")
    try:
        status, health = service.call("/health")
        assert status == 200, health
        limits = Limits(**health["limits"])
        plan = plan_memory(preset_path("photos"), batch=1, request_bytes=body_reserve(limits), max_pixels=limits.max_pixels)
        assert plan.request == health["memory"]["request_reserve_bytes"], (plan.to_dict(), health)
        rng = np.random.default_rng(0)
        for c in range(3):
            status, out = service.call("/enroll", {"label": f"object {c}", "images": [_noise_png(rng, 1000)]})
            assert status == 200 and out["shots"] == 1, out
        status, out = service.call("/classify", {"images": [_noise_png(rng, 1000)]})
        assert status == 200 and out["predictions"][0]["nearest"].startswith("object"), out
        status, out = service.call("/classify", {"images": [_noise_png(rng, 1001)]})  # over --max-pixels: refused
        assert status == 413, out
        peak = _peak_bytes(service.proc.pid)
        print(json.dumps({"peak_rss_bytes": peak, "plan_bytes": plan.predict(3), "budget_bytes": budget}))
        assert peak < plan.predict(3) < budget, (peak, plan.to_dict())
    finally:
        service.stop()

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


def test_the_pi_zero_service_starts_serves_and_stays_under_its_profiles_budget(tmp_path):
    budget = load_profile(DEVICE).budget_bytes
    env = {k: v for k, v in os.environ.items() if k != "EDGEMETA_TOKEN"}
    env["PYTHONUNBUFFERED"] = "1"  # the URL line, read from a pipe
    command = [sys.executable, "-m", "edgemeta.cli", "device", "serve", "--preset", "omniglot", "--device", DEVICE,
               "--port", "0", "--state", str(tmp_path / "taught.store")]
    log = (tmp_path / "service.log").open("w")
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True, env=env, cwd=tmp_path)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    try:
        line = ""
        for _ in range(90):  # until the URL line, or the process's end (a refusal to start)
            try:
                line = lines.get(timeout=1)
                break
            except queue.Empty:
                if proc.poll() is not None:
                    break
        if not line:
            log.flush()
            raise AssertionError(f"the service did not start:\n{(tmp_path / 'service.log').read_text()}")
        match = re.search(r"listening on http://\S+:(\d+)/", line)
        assert match, (line, (tmp_path / "service.log").read_text())
        port = int(match.group(1))
        status, health = _call(port, "/health")
        assert status == 200 and health["memory"]["budget_bytes"] == budget, health
        rng = np.random.default_rng(0)
        # The largest legal requests: 32 images (--max-images) of 176x176, just under 1 M pixels (--max-pixels).
        for c in range(6):
            status, out = _call(port, "/enroll", {"label": f"c{c}", "images": [_png(rng, 176) for _ in range(32)]})
            assert status == 200 and out["shots"] == 32, out
        for c in range(6, 206):  # and many small ones, as a user teaching symbols
            status, out = _call(port, "/enroll", {"label": f"c{c}", "images": [_png(rng, 105) for _ in range(2)]})
            assert status == 200, out
        status, out = _call(port, "/classify", {"images": [_png(rng, 176) for _ in range(32)]})
        assert status == 200 and len(out["predictions"]) == 32, out
        peak = _peak_bytes(proc.pid)
        assert peak < budget, f"peak RSS {peak} B is over the profile's budget of {budget} B"
        print(json.dumps({"peak_rss_bytes": peak, "budget_bytes": budget, "classes": 206}))
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, (tmp_path / "service.log").read_text()
        log.close()


def test_every_profile_that_device_check_says_fits_starts_the_service(capsys, monkeypatch):
    """`edgemeta device check` and `device serve` set aside the same request and make the same plan, so a
    bundle that fits a profile starts the service with that profile's budget, and its adapter has room
    for as many classes as the check said (within the spare rows the plan assumes)."""
    import argparse
    import warnings

    import edgemeta.runtime.memory as memory
    from edgemeta.cli import main
    from edgemeta.presets import preset_path
    from edgemeta.profiles import list_profiles
    from edgemeta.serve import Limits
    from edgemeta.serve.cli import _adapter, _budget, add_serve_arguments

    # This test runner holds TensorFlow: its own anonymous memory, which a board's service does not have
    # (the test above starts the real one), is left out.
    monkeypatch.setattr(memory, "anonymous_rss_bytes", lambda: 0)
    for key in list_profiles():
        assert main(["device", "check", str(preset_path("omniglot")), "--device", key, "--json"]) == 0, key
        check = json.loads(capsys.readouterr().out)
        parser = argparse.ArgumentParser()
        add_serve_arguments(parser)
        args = parser.parse_args(["--preset", "omniglot", "--device", key])
        budget, adapter_budget = _budget(args, Limits(args.max_request_bytes, args.max_images, args.max_pixels))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the Coral profiles' Edge TPU is absent here
            adapter = _adapter(args, adapter_budget)
        per_class = adapter.store.bytes_per_class(5) + 16 + 8 * 6 * 8  # what check's 1.25 x spare rows leave out
        fits = adapter._budget.for_classes // per_class
        assert budget == check["budget_bytes"] and fits >= check["max_classes"], (key, fits, check["max_classes"])

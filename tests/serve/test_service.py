"""`edgemeta device serve` as a real process (TensorFlow blocked) driven by a real HTTP client:
round trip, token, size limits, concurrent clients, SIGTERM, bad input, connection limit, Host check."""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgemeta.runtime import FewShotAdapter

TOKEN = "s3cret-token-for-the-service-test"


@pytest.fixture(scope="module")
def bundle(digits_run) -> Path:
    return Path(digits_run["bundles"]["int8"])


def digits(digits_run, label: str, n: int, start: int = 0) -> list[np.ndarray]:
    test = digits_run["test"]
    idx = np.flatnonzero(test.labels == test.class_names.index(label))[start : start + n]
    return [test.raw[i] for i in idx]


def png(array: np.ndarray) -> str:
    out = io.BytesIO()
    Image.fromarray(array).save(out, "PNG")
    return base64.b64encode(out.getvalue()).decode()


class Served:
    """A service process started with --port 0, and a real HTTP client for it."""

    def __init__(self, bundle: Path, tmp_path: Path, no_tensorflow: Path, *args: str, connect: str = "127.0.0.1"):
        self.log = tmp_path / f"service-{time.monotonic_ns()}.log"
        env = {k: v for k, v in os.environ.items() if k != "EDGEMETA_TOKEN"}
        env["PYTHONPATH"] = str(no_tensorflow)
        with self.log.open("w") as log:
            command = [sys.executable, "-m", "edgemeta.serve", "--bundle", str(bundle), "--port", "0", *args]
            self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True, env=env, cwd=tmp_path)
        lines: queue.Queue = queue.Queue()

        def read(stdout=self.proc.stdout) -> None:  # until the process exits
            with stdout:
                for line in stdout:
                    lines.put(line)

        threading.Thread(target=read, daemon=True).start()
        try:
            line = lines.get(timeout=60)
        except queue.Empty:
            self.proc.kill()
            raise AssertionError(f"the service printed no URL:\n{self.log.read_text()}") from None
        match = re.search(r"listening on http://(\S+):(\d+)/", line)
        assert match, (line, self.log.read_text())
        self.host, self.port = connect, int(match.group(2))

    def call(self, method: str, path: str, payload=None, token: str | None = None, body: bytes | None = None,
             headers: dict | None = None) -> tuple[int, dict]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        try:
            sent = dict(headers or {})
            if payload is not None:
                body = json.dumps(payload).encode()
            if body is not None:
                sent.setdefault("Content-Type", "application/json")
            if token is not None:
                sent["Authorization"] = f"Bearer {token}"
            conn.request(method, path, body=body, headers=sent)
            response = conn.getresponse()
            text = response.read().decode()
            assert response.getheader("Content-Type") == "application/json", text
            assert "Traceback" not in text
            return response.status, json.loads(text)
        finally:
            conn.close()

    def labels(self, token: str | None = None) -> dict[str, int]:
        status, out = self.call("GET", "/labels", token=token)
        assert status == 200, out
        return {row["label"]: row["shots"] for row in out["labels"]}

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)


@pytest.fixture
def serve(bundle, tmp_path, no_tensorflow):
    started = []

    def start(*args: str, **kwargs) -> Served:
        started.append(Served(bundle, tmp_path, no_tensorflow, *args, **kwargs))
        return started[-1]

    yield start
    for s in started:
        if s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait()


def test_round_trip_matches_the_adapter(serve, digits_run, bundle, tmp_path):
    s = serve("--state", str(tmp_path / "taught.store"))
    status, health = s.call("GET", "/health")
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert status == 200 and health["classes"] == 0 and health["model_sha256"] == manifest["model_sha256"]
    status, out = s.call("POST", "/classify", {"images": [png(digits(digits_run, "5", 1)[0])]})
    assert status == 409 and "POST /enroll first" in out["error"]

    local = FewShotAdapter.from_bundle(bundle)  # the same steps in this process, for comparison
    for label in ("5", "6", "7"):
        shots = digits(digits_run, label, 3)
        status, out = s.call("POST", "/enroll", {"label": label, "images": [png(a) for a in shots]})
        assert (status, out["shots"], out["added"]) == (200, 3, 3), out
        local.enroll(label, shots)
    assert s.labels() == {"5": 3, "6": 3, "7": 3}

    queries = digits(digits_run, "6", 10, start=20)
    status, out = s.call("POST", "/classify", {"images": [png(a) for a in queries], "unknown_threshold": None})
    assert status == 200, out
    served = out["predictions"]
    assert sum(p["label"] == "6" for p in served) >= 6, served
    expected = local.classify(queries, unknown_threshold=None)
    assert [p["nearest"] for p in served] == [p.nearest for p in expected]
    np.testing.assert_allclose([p["distance"] for p in served], [p.distance for p in expected], rtol=1e-6)
    assert all(0 < p["score"] <= 1 for p in served)

    assert s.call("POST", "/forget", {"label": "7"}) == (200, {"forgot": "7", "classes": 2})
    assert s.call("DELETE", "/labels/6")[0] == 200
    assert s.labels() == {"5": 3}
    assert s.stop() == 0


def test_token_required_beyond_loopback(serve, bundle, tmp_path, no_tensorflow):
    env = {k: v for k, v in os.environ.items() if k != "EDGEMETA_TOKEN"} | {"PYTHONPATH": str(no_tensorflow)}
    command = [sys.executable, "-m", "edgemeta.serve", "--bundle", str(bundle), "--port", "0", "--host", "0.0.0.0"]
    refused = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    assert refused.returncode == 2 and "give it a token" in refused.stderr and "'0.0.0.0'" in refused.stderr
    short = subprocess.run(command, capture_output=True, text=True, env=env | {"EDGEMETA_TOKEN": "short"}, timeout=60)
    assert short.returncode == 2 and "at least 16" in short.stderr and "from EDGEMETA_TOKEN" in short.stderr
    # A budget that one request's reserve (20 B x 1e6 pixels for a 1-channel model + 3 x 4 MiB) would eat is refused
    # at start too.
    small = subprocess.run([*command[:-2], "--memory-budget", "40MB"], capture_output=True, text=True, env=env, timeout=60)
    assert small.returncode == 2 and "31.1 MB are set aside" in small.stderr, small.stderr

    # Reach it through a non-loopback address of this machine when it has one.
    addresses = subprocess.run(["hostname", "-I"], capture_output=True, text=True).stdout.split()
    connect = next((a for a in addresses if "." in a and not a.startswith("127.")), "127.0.0.1")
    (tmp_path / "token").write_text(TOKEN + "\n")
    s = serve("--host", "0.0.0.0", "--token-file", str(tmp_path / "token"), connect=connect)

    wrong = ((None, None), ("wrong-token-of-the-same-length-xx", None), (None, {"Authorization": f"Basic {TOKEN}"}))
    for token, headers in wrong:
        status, out = s.call("GET", "/labels", token=token, headers=headers)
        assert status == 401 and "Bearer" in out["error"] and TOKEN not in out["error"], out
    status, out = s.call("POST", "/enroll", {"label": "x", "images": ["AAAA"]})
    assert status == 401
    assert s.call("GET", "/health") == (200, {"status": "ok"})  # liveness only, without the token
    status, health = s.call("GET", "/health", token=TOKEN)
    assert status == 200 and health["token_required"] is True and "model_sha256" in health
    assert s.labels(token=TOKEN) == {}
    assert s.stop() == 0


def _post_raw(s: Served, path: str, headers: dict, body: bytes) -> tuple[int, dict]:
    conn = http.client.HTTPConnection(s.host, s.port, timeout=30)
    try:
        conn.putrequest("POST", path)
        for key, value in headers.items():
            conn.putheader(key, value)
        conn.endheaders(body or None)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_oversized_requests_are_refused_and_change_nothing(serve, digits_run, tmp_path):
    state = tmp_path / "taught.store"
    s = serve("--state", str(state), "--max-request-bytes", "100000", "--max-images", "4")
    assert s.call("POST", "/enroll", {"label": "1", "images": [png(a) for a in digits(digits_run, "8", 2)]})[0] == 200
    before = state.read_bytes()
    image = png(digits(digits_run, "9", 1)[0])

    # 20 MB: more than the sockets buffer here, so the client is still sending when it is refused, and gets the 413
    # only because the service reads and drops the rest instead of resetting the connection.
    status, out = s.call("POST", "/enroll", {"label": "2", "images": [image, "A" * 20_000_000]})
    assert status == 413 and "at most 100000 bytes" in out["error"] and "Received: Content-Length 2000" in out["error"]
    status, out = _post_raw(s, "/enroll", {"Content-Type": "application/json", "Content-Length": str(10**12)}, b"{}")
    assert status == 413 and f"Content-Length {10**12}" in out["error"]
    status, out = s.call("POST", "/enroll", {"label": "2", "images": [image] * 5})
    assert status == 413 and "at most 4" in out["error"] and "Received: 5 images" in out["error"]
    # 1.2 megapixels compress to a few hundred bytes: the decoded size is checked from the header, before decoding.
    bomb = png(np.zeros((1000, 1200), np.uint8))
    assert len(bomb) < 10_000
    status, out = s.call("POST", "/classify", {"images": [bomb]})
    assert status == 413 and "at most 1000000 decoded pixels" in out["error"] and "1200x1000" in out["error"]
    status, out = s.call("POST", "/enroll", {"label": "1", "images": [image, bomb]})
    assert status == 413

    assert s.labels() == {"1": 2}
    assert state.read_bytes() == before
    assert s.stop() == 0


def test_concurrent_clients_are_all_served(serve, digits_run, tmp_path):
    state = tmp_path / "taught.store"
    s = serve("--state", str(state))
    pool = [png(a) for label in "56789" for a in digits(digits_run, label, 6)]
    failures: list = []

    def client(t: int) -> None:
        for i in range(25):
            image = pool[(7 * t + i) % len(pool)]
            op = i % 5
            try:
                if op == 0:
                    result = s.call("POST", "/enroll", {"label": f"c{t}", "images": [image]})
                elif op == 1:
                    result = s.call("POST", "/classify", {"images": [image, pool[t]]})
                elif op == 2:
                    result = s.call("GET", "/labels")
                elif op == 3:
                    result = s.call("POST", "/enroll", {"label": f"tmp{t}", "images": [image, image]})
                else:
                    result = s.call("DELETE", f"/labels/tmp{t}")
            except Exception as e:  # a refused or reset connection counts as a failure
                result = (None, repr(e))
            if result[0] != 200:
                failures.append((t, i, result))

    threads = [threading.Thread(target=client, args=(t,)) for t in range(8)]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    elapsed = time.monotonic() - start
    assert not failures, failures[:5]
    assert s.labels() == {f"c{t}": 5 for t in range(8)}
    assert s.stop() == 0
    print(f"8 clients x 25 requests in {elapsed:.1f} s")


def test_sigterm_finishes_the_request_in_flight_and_saves(serve, digits_run, bundle, tmp_path):
    state = tmp_path / "taught.store"
    s = serve("--state", str(state))
    assert s.call("POST", "/enroll", {"label": "3", "images": [png(a) for a in digits(digits_run, "8", 2)]})[0] == 200

    body = json.dumps({"label": "4", "images": [png(a) for a in digits(digits_run, "9", 3)]}).encode()
    conn = socket.create_connection((s.host, s.port), timeout=30)
    conn.sendall(f"POST /enroll HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:50])
    time.sleep(0.5)  # the server is now reading the body
    s.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    while True:  # it stops accepting new connections...
        try:
            socket.create_connection((s.host, s.port), timeout=1).close()
        except (ConnectionRefusedError, ConnectionResetError):  # reset: the listener closed with this one in its backlog
            break
        assert time.monotonic() < deadline, "still accepting connections 10 s after SIGTERM"
        time.sleep(0.1)
    assert s.proc.poll() is None  # ...but waits for the request in flight
    conn.sendall(body[50:])
    response = b""
    while chunk := conn.recv(65536):
        response += chunk
    conn.close()
    assert response.startswith(b"HTTP/1.0 200"), response
    assert json.loads(response.split(b"\r\n\r\n", 1)[1])["shots"] == 3

    # Impatient SIGTERMs, every millisecond until it has exited, must not cut the save or the exit short (CPython
    # restores the default handler during finalization: a late one used to kill it with -15).
    deadline = time.monotonic() + 30
    while s.proc.poll() is None and time.monotonic() < deadline:
        try:
            s.proc.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            break
        time.sleep(0.001)
    assert s.proc.wait(timeout=30) == 0
    log = s.log.read_text()
    assert "SIGTERM" in log and f"saved 2 class(es) to {state}" in log
    reloaded = FewShotAdapter.from_bundle(bundle, state=state)
    assert reloaded.labels == ["3", "4"] and (reloaded.shots("3"), reloaded.shots("4")) == (2, 3)


def test_bad_input_is_refused_clearly_and_changes_nothing(serve, digits_run, tmp_path):
    state = tmp_path / "taught.store"
    s = serve("--state", str(state))
    good = png(digits(digits_run, "8", 1)[0])
    assert s.call("POST", "/enroll", {"label": "1", "images": [good, good]})[0] == 200
    before = state.read_bytes()
    gif = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(gif, "GIF")
    noise = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), np.uint8)).save(noise, "PNG")
    truncated = base64.b64encode(noise.getvalue()[: len(noise.getvalue()) // 2]).decode()

    def enroll(*images: str, label: str = "2") -> dict:
        return {"payload": {"label": label, "images": list(images)}}

    cases = [
        ("POST", "/enroll", {"body": b"{not json"}, 400, "not valid JSON"),
        ("POST", "/enroll", {"payload": ["1", [good]]}, 400, "must be a JSON object"),
        ("POST", "/enroll", {"payload": {"label": "2"}}, 400, "missing ['images']"),
        ("POST", "/enroll", {"payload": {"label": "2", "image": [good]}}, 400, "unknown ['image']"),
        ("POST", "/enroll", {"payload": {"label": "", "images": [good]}}, 400, "label must be a non-empty"),
        ("POST", "/enroll", {"payload": {"label": "2", "images": good}}, 400, "non-empty list"),
        ("POST", "/enroll", enroll(good, "@@not base64@@"), 400, "images[1] is not valid base64"),
        ("POST", "/enroll", enroll(base64.b64encode(b"hello").decode()), 400, "not a PNG or JPEG"),
        ("POST", "/enroll", enroll(base64.b64encode(gif.getvalue()).decode()), 400, "not a PNG or JPEG"),
        ("POST", "/enroll", enroll(good, truncated, label="1"), 400, "images[1] could not be decoded"),
        ("POST", "/classify", {"payload": {"images": [good], "unknown_threshold": -1}}, 400, "unknown_threshold must"),
        ("POST", "/forget", {"payload": {"label": "nope"}}, 404, "Enrolled labels: ['1']"),
        ("DELETE", "/labels/nope", {}, 404, "Received: 'nope'"),
        ("GET", "/nope", {}, 404, "Endpoints: GET /health"),
        ("PUT", "/labels", {}, 405, "/labels takes GET"),
        ("POST", "/enroll", {"body": b'{"label": "2", "images": []}', "headers": {"Content-Type": "text/plain"}}, 415,
         "Content-Type: application/json"),
    ]
    for method, path, request, expected, message in cases:
        status, out = s.call(method, path, **request)
        assert (status, message in out["error"], "Received" in out["error"]) == (expected, True, True), (path, out)
    status, out = _post_raw(s, "/enroll", {"Content-Type": "application/json"}, b"")
    assert status == 411 and "Content-Length" in out["error"]

    assert s.labels() == {"1": 2}
    assert state.read_bytes() == before
    assert s.stop() == 0


def test_connection_limit_and_host_check(serve):
    s = serve("--max-connections", "1")
    held = socket.create_connection((s.host, s.port), timeout=30)  # a client that sends nothing holds the one slot
    time.sleep(0.3)
    conn = http.client.HTTPConnection(s.host, s.port, timeout=30)
    conn.request("GET", "/labels")
    response = conn.getresponse()
    out = json.loads(response.read())
    conn.close()
    assert (response.status, response.getheader("Retry-After")) == (503, "1") and "at most 1" in out["error"], out
    held.close()
    deadline = time.monotonic() + 10
    while (status := s.call("GET", "/labels")[0]) == 503 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert status == 200

    # A client that asks one thing at a time never meets the limit: the slot is free once it has its answer.
    statuses = [s.call("GET", "/labels")[0] for _ in range(200)]
    assert statuses == [200] * 200, f"{statuses.count(503)} of 200 one-at-a-time requests got 503"

    # Without a token, a Host naming another machine is a browser led here by DNS rebinding.
    status, out = s.call("GET", "/labels", headers={"Host": f"evil.example:{s.port}"})
    assert status == 403 and "evil.example" in out["error"], out
    assert s.call("GET", "/labels", headers={"Host": f"localhost:{s.port}"})[0] == 200
    assert s.stop() == 0

"""The service's limits on a request's head (its request line and headers), which it reads before it can
check the token: too large is a 431 (414 for the request line alone) after at most MAX_HEADER_BYTES are
read, too slow a 408 at HEADER_SECONDS. So a client without the token costs a connection slot and a
bounded buffer, never the memory budget (issue 18, items 1 and 5)."""

from __future__ import annotations

import http.client  # before edgemeta.serve.http, which would otherwise import it with ssl blocked
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

import edgemeta.serve.http as served_http
from edgemeta.serve import Service
from edgemeta.serve.http import make_server

TOKEN = "s3cret-token-for-the-limits-test"


def _service() -> Service:
    """A service with a token and no model: enough for the head, the token check and the body."""
    return Service(SimpleNamespace(labels=[]), token=TOKEN)


@pytest.fixture
def server():
    """Starts an in-process server for `_service()` on a free loopback port; returns the port."""
    started = []

    def start(max_connections: int = 4) -> int:
        srv = make_server(_service(), "127.0.0.1", 0, max_connections)
        thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        started.append((srv, thread))
        return srv.server_address[1]

    yield start
    for srv, thread in started:
        srv.shutdown()
        srv.server_close()
        thread.join(5)


def _head(path: str = "/labels", headers: list[str] | tuple = (), token: str | None = None, method: str = "GET") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *headers]
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _exchange(host: str, port: int, request: bytes, timeout: float = 30) -> tuple[int, dict, dict]:
    """Sends `request` from a thread of its own (the service may answer before it has read all of it), reads
    the answer: (status, headers, JSON body)."""
    sock = socket.create_connection((host, port), timeout=timeout)

    def send() -> None:
        try:
            sock.sendall(request)
            sock.shutdown(socket.SHUT_WR)
        except OSError:  # the service stopped reading: its answer is what matters
            pass

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, dict(response.getheaders()), json.loads(response.read())
    finally:
        sender.join(timeout)
        sock.close()


@pytest.mark.parametrize("case", ["many long lines", "one huge line", "too many headers"])
def test_oversized_headers_are_a_431_in_json_before_the_token(server, case):
    port = server()
    headers = {"many long lines": [f"X-Pad-{i}: {'a' * 60_000}" for i in range(100)],  # 6 MB, as the review sent
               "one huge line": [f"X-Pad: {'a' * 1_000_000}"],
               "too many headers": [f"X-Header-{i}: 1" for i in range(200)]}[case]
    status, answer_headers, body = _exchange("127.0.0.1", port, _head(headers=headers))
    assert status == 431 and answer_headers["Content-Type"] == "application/json", (status, body)
    error = body["error"]
    if case == "too many headers":
        assert f"at most {served_http.MAX_HEADER_LINES} header lines" in error and "Received: more than" in error, error
    else:
        assert f"at most {served_http.MAX_HEADER_BYTES} bytes" in error and "Received: more than" in error, error
    # The same with the token: the head's limits come first, whoever sends it.
    status, _, _ = _exchange("127.0.0.1", port, _head(headers=headers, token=TOKEN))
    assert status == 431


def test_an_overlong_request_line_is_a_414(server):
    port = server()
    status, _, body = _exchange("127.0.0.1", port, _head(path="/labels/" + "a" * 100_000))
    assert status == 414 and f"at most {served_http.MAX_HEADER_BYTES} bytes" in body["error"], body


def test_ordinary_requests_are_served_as_before(server):
    port = server()
    # What a browser or curl sends, with a 4 KB cookie: far under the limits.
    browser = ["User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
               "Accept: application/json,text/html;q=0.9,*/*;q=0.8", "Accept-Language: en-GB,en;q=0.5",
               "Accept-Encoding: gzip, deflate, br", "Connection: keep-alive", f"Cookie: session={'c' * 4096}",
               "Sec-Fetch-Dest: empty", "Sec-Fetch-Mode: cors", "Sec-Fetch-Site: same-origin", "Priority: u=0"]
    assert _exchange("127.0.0.1", port, _head(headers=browser, token=TOKEN))[::2] == (200, {"labels": [], "count": 0})
    status, _, body = _exchange("127.0.0.1", port, _head(headers=browser))
    assert status == 401 and "Bearer" in body["error"], body  # the token is still checked, from the headers
    # Just under both limits: as many header lines as allowed, the head a few bytes short of the size limit.
    near = [f"X-Header-{i:02d}: " for i in range(served_http.MAX_HEADER_LINES - 2)]  # + Host + Authorization
    spare = served_http.MAX_HEADER_BYTES - len(_head(headers=near, token=TOKEN)) - 10
    near = [f"{line}{'v' * (spare // len(near))}" for line in near]
    assert len(_head(headers=near, token=TOKEN)) <= served_http.MAX_HEADER_BYTES
    assert _exchange("127.0.0.1", port, _head(headers=near, token=TOKEN))[0] == 200
    # A body sent in the same packets as the head is still read whole after it: this reaches the model's check.
    payload = b'{"images": ["AAAA"]}'
    post = _head("/classify", ["Content-Type: application/json", f"Content-Length: {len(payload)}"], TOKEN, "POST")
    status, _, body = _exchange("127.0.0.1", port, post + payload)
    assert status == 409 and "POST /enroll first" in body["error"], body


def _trickle(port: int, head: bytes, every: float) -> tuple[float, bytes]:
    """Sends `head` a byte every `every` seconds until the service answers or closes; (seconds until then,
    what it answered)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    start = time.monotonic()
    try:
        for byte in head:
            if select.select([sock], [], [], every)[0]:  # an answer, or the connection closed
                break
            sock.send(bytes([byte]))
        took = time.monotonic() - start
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return took, answer
    finally:
        sock.close()


def test_a_trickling_client_is_cut_off_at_the_header_deadline(server, monkeypatch):
    monkeypatch.setattr(served_http, "HEADER_SECONDS", 1.0)
    head = _head(token=TOKEN)  # 80 bytes at 0.1 s a byte: 8 s, were there no deadline

    # Another client is served while one trickles.
    port = server(max_connections=2)
    trickled: list = []
    trickler = threading.Thread(target=lambda: trickled.append(_trickle(port, head, 0.1)))
    trickler.start()
    time.sleep(0.3)
    assert _exchange("127.0.0.1", port, _head(token=TOKEN))[0] == 200
    trickler.join(10)
    took, answer = trickled[0]
    assert 0.9 < took < 2.0, f"the trickler was answered after {took:.2f} s (deadline 1 s)"
    assert answer.startswith(b"HTTP/1.0 408 "), answer[:200]
    error = json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]
    assert "within 1 s" in error and "Received:" in error, error

    # With one slot, the trickler holds it until its deadline, not for the 8 s it would take.
    port = server(max_connections=1)
    trickler = threading.Thread(target=_trickle, args=(port, head, 0.1))
    start = time.monotonic()
    trickler.start()
    time.sleep(0.3)
    assert _exchange("127.0.0.1", port, _head(token=TOKEN))[0] == 503
    while (status := _exchange("127.0.0.1", port, _head(token=TOKEN))[0]) == 503 and time.monotonic() - start < 5:
        time.sleep(0.05)
    served_after = time.monotonic() - start
    trickler.join(10)
    assert status == 200 and served_after < 2.0, f"{status} after {served_after:.2f} s (deadline 1 s)"

    # A connection that sends nothing is closed at the deadline too.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as silent:
        start = time.monotonic()
        silent.recv(1)
        assert time.monotonic() - start < 2.0


def _status_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))


def test_a_header_flood_without_the_token_stays_within_the_memory_budget(tmp_path):
    """The review's measurement: `edgemeta device serve` beyond loopback with a token and --memory-budget 96MB;
    16 connections at once, each sending 6 MB of headers (98 lines of 61.5 KB) and no token. Before the head was bounded
    the process peaked at 643 MiB, all for 401s."""
    budget = 96 * 2**20
    (tmp_path / "token").write_text(TOKEN + "\n")
    env = {k: v for k, v in os.environ.items() if k != "EDGEMETA_TOKEN"}
    command = [str(Path(sys.executable).with_name("edgemeta")), "device", "serve", "--preset", "omniglot",
               "--host", "0.0.0.0", "--port", "0", "--token-file", str(tmp_path / "token"), "--memory-budget", "96MB"]
    log = tmp_path / "service.log"
    with log.open("w") as err:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, text=True, env=env, cwd=tmp_path)
    try:
        line = proc.stdout.readline()
        assert "listening on http://" in line, (line, log.read_text())
        port = int(line.split("http://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
        # Reach it through a non-loopback address of this machine when it has one, as the review did.
        addresses = subprocess.run(["hostname", "-I"], capture_output=True, text=True).stdout.split()
        host = next((a for a in addresses if "." in a and not a.startswith("127.")), "127.0.0.1")
        idle = _status_kib(proc.pid, "VmHWM")

        # 98 lines, Host and the blank line: the 100 lines http.client.parse_headers reads whole before a 401.
        flood = _head(headers=[f"X-Pad-{i}: {'a' * 61_500}" for i in range(98)])
        statuses: list = []

        def client() -> None:
            try:
                statuses.append(_exchange(host, port, flood, timeout=60)[0])
            except (OSError, http.client.HTTPException, ValueError) as e:
                statuses.append(repr(e))

        clients = [threading.Thread(target=client) for _ in range(16)]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join(120)
        peak, after = _status_kib(proc.pid, "VmHWM"), _status_kib(proc.pid, "VmRSS")
        print(f"VmHWM idle {idle / 1024:.1f} MiB, after 16 x {len(flood)} bytes of headers: peak {peak / 1024:.1f} MiB, "
              f"resident {after / 1024:.1f} MiB; answers {sorted(map(str, statuses))}")
        assert peak * 1024 < budget, (f"16 connections of {len(flood)} header bytes each took the service's peak "
                                      f"RSS to {peak * 1024} bytes (from {idle * 1024} idle); the budget is {budget} bytes")
        assert statuses == [431] * 16, statuses
        conn = http.client.HTTPConnection(host, port, timeout=30)
        conn.request("GET", "/health")
        response = conn.getresponse()
        assert (response.status, json.loads(response.read())) == (200, {"status": "ok"})
        conn.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        proc.stdout.close()

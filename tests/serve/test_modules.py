"""The service's modules on their own, without a model or a listening socket: the package imports no
`http.server`, the module-level handler finds its service through its server, and the CLI refuses a bad
--unknown-threshold with the runtime's parser's message."""

from __future__ import annotations

import http.client  # before edgemeta.serve.http, which would otherwise import it with ssl blocked
import json
import socket
from types import SimpleNamespace

from edgemeta.serve import Service, main
from edgemeta.serve.http import Handler
from tests.harness import run_python


def test_the_package_leaves_http_server_to_make_server():
    code = """import sys
import edgemeta.serve
print('http.server' in sys.modules, 'ssl' in sys.modules)
from edgemeta.serve import make_server
print('http.server' in sys.modules, 'ssl' in sys.modules)"""
    result = run_python(code, timeout=60)
    assert result.returncode == 0 and result.stdout.split() == ["False", "False", "True", "False"], result


def _exchange(service: Service, request: bytes) -> tuple[int, str, dict, int]:
    """One request through `Handler` on a socket pair, its server a stand-in: (status, Content-Type, the JSON
    answer, how many times the connection's slot was released)."""
    released = []
    server = SimpleNamespace(service=service, release_slot=lambda: released.append(1))
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(request)
        Handler(ours, ("127.0.0.1", 40000), server)  # handles the request in its constructor
        ours.shutdown(socket.SHUT_WR)
        response = http.client.HTTPResponse(theirs)
        response.begin()
        return response.status, response.getheader("Content-Type"), json.loads(response.read()), len(released)


def test_the_handler_serves_the_service_its_server_carries(capsys):
    service = Service(SimpleNamespace(labels=["a", "b"], shots={"a": 3, "b": 1}.__getitem__))
    status, kind, body, released = _exchange(service, b"GET /labels HTTP/1.0\r\nHost: localhost:8765\r\n\r\n")
    assert (status, kind, released) == (200, "application/json", 1)
    assert body == {"labels": [{"label": "a", "shots": 3}, {"label": "b", "shots": 1}], "count": 2}
    status, _, body, released = _exchange(service, b"GET /labels HTTP/1.0\r\nHost: evil.example\r\n\r\n")
    assert (status, released) == (403, 1) and "evil.example" in body["error"]
    assert '"GET /labels" 403' in capsys.readouterr().err


def test_a_bad_unknown_threshold_is_refused_before_the_bundle_is_read(capsys):
    assert main(["--bundle", "no-such-bundle", "--unknown-threshold", "-1"]) == 2
    err = capsys.readouterr().err
    assert "--unknown-threshold takes 'calibrated', 'none' or a distance >= 0. Received: '-1'" in err, err


def _raw_exchange(service: Service, request: bytes, method: str = "GET") -> tuple[int, dict, bytes]:
    """Like `_exchange`, for answers `_exchange` can't parse: (status, headers, raw body)."""
    server = SimpleNamespace(service=service, release_slot=lambda: None)
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(request)
        theirs.shutdown(socket.SHUT_WR)  # all the client sends: a short body ends here
        Handler(ours, ("127.0.0.1", 40000), server)
        ours.shutdown(socket.SHUT_WR)
        response = http.client.HTTPResponse(theirs, method=method)
        response.begin()
        return response.status, dict(response.getheaders()), response.read()


def _health_service() -> Service:
    service = Service(SimpleNamespace(labels=[]))
    service.health = lambda full: {"status": "ok", "full": full}
    return service


def test_health_refuses_a_foreign_host_too():
    # DNS rebinding: a page on evil.example that resolves to 127.0.0.1 must not read the board's state.
    status, _, body, _ = _exchange(_health_service(), b"GET /health HTTP/1.0\r\nHost: evil.example:8765\r\n\r\n")
    assert status == 403 and "evil.example" in body["error"]
    status, _, body, _ = _exchange(_health_service(), b"GET /health HTTP/1.0\r\nHost: localhost:8765\r\n\r\n")
    assert status == 200 and body["status"] == "ok"


def test_head_gets_the_status_and_headers_without_a_body():
    status, headers, body = _raw_exchange(_health_service(), b"HEAD /health HTTP/1.0\r\nHost: localhost\r\n\r\n", "HEAD")
    assert status == 200 and headers["Content-Type"] == "application/json" and int(headers["Content-Length"]) > 0
    assert body == b""


def test_control_characters_in_the_path_are_escaped_in_the_log(capsys):
    status, _, _ = _raw_exchange(_health_service(), b"GET /x\x1b[31mred HTTP/1.0\r\nHost: localhost\r\n\r\n")
    err = capsys.readouterr().err
    assert status == 404 and "\x1b" not in err and "\\x1b[31mred" in err, err
    # A request line the base class refuses is logged through log_message: escaped there too.
    status, _, _ = _raw_exchange(_health_service(), b"GET /a\x1b[2J b c HTTP/1.0\r\n\r\n")
    err = capsys.readouterr().err
    assert status == 400 and "\x1b" not in err and "\\x1b[2J" in err, err


def test_a_deeply_nested_body_is_a_400_not_a_traceback(capsys):
    for depth in (300, 980):  # 300 parses, then is refused; 980 may already stop the parser (2 KB either way)
        body = b"[" * depth + b"]" * depth
        request = (b"POST /classify HTTP/1.0\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                   b"Content-Length: %d\r\n\r\n" % len(body)) + body
        status, _, answer, _ = _exchange(_health_service(), request)
        assert status == 400, answer
        assert depth != 300 or "nests too deep" in answer["error"], answer
    assert "Traceback" not in capsys.readouterr().err


def test_a_slow_or_broken_body_does_not_wait_for_the_model(monkeypatch):
    import edgemeta.serve.api as api

    monkeypatch.setattr(api, "WORK_WAIT_SECONDS", 0.2)  # were the model's lock taken first: 503 after this
    service = _health_service()
    service._work.acquire()  # another request is using the model
    try:
        request = (b"POST /classify HTTP/1.0\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                   b"Content-Length: 100\r\n\r\n{\"images\"")
        status, _, answer = _raw_exchange(service, request)
    finally:
        service._work.release()
    assert status == 400 and b"ended early" in answer, answer

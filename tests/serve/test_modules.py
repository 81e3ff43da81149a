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

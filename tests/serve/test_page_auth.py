"""The page's HTTP side without a browser, against the real service as a process: the page's files and their headers,
sign-in sessions (POST /session, the cookie, logout, wrong tokens slowed and serialised), the cross-site checks on
cookie-signed requests, the Host check and body limits on the page and /session, the token kept out of the log; and the
endpoints the page added (rename, thumbnails, the richer labels, the camera routes without a camera)."""

from __future__ import annotations

import base64
import http.client
import io
import json
import threading
import time

import pytest
from PIL import Image

from edgemeta.serve.api import LOGIN_FAILURE_SECONDS, MAX_LOGIN_BYTES, SESSION_SECONDS, Sessions
from tests.runtime.test_camera import drawing
from tests.serve.browser import PageService

TOKEN = "auth-test-token-abcdef0123456789"
WRONG = "a-wrong-token-for-the-auth-test"


class Client:
    """Raw HTTP requests to a service on 127.0.0.1, headers exactly as given (Host too)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.origin = f"http://127.0.0.1:{port}"

    def request(self, method: str, path: str, payload=None, headers: dict | None = None,
                body: bytes | None = None) -> tuple[int, dict, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            sent = dict(headers or {})
            if payload is not None:
                body = json.dumps(payload).encode()
                sent.setdefault("Content-Type", "application/json")
            conn.request(method, path, body=body, headers=sent)
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()

    def json(self, method: str, path: str, payload=None, **kwargs) -> tuple[int, dict]:
        status, headers, data = self.request(method, path, payload, **kwargs)
        assert headers["content-type"] == "application/json", (status, headers, data[:200])
        return status, (json.loads(data) if data else {})

    def sign_in(self, token: str = TOKEN) -> str:
        status, headers, data = self.request("POST", "/session", {"token": token}, headers={"Origin": self.origin})
        assert status == 204 and data == b"", (status, data)
        name, _, rest = headers["set-cookie"].partition("=")
        assert name == "edgemeta_session"
        return rest.split(";")[0]

    def page(self, session: str, **headers: str) -> dict:
        """The headers the page's own requests carry: its cookie and its Origin."""
        return {"Cookie": f"edgemeta_session={session}", "Origin": self.origin, **headers}


def png(kind: str, variant: int) -> str:
    out = io.BytesIO()
    Image.fromarray(drawing(kind, variant)).save(out, "PNG")
    return base64.b64encode(out.getvalue()).decode()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    service = PageService(tmp_path_factory.mktemp("auth"), token=TOKEN)
    yield service, Client(service.port)
    assert service.stop() == 0, service.log()
    log = service.log()
    # Nothing a client sent as a token reached the log: not the token, not the wrong guesses.
    assert TOKEN not in log and WRONG not in log, log


@pytest.fixture(scope="module")
def open_service(tmp_path_factory):
    """A service without a token (loopback only): the page works without sign-in."""
    service = PageService(tmp_path_factory.mktemp("open"))
    yield service, Client(service.port)
    assert service.stop() == 0, service.log()


# -- the page's files ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("path", "kind", "marker"), [("/", "text/html; charset=utf-8", b"<!doctype html>"),
                                                      ("/page/app.js", "text/javascript; charset=utf-8", b"use strict"),
                                                      ("/page/style.css", "text/css; charset=utf-8", b":root")])
def test_the_page_loads_without_the_token_with_a_strict_policy(served, path, kind, marker):
    _, client = served
    status, headers, data = client.request("GET", path)
    assert status == 200 and headers["content-type"] == kind and marker in data
    assert int(headers["content-length"]) == len(data) and headers["cache-control"] == "no-cache"
    policy = headers["content-security-policy"]
    assert "default-src 'self'" in policy and "img-src 'self' data: blob:" in policy and "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy and headers["x-content-type-options"] == "nosniff"
    status, headers, data = client.request("HEAD", path)
    assert status == 200 and data == b"" and headers["content-type"] == kind


def test_the_page_has_no_inline_script_or_style_and_nothing_from_elsewhere():
    from edgemeta.serve.http import PAGE_DIR

    html = (PAGE_DIR / "index.html").read_text()
    assert html.count("<script") == 1 and '<script src="/page/app.js" defer></script>' in html
    assert " style=" not in html and "<style" not in html and " on" + "click=" not in html
    assert 'name="viewport"' in html and 'capture="environment" multiple' in html
    # The token field has no name and its form posts: even without app.js, a submit never puts the token in a URL.
    assert '<form id="login-form" method="post" action="/session"' in html and 'name="token"' not in html
    for name in ("index.html", "app.js", "style.css"):
        text = (PAGE_DIR / name).read_text()
        assert "http://" not in text.replace("http://<", "") and "https://" not in text and "//cdn" not in text, name


def test_without_sign_in_nothing_else_answers(served):
    _, client = served
    for method, path, payload in [("GET", "/labels", None), ("GET", "/labels/a/thumbnail.jpg", None),
                                  ("GET", "/camera", None), ("GET", "/camera/frame.jpg", None),
                                  ("POST", "/rename", {"label": "a", "to": "b"}), ("POST", "/enroll", {}),
                                  ("DELETE", "/labels/a", None)]:
        status, answer = client.json(method, path, payload, headers={"Origin": client.origin})
        assert status == 401 and "no Authorization header or session cookie" in answer["error"], (path, answer)
    assert client.json("GET", "/health") == (200, {"status": "ok"})
    assert client.json("GET", "/session") == (200, {"token_required": True, "signed_in": False})


# -- sessions ------------------------------------------------------------------------------------------------------
def test_a_session_cookie_stands_for_the_token_until_logout(served):
    _, client = served
    status, headers, _ = client.request("POST", "/session", {"token": TOKEN}, headers={"Origin": client.origin})
    assert status == 204 and "content-length" not in headers
    cookie = headers["set-cookie"]
    session = cookie.split(";")[0].split("=", 1)[1]
    assert cookie == f"edgemeta_session={session}; HttpOnly; SameSite=Strict; Path=/; Max-Age={SESSION_SECONDS}"
    assert len(base64.urlsafe_b64decode(session + "=")) == 32 and TOKEN not in cookie
    assert client.sign_in() != session  # a new id each time
    assert client.json("GET", "/session", headers=client.page(session)) == (200, {"token_required": True, "signed_in": True})
    status, health = client.json("GET", "/health", headers=client.page(session))
    assert status == 200 and health["token_required"] and health["bundle"]["name"] == "omniglot"
    assert client.json("GET", "/labels", headers=client.page(session))[0] == 200
    # Logout ends it: the same cookie is refused afterwards, and the answer deletes it.
    status, headers, _ = client.request("POST", "/session/logout", headers=client.page(session))
    assert status == 204 and headers["set-cookie"] == "edgemeta_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"
    status, answer = client.json("GET", "/labels", headers=client.page(session))
    assert status == 401 and "unknown or expired" in answer["error"]
    status, answer = client.json("GET", "/labels", headers=client.page("forged-session-id"))
    assert status == 401 and "unknown or expired" in answer["error"]
    # An Authorization header decides alone: a wrong Bearer token is not rescued by a good cookie.
    fresh = client.sign_in()
    status, answer = client.json("GET", "/labels", headers=client.page(fresh, Authorization=f"Bearer {WRONG}"))
    assert status == 401 and "a wrong token" in answer["error"]


def test_a_wrong_token_is_refused_slowly_and_one_at_a_time(served):
    _, client = served
    results = []

    def guess() -> None:
        start = time.monotonic()
        status, headers, data = client.request("POST", "/session", {"token": WRONG}, headers={"Origin": client.origin})
        results.append((status, "set-cookie" in headers, json.loads(data), time.monotonic() - start))

    start = time.monotonic()
    threads = [threading.Thread(target=guess) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.monotonic() - start
    assert [r[:2] for r in results] == [(401, False)] * 2 and all("Wrong token" in r[2]["error"] for r in results)
    assert all(WRONG not in r[2]["error"] for r in results)
    assert min(r[3] for r in results) >= LOGIN_FAILURE_SECONDS * 0.95
    assert took >= 2 * LOGIN_FAILURE_SECONDS * 0.95, took  # serialised: two guesses take two delays
    # A good token is answered at once.
    start = time.monotonic()
    client.sign_in()
    assert time.monotonic() - start < LOGIN_FAILURE_SECONDS / 2


@pytest.mark.parametrize(("body", "headers", "status", "expected"), [
    (b'{"token": "x"}', {"Content-Type": "text/plain"}, 415, "Content-Type: application/json"),
    (b"x" * (MAX_LOGIN_BYTES + 1), {"Content-Type": "application/json"}, 413, f"at most {MAX_LOGIN_BYTES} bytes"),
    (json.dumps({"token": TOKEN, "user": "me"}).encode(), {"Content-Type": "application/json"}, 400, "['token', 'user']"),
    (json.dumps([TOKEN]).encode(), {"Content-Type": "application/json"}, 400, "Received: list"),
    (json.dumps({"token": 12}).encode(), {"Content-Type": "application/json"}, 400, '{"token"'),
    (b"{", {"Content-Type": "application/json"}, 400, "not valid JSON"),
])
def test_a_bad_sign_in_body_is_refused_without_echoing_it(served, body, headers, status, expected):
    _, client = served
    code, answer = client.json("POST", "/session", body=body, headers={"Origin": client.origin, **headers})
    assert code == status and expected in answer["error"], answer
    assert TOKEN not in answer["error"]


def test_sessions_are_bounded_and_expire():
    sessions = Sessions(seconds=0.2, limit=3)
    first = sessions.open()
    others = [sessions.open() for _ in range(3)]
    assert not sessions.valid(first) and all(sessions.valid(s) for s in others) and len(sessions) == 3
    sessions.close(others[0])
    assert not sessions.valid(others[0]) and len(sessions) == 2
    time.sleep(0.25)
    assert not any(sessions.valid(s) for s in others) and len(sessions) == 0


# -- cross-site requests -------------------------------------------------------------------------------------------
def test_cookie_signed_changes_must_come_from_the_page(served):
    _, client = served
    session = client.sign_in()
    cookie = {"Cookie": f"edgemeta_session={session}"}
    enroll = {"label": "csrf", "images": [png("circle", 0)]}
    for headers, where in [({}, "neither"), ({"Origin": "http://evil.example"}, "Origin 'http://evil.example'"),
                           ({"Origin": "null"}, "Origin 'null'"),
                           ({"Origin": f"http://127.0.0.1:{client.port + 1}"}, "Origin"),
                           ({"Referer": "http://evil.example/page"}, "Referer 'http://evil.example/page'")]:
        status, answer = client.json("POST", "/enroll", enroll, headers={**cookie, **headers})
        assert status == 403 and where in answer["error"], (headers, answer)
        status, answer = client.json("DELETE", "/labels/csrf", headers={**cookie, **headers})
        assert status == 403, (headers, answer)
    assert client.json("GET", "/labels", headers=cookie)[1]["labels"] == []  # nothing was taught
    # JSON stays required (a form post is not), even from the page's origin.
    status, answer = client.json("POST", "/enroll", body=json.dumps(enroll).encode(),
                                 headers={**client.page(session), "Content-Type": "text/plain"})
    assert status == 415
    # From the page: its Origin, or its Referer when a browser sent no Origin.
    assert client.json("POST", "/enroll", enroll, headers=client.page(session))[0] == 200
    status, answer = client.json("POST", "/forget", {"label": "csrf"}, headers={**cookie, "Referer": f"{client.origin}/"})
    assert status == 200 and answer["forgot"] == "csrf"
    # The Host header decides what "this service" is: a page opened as localhost is the same site as its Host.
    local = f"localhost:{client.port}"
    status, _ = client.json("POST", "/forget", {"label": "none"}, headers={**cookie, "Host": local, "Origin": f"http://{local}"})
    assert status == 404
    # A Bearer client (curl) sends no Origin and needs none; a browser page elsewhere that has the token still cannot.
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert client.json("POST", "/forget", {"label": "none"}, headers=bearer)[0] == 404
    assert client.json("POST", "/forget", {"label": "none"}, headers={**bearer, "Origin": "http://evil.example"})[0] == 403


def test_the_host_check_and_limits_apply_to_the_page_and_sign_in(open_service):
    _, client = open_service
    evil = {"Host": f"evil.example:{client.port}"}
    for method, path, payload in [("GET", "/", None), ("GET", "/page/app.js", None), ("GET", "/session", None),
                                  ("POST", "/session", {"token": "x"})]:
        status, answer = client.json(method, path, payload, headers=evil)
        assert status == 403 and "evil.example" in answer["error"], (path, answer)
    # Without a token the page needs no sign-in: it says so, and sign-in is refused as meaningless.
    assert client.json("GET", "/session") == (200, {"token_required": False, "signed_in": True})
    status, answer = client.json("POST", "/session", {"token": "x"})
    assert status == 409 and "no token" in answer["error"]
    assert client.request("GET", "/")[0] == 200 and client.json("GET", "/labels")[0] == 200
    # A cross-site page cannot change a token-less service either, whatever it sends.
    status, answer = client.json("POST", "/forget", {"label": "x"}, headers={"Origin": "http://evil.example"})
    assert status == 403 and "Cross-site" in answer["error"]
    status, answer = client.json("POST", "/enroll", body=b"x" * 10, headers={"Content-Length": str(8 * 2**20)})
    assert status == 413


# -- the endpoints the page added ----------------------------------------------------------------------------------
def test_rename_thumbnails_and_labels(open_service):
    _, client = open_service
    for label, kind in (("a", "circle"), ("b", "cross")):
        status, answer = client.json("POST", "/enroll", {"label": label, "images": [png(kind, 0), png(kind, 1)]})
        assert status == 200, answer
    status, listed = client.json("GET", "/labels")
    rows = {row["label"]: row for row in listed["labels"]}
    assert set(rows) == {"a", "b"} and rows["a"]["shots"] == 2 and rows["a"]["has_thumbnail"] is True
    assert abs(rows["a"]["last_used"] - time.time()) < 120 and rows["a"]["enrolled"] <= rows["a"]["last_used"]
    status, headers, jpeg = client.request("GET", "/labels/a/thumbnail.jpg")
    assert status == 200 and headers["content-type"] == "image/jpeg" and jpeg[:2] == b"\xff\xd8"
    assert max(Image.open(io.BytesIO(jpeg)).size) <= 64

    for body, code, expected in [({"label": "zz", "to": "c"}, 404, "Enrolled labels: ['a', 'b']"),
                                 ({"label": "a", "to": "b"}, 409, "already enrolled"),
                                 ({"label": "a", "to": ""}, 400, "label must be a non-empty printable string"),
                                 ({"label": "a"}, 400, "missing ['to']"),
                                 ({"label": "a", "to": "c", "x": 1}, 400, "unknown ['x']")]:
        status, answer = client.json("POST", "/rename", body)
        assert status == code and expected in answer["error"], (body, answer)
    assert {row["label"] for row in client.json("GET", "/labels")[1]["labels"]} == {"a", "b"}  # nothing changed
    status, answer = client.json("POST", "/rename", {"label": "a", "to": "ring / ◯"})
    assert (status, answer) == (200, {"renamed": "a", "to": "ring / ◯", "classes": 2})
    status, headers, renamed = client.request("GET", "/labels/ring%20%2F%20%E2%97%AF/thumbnail.jpg")
    assert status == 200 and renamed == jpeg  # the thumbnail went with the class
    status, answer = client.json("GET", "/labels/a/thumbnail.jpg")
    assert status == 404 and "No class is enrolled under that label. Received: 'a'" in answer["error"]
    status, answer = client.json("POST", "/labels/a/thumbnail.jpg")
    assert status == 405 and "takes GET or DELETE" in answer["error"]
    status, answer = client.json("DELETE", "/labels/ring%20%2F%20%E2%97%AF")
    assert status == 200 and answer["forgot"] == "ring / ◯"


def test_the_camera_routes_say_there_is_no_camera(open_service):
    _, client = open_service
    for method, path, payload in [("GET", "/camera", None), ("GET", "/camera/frame.jpg", None),
                                  ("POST", "/camera/teach", {"label": "x"}), ("POST", "/camera/classify", {})]:
        status, answer = client.json(method, path, payload)
        assert status == 404 and "No camera is configured" in answer["error"], (path, answer)
    status, health = client.json("GET", "/health")
    assert health["camera"] is None and health["memory"]["adapter"]["classes"] == health["classes"]

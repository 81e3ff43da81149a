"""The service over HTTP: the request handler (routing, a bounded read of the request line and headers,
body reading, JSON answers, the page's files, sign-in cookies and cross-site checks) and the threaded server
that caps connections and waits for the requests in flight at shutdown.

Importing this module imports `http.server`, with `ssl` blocked unless something loaded it already
(docs/service.md, "Memory"); `edgemeta.serve` itself imports it only when a server is made."""

from __future__ import annotations

import io
import json
import socket
import socketserver
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from edgemeta.serve.api import (
    DEFAULT_HOST,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_PORT,
    MAX_LOGIN_BYTES,
    SESSION_COOKIE,
    SESSION_SECONDS,
    HTTPError,
    Service,
    fields_of,
    log,
)

SOCKET_TIMEOUT = 10.0  # seconds one read or write may stall
HEADER_SECONDS = 10.0  # the request line and headers must arrive within this, or 408
BODY_SECONDS = 30.0  # a whole body must arrive within this, or 408
# The request line and headers are read before the token can be checked, so they are bounded for everyone:
# at most this many bytes together (414 for a request line alone, else 431), and this many header lines
# (431). Browsers and curl send under 8 KB and 30 lines; nginx allows 1 KB, then 4 x 8 KB, Apache 8 KB a line.
MAX_HEADER_BYTES = 16 * 1024
MAX_HEADER_LINES = 64
LINGER_SECONDS = 2.0  # reading what a refused client still sends, so it gets our answer
# path -> {method: endpoint}. "/labels/<label>" (DELETE) and "/labels/<label>/thumbnail.jpg" (GET) are matched
# apart, in _route. HEAD is answered as GET without the body.
ROUTES: dict[str, dict[str, str]] = {
    "/health": {"GET": "health"}, "/labels": {"GET": "labels"}, "/enroll": {"POST": "enroll"},
    "/classify": {"POST": "classify"}, "/forget": {"POST": "forget"}, "/rename": {"POST": "rename"},
    "/camera": {"GET": "camera"}, "/camera/frame.jpg": {"GET": "camera_frame"}, "/camera/teach": {"POST": "camera_teach"},
    "/camera/classify": {"POST": "camera_classify"},
    "/session": {"GET": "session", "POST": "login"}, "/session/logout": {"POST": "logout"},
    "/": {"GET": "page"}, "/page/app.js": {"GET": "asset"}, "/page/style.css": {"GET": "asset"},
}
THUMBNAIL_SUFFIX = "/thumbnail.jpg"
ENDPOINTS = ", ".join(
    [f"{method} {path}" for path, methods in ROUTES.items() if not path.startswith("/page/") for method in methods]
    + ["DELETE /labels/<label>", f"GET /labels/<label>{THUMBNAIL_SUFFIX}"])  # "GET /" stands for the page's files
JSON_TYPE = "application/json"
JPEG_TYPE = "image/jpeg"
# The page: static files inside the package, read once, served without the token (the page must load to ask for it).
PAGE_DIR = Path(__file__).resolve().parent / "page"
PAGE_FILES = {"/": ("index.html", "text/html; charset=utf-8"),
              "/page/app.js": ("app.js", "text/javascript; charset=utf-8"),
              "/page/style.css": ("style.css", "text/css; charset=utf-8")}
# On every answer: no inline script or style, nothing from elsewhere, no framing (clickjacking), no MIME sniffing.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; base-uri 'none'; "
                               "form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",  # the Referer the cross-site check falls back on, never sent elsewhere
}
STATE_CHANGING = ("POST", "DELETE", "PUT", "PATCH")
# A request body nested deeper than this is refused: no endpoint takes more than 3 levels, and walking
# a deeper one (a 2 KB body can nest 980 levels) would exhaust the recursion limit.
MAX_JSON_DEPTH = 16


def _http_server_module() -> Any:
    """`http.server`, imported without `ssl` when nothing has loaded them yet: `http.client`, which
    `http.server` imports, loads ssl (and OpenSSL, ~4 MB resident, measured) only for HTTPS clients
    this process never makes. A None in sys.modules makes an import fail, so http.client skips it."""
    if any(name in sys.modules for name in ("ssl", "http.client", "http.server")):
        import http.server
        return http.server
    sys.modules["ssl"] = None  # type: ignore[assignment]
    try:
        import http.server
    finally:
        del sys.modules["ssl"]
    return http.server


_http_server = _http_server_module()


@dataclass
class Reply:
    """An answer that is not a JSON 200: the page's files, a thumbnail or camera still, a 204 with a cookie."""

    status: int = 200
    body: bytes = b""
    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


def _route(method: str, path: str) -> tuple[str, str | None]:
    """(the endpoint's name, the label in the path or None); 404 or 405 otherwise. `path` is still percent-encoded."""
    methods = ROUTES.get(path)
    if methods is not None:
        if method not in methods:
            allowed = ", ".join(methods)
            raise HTTPError(405, f"{path} takes {' or '.join(methods)}. Received: {method}", {"Allow": allowed})
        return methods[method], None
    if path.startswith("/labels/") and len(path) > len("/labels/"):
        rest = path[len("/labels/"):]
        thumbnail = rest.endswith(THUMBNAIL_SUFFIX) and len(rest) > len(THUMBNAIL_SUFFIX)
        if method == "GET" and thumbnail:
            return "thumbnail", unquote(rest[: -len(THUMBNAIL_SUFFIX)])
        if method == "DELETE":  # the whole rest: a label may hold "/" (percent-encoded or not)
            return "forget", unquote(rest)
        allowed = "GET, DELETE" if thumbnail else "DELETE"
        raise HTTPError(405, f"/labels/<label>{THUMBNAIL_SUFFIX if thumbnail else ''} takes {allowed.replace(', ', ' or ')}. "
                             f"Received: {method}", {"Allow": allowed})
    raise HTTPError(404, f"No such endpoint. Received: {method} {path[:100]}. Endpoints: {ENDPOINTS}")


_page_files: dict[str, bytes] = {}
_page_lock = threading.Lock()


def page_file(path: str) -> Reply:
    """The page's file at `path` (a key of PAGE_FILES), read from the package once."""
    name, kind = PAGE_FILES[path]
    with _page_lock:
        data = _page_files.get(name)
        if data is None:
            try:
                data = _page_files[name] = (PAGE_DIR / name).read_bytes()
            except OSError as e:
                raise HTTPError(404, f"The page's files are not installed with this edgemeta ({e}); the API answers "
                                     f"without them. Received: GET {path}") from None
    # no-cache: revalidated at every load, so an upgraded board never runs an old app.js against a new API.
    return Reply(200, data, kind, {"Cache-Control": "no-cache"})


def session_cookie(headers: list[str] | None) -> str | None:
    """The page's session id from the request's Cookie header(s), or None."""
    for header in headers or []:
        for pair in header.split(";"):
            name, equals, value = pair.strip().partition("=")
            if equals and name == SESSION_COOKIE and value.strip():
                return value.strip()
    return None


def set_cookie(session: str, seconds: int) -> str:
    """The Set-Cookie value for `session` (an empty one with 0 seconds deletes it). No `Secure`: the service speaks
    plain HTTP (a TLS proxy in front may add it)."""
    return f"{SESSION_COOKIE}={session}; HttpOnly; SameSite=Strict; Path=/; Max-Age={seconds}"


def same_site(source: str, host: str) -> bool:
    """Whether the URL `source` (an Origin or Referer) names the host and port of the Host header `host`."""
    parts = urlsplit(source.strip())
    default = {"http": ":80", "https": ":443"}.get(parts.scheme.lower(), "")

    def hostport(text: str) -> str:
        text = text.rpartition("@")[2].strip().lower()  # no userinfo in a Host, nor in a page's Origin
        return text[: -len(default)] if default and text.endswith(default) else text

    return bool(parts.netloc) and bool(host) and hostport(parts.netloc) == hostport(host)


def json_depth(value: Any, limit: int) -> int:
    """How deep `value` nests arrays and objects, counted without recursion and only up to `limit + 1`."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, dict)):
            deepest = max(deepest, depth)
            if depth > limit:
                return depth
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def printable(text: str) -> str:
    """`text` with control characters escaped (\\x1b, \\n), so a request cannot forge or colour log lines."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class Handler(_http_server.BaseHTTPRequestHandler):
    """One connection, one request: routed to `self.server.service`; every answer, errors included, is JSON."""

    server: Server
    server_version = "edgemeta"
    protocol_version = "HTTP/1.0"  # one request per connection: no idle keep-alive holding a thread
    timeout = SOCKET_TIMEOUT
    _unread = 0
    _header_bytes = b""  # the header lines `_read_head` read, for `parse_request`

    def version_string(self) -> str:
        return self.server_version  # no Python version for a scanner to match against

    def handle_one_request(self) -> None:
        # http.server's own reads the request line (up to 64 KB) and then up to 100 header lines of 64 KB each,
        # whole and with no overall deadline, before anything here can look at them: 6 MB a connection without
        # the token, and a client sending a byte every few seconds held its slot for as long as it liked.
        self.close_connection = True  # HTTP/1.0: one request per connection
        self.command, self.request_version, self.requestline = None, "", ""
        try:
            head, refused = self._read_head(), None
        except HTTPError as e:
            head, refused = [], e
        self.connection.settimeout(SOCKET_TIMEOUT)  # _read_head shortened it to its deadline; the answer needs it
        if refused is not None:
            self._refuse_head(refused)
            return
        if not head:
            return
        self.raw_requestline, self._header_bytes = head[0], b"".join(head[1:])
        try:
            if not self.parse_request():  # it answered already
                return
            method = getattr(self, f"do_{self.command}", None)
            if method is None:
                self.send_error(501, f"Unsupported method ({self.command[:20]!r})")
                return
            method()
            self.wfile.flush()
        except TimeoutError as e:  # a write stalled SOCKET_TIMEOUT
            self.log_error("Request timed out: %r", e)

    def _read_head(self) -> list[bytes]:
        """The request line and the header lines, each with its line end, read within HEADER_SECONDS and
        MAX_HEADER_BYTES: the body (if any) stays in `rfile`. Empty when the client sent nothing before
        closing or the deadline. Raises HTTPError 408 (too slow), 414 or 431 (too large)."""
        lines: list[bytes] = []
        line = bytearray()
        size = 0
        deadline = time.monotonic() + HEADER_SECONDS
        while True:
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    raise TimeoutError
                # Each read waits at most until the deadline: a byte every few seconds does not extend it.
                self.connection.settimeout(min(left, SOCKET_TIMEOUT))
                chunk = self.rfile.peek(1)  # what is buffered, or one read of the socket
            except TimeoutError:
                if not size:  # an idle connection: nothing to answer
                    self.log_message("%s", f"sent no request within {HEADER_SECONDS:g} s; closed")
                    return []
                raise HTTPError(408, f"The request line and headers did not arrive within {HEADER_SECONDS:g} s. "
                                     f"Received: {size} bytes, {max(len(lines) - 1, 0)} complete header line(s)") from None
            except OSError as e:  # the client reset the connection: no one to answer
                self.log_message("%s", f"connection lost after {size} bytes of the request's head ({e})")
                return []
            if not chunk:  # the client stopped sending: what came is the head, as http.server takes it
                return [*lines, bytes(line)] if line else lines
            end = chunk.find(b"\n")
            take = min(len(chunk) if end < 0 else end + 1, MAX_HEADER_BYTES + 1 - size)
            line += self.rfile.read(take)  # already buffered: returns at once
            size += take
            if size > MAX_HEADER_BYTES:
                if not lines:
                    raise HTTPError(414, f"The request line is too long: at most {MAX_HEADER_BYTES} bytes for it and "
                                         f"the headers together. Received: more than {MAX_HEADER_BYTES} bytes "
                                         f"starting {printable(bytes(line[:40]).decode('latin-1'))!r}")
                raise HTTPError(431, f"The request line and headers are too large: at most {MAX_HEADER_BYTES} bytes "
                                     f"together. Received: more than {MAX_HEADER_BYTES} bytes ({len(lines) - 1} complete "
                                     "header line(s), then one that does not fit)")
            if not line.endswith(b"\n"):
                continue
            if line in (b"\r\n", b"\n"):  # the blank line that ends the head (first: no request line at all)
                return [*lines, bytes(line)]
            lines.append(bytes(line))
            line = bytearray()
            if len(lines) - 1 > MAX_HEADER_LINES:
                raise HTTPError(431, f"Too many header lines: at most {MAX_HEADER_LINES} header lines. "
                                     f"Received: more than {MAX_HEADER_LINES} ({size} bytes so far)")

    def _refuse_head(self, error: HTTPError) -> None:
        """Answers a head refused by `_read_head`, then reads and drops what the client still sends (for at
        most LINGER_SECONDS, 64 KB at a time) so that it gets the answer, the connection's slot kept meanwhile."""
        self.log_message("%s", f"{error.status} {error.message}")
        self._unread = 1  # what is left of the head is unknown: the slot is freed as the thread ends, after the drain
        self._send_json(error.status, {"error": error.message}, {"Connection": "close"})
        self._discard_unread()

    def parse_request(self) -> bool:
        # The base class parses the headers from `rfile`: give it the bounded bytes `_read_head` read.
        connection_file, self.rfile = self.rfile, io.BytesIO(self._header_bytes)
        try:
            return super().parse_request()
        finally:
            self.rfile = connection_file

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_PATCH(self) -> None:
        self._serve("PATCH")

    def do_HEAD(self) -> None:
        self._serve("HEAD")  # a GET's status and headers, no body (monitors probe /health this way)

    def _serve(self, method: str) -> None:
        start, status, path = time.monotonic(), 500, "?"
        try:
            self._unread = self._announced_length()
            path = urlsplit(self.path).path  # the query is dropped: it is never read, and never logged
            try:
                answer = self._dispatch(method, path)
                if not isinstance(answer, Reply):
                    answer = Reply(200, json.dumps(answer).encode(), JSON_TYPE)
            except HTTPError as e:
                answer = Reply(e.status, json.dumps({"error": e.message}).encode(), JSON_TYPE, e.headers)
            except Exception as e:  # a bug: the client gets no traceback, the log does
                log(f"internal error on {method} {path}:\n{traceback.format_exc()}")
                message = (f"Internal error ({type(e).__name__}); see the service's log. "
                           f"Received: {method} {path[:100]}")
                answer = Reply(500, json.dumps({"error": message}).encode(), JSON_TYPE)
            status = answer.status
            self._send(answer)
            if self._unread:
                self._discard_unread()
        finally:
            took = 1000 * (time.monotonic() - start)
            log(f'{self.client_address[0]} "{method} {printable(path[:200])}" {status} {took:.0f} ms')

    def _dispatch(self, method: str, path: str) -> dict | Reply:
        service = self.server.service
        name, argument = _route("GET" if method == "HEAD" else method, path)
        service.check_host(self.headers.get("Host"))  # every path: /health too tells a rebinding page things
        if name in ("page", "asset"):  # the page loads without the token: it is what asks for it
            return page_file(path)
        session = session_cookie(self.headers.get_all("Cookie"))
        problem, by_cookie = service.authorize(self.headers.get_all("Authorization"), session)
        if method in STATE_CHANGING:  # before the body is read, and before a wrong token's delay
            self._check_origin(required=by_cookie or (name == "logout" and session is not None))
        if name == "health":
            return service.health(full=problem is None)
        if name == "session":
            return {"token_required": service.token is not None, "signed_in": problem is None}
        if name == "login":
            session = service.login(self._read_json(self._body_length(MAX_LOGIN_BYTES, "a sign-in body's limit")))
            return Reply(204, headers={"Set-Cookie": set_cookie(session, SESSION_SECONDS)})
        if name == "logout":
            if session is not None:
                service.sessions.close(session)
            return Reply(204, headers={"Set-Cookie": set_cookie("", 0)})
        if problem is not None:
            raise HTTPError(401, "This service requires its token: send 'Authorization: Bearer <token>', or sign in "
                                 f"on its page. Received: {problem}", {"WWW-Authenticate": 'Bearer realm="edgemeta"'})
        if name == "labels":
            return service.labels()
        if name == "thumbnail":
            return Reply(200, service.thumbnail(argument), JPEG_TYPE, {"Cache-Control": "private, no-cache"})
        if name.startswith("camera"):
            return self._camera(name, path)
        if argument is not None:
            return service.forget(argument)
        # The whole body first, then the model: a slow upload holds its own slot, never the model.
        body = self._read_json(self._body_length())
        with service.working():
            if name == "forget":
                return service.forget(fields_of(body, required=("label",))["label"])
            if name == "rename":
                return service.rename(body)
            return service.enroll(body) if name == "enroll" else service.classify(body)

    def _camera(self, name: str, path: str) -> dict | Reply:
        """The camera's routes, answered by edgemeta.serve.camera.CameraEndpoints (404 without a camera)."""
        camera = self.server.service.camera
        if camera is None:
            from edgemeta.serve.camera import no_camera

            raise no_camera(path)
        if name == "camera":
            return camera.status()
        if name == "camera_frame":
            return Reply(200, camera.frame_jpeg(), JPEG_TYPE, {"Cache-Control": "no-store"})
        body = self._read_json(self._body_length())
        # teach and classify take the work lock themselves, after the body has arrived.
        return camera.teach(body) if name == "camera_teach" else camera.classify(body)

    def _check_origin(self, required: bool) -> None:
        """Cross-site request forgery: a state-changing request that a browser marks with an Origin (or, for a request
        signed in by cookie that has none, a Referer) naming another host:port than its Host header is refused, 403.
        `required`: the request is signed in by the page's cookie, so it must carry one of them."""
        origin = self.headers.get("Origin")
        source, kind = (origin, "Origin") if origin is not None else (self.headers.get("Referer"), "Referer")
        if source is None or (kind == "Referer" and not required):
            if required:
                raise HTTPError(403, "A request signed in by the page's session cookie must come from the page: it "
                                     "needs an Origin or Referer header naming this service. Received: neither")
            return
        host = self.headers.get("Host") or ""
        if not same_site(source, host):
            raise HTTPError(403, f"Cross-site request refused: its {kind} names another site than the one it was sent "
                                 f"to. Received: {kind} {printable(source[:100])!r}, Host {printable(host[:100])!r}")

    def _announced_length(self) -> int:
        try:
            return max(int(self.headers.get("Content-Length", 0)), 0)
        except ValueError:
            return 0

    def _body_length(self, limit: int | None = None, option: str = "--max-request-bytes") -> int:
        """The body's length from the headers, refused before a byte of it is read: at most `limit` bytes (the
        service's --max-request-bytes when None)."""
        if self.headers.get("Transfer-Encoding"):
            raise HTTPError(411, "Send the body with a Content-Length (chunked transfer is not accepted). "
                                 f"Received: Transfer-Encoding {self.headers['Transfer-Encoding'][:40]!r}")
        values = self.headers.get_all("Content-Length") or []
        if not values:
            raise HTTPError(411, "A POST needs a Content-Length header. Received: none")
        if len(set(values)) > 1 or not values[0].strip().isdigit():
            raise HTTPError(400, f"Content-Length must be one non-negative integer. Received: {values[:3]}")
        length = int(values[0])
        if limit is None:
            limit = self.server.service.limits.max_request_bytes
        if length > limit:
            raise HTTPError(413, f"The body is too large: at most {limit} bytes "
                                 f"({option}). Received: Content-Length {length}")
        kind = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if kind != JSON_TYPE:
            # Also what keeps a web page's form post (a "simple" cross-site request) out.
            raise HTTPError(415, f"Send the body as JSON with 'Content-Type: {JSON_TYPE}'. "
                                 f"Received: Content-Type {kind or 'none'!r}")
        return length

    def _read_json(self, length: int) -> Any:
        buffer = bytearray(length)
        view, received = memoryview(buffer), 0
        deadline = time.monotonic() + BODY_SECONDS
        while received < length:
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    raise TimeoutError
                self.connection.settimeout(min(left, SOCKET_TIMEOUT))
                n = self.rfile.readinto1(view[received:received + 65536])
            except TimeoutError:
                raise HTTPError(408, f"The body did not arrive within {BODY_SECONDS:.0f} s. "
                                     f"Received: {received} of {length} bytes") from None
            if not n:
                raise HTTPError(400, f"The body ended early. Received: {received} of the {length} bytes "
                                     "Content-Length announced")
            received += n
            self._unread = length - received
        view.release()
        try:
            body = json.loads(buffer)
        except (ValueError, RecursionError) as e:
            raise HTTPError(400, f"The body is not valid JSON ({str(e)[:200]}). Received: {length} bytes "
                                 f"starting {bytes(buffer[:40])!r}") from None
        depth = json_depth(body, MAX_JSON_DEPTH)
        if depth > MAX_JSON_DEPTH:
            raise HTTPError(400, f"The body nests too deep: at most {MAX_JSON_DEPTH} levels of arrays and objects. "
                                 f"Received: more than {MAX_JSON_DEPTH} levels")
        return body

    def _send_json(self, status: int, payload: dict, headers: dict[str, str]) -> None:
        self._send(Reply(status, json.dumps(payload).encode(), JSON_TYPE, headers))

    def _send(self, answer: Reply) -> None:
        data = answer.body
        try:
            self.send_response(answer.status)
            if answer.content_type:
                self.send_header("Content-Type", answer.content_type)
            if answer.status != 204:  # a 204 has no body, and no Content-Length
                self.send_header("Content-Length", str(len(data)))
            headers = {"Cache-Control": "no-store", **SECURITY_HEADERS, **answer.headers}
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            if self.command == "HEAD" or answer.status == 204:
                data = b""
            if not self._unread:  # a connection that still drains an upload keeps its slot until it ends
                self.server.release_slot()  # before the last bytes: a client with its answer finds it free
            self.wfile.write(data)
        except OSError as e:  # the client went away
            log(f"{self.client_address[0]}: could not send the response ({e})")

    def _discard_unread(self) -> None:
        # Closing a socket that still has unread data makes Linux reset the connection, and the client
        # may lose the answer it was sent (a 413 becomes "connection reset"). Read and drop what it
        # still sends, for a moment, after saying we are done writing.
        try:
            self.connection.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + LINGER_SECONDS
            while (left := deadline - time.monotonic()) > 0:
                self.connection.settimeout(left)
                if not self.connection.recv(65536):
                    break
        except OSError:
            pass

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # The base class's errors (malformed request line, oversized headers, unknown method) as JSON.
        self.log_error("code %d, message %s", code, message)
        self.close_connection = True
        if code >= 200 and code not in (204, 304) and getattr(self, "command", None) != "HEAD":
            received = str(getattr(self, "requestline", ""))[:100]
            self._send_json(code, {"error": f"{message or 'Bad request'}. Received: {received!r}"}, {})

    def log_request(self, code: Any = "-", size: Any = "-") -> None:
        pass  # _serve logs one line per request, with its duration

    def log_message(self, format: str, *args: Any) -> None:
        log(f"{self.client_address[0]} {printable(format % args)}")


class Server(_http_server.ThreadingHTTPServer):
    """Serves `service` with a thread per connection, at most `max_connections` at once (one more is
    answered 503 at once), and counts the requests in flight for a graceful stop."""

    daemon_threads = True  # after the grace period, a stuck client does not keep the process alive
    block_on_close = False
    request_queue_size = 64  # the default 5 drops connections when a few clients arrive at once

    def __init__(self, address: tuple, family: int, service: Service, max_connections: int) -> None:
        self.address_family = family
        self.service = service
        self.max_connections = max_connections
        self._slots = threading.BoundedSemaphore(max_connections)
        self._holds_slot = threading.local()  # each connection's thread: is its slot still taken?
        self._active = 0
        self._idle = threading.Condition()
        super().__init__(address, Handler)

    def server_bind(self) -> None:
        # HTTPServer's own looks the host's name up in DNS (getfqdn), which can hang at boot.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            _refuse_busy(request, self.max_connections)
            self.shutdown_request(request)
            return
        with self._idle:
            self._active += 1
        try:
            super().process_request(request, client_address)
        except BaseException:  # the connection's thread could not start
            self._slots.release()
            self._finished()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        self._holds_slot.value = True  # taken for this connection by process_request
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.release_slot()
            self._finished()

    def release_slot(self) -> None:
        """Frees the calling connection's slot, once. The handler calls it as its answer goes out: had it
        waited for the thread's end, a client that reconnects as soon as it has read its answer would
        find its own finished connection still counted, and get 503."""
        if getattr(self._holds_slot, "value", False):
            self._holds_slot.value = False
            self._slots.release()

    def _finished(self) -> None:
        with self._idle:
            self._active -= 1
            self._idle.notify_all()

    def wait_idle(self, seconds: float) -> int:
        """Waits for the requests in flight; returns how many are still running after `seconds`."""
        with self._idle:
            self._idle.wait_for(lambda: self._active == 0, seconds)
            return self._active


def _refuse_busy(request: socket.socket, limit: int) -> None:
    body = json.dumps({"error": f"Too many connections at once (at most {limit}, --max-connections). "
                                "Retry shortly. Received: one more"}).encode()
    head = (f"HTTP/1.0 503 Service Unavailable\r\nContent-Type: {JSON_TYPE}\r\nContent-Length: {len(body)}\r\n"
            "Retry-After: 1\r\nConnection: close\r\n\r\n").encode()
    try:
        request.settimeout(1.0)
        request.sendall(head + body)
    except OSError:
        pass


def make_server(service: Service, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                max_connections: int = DEFAULT_MAX_CONNECTIONS) -> Server:
    """A threading HTTP server for `service`, bound and listening (`serve_forever` runs it)."""
    family = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
    return Server((host, port), family, service, max_connections)

"""`edgemeta device serve`: a small HTTP/JSON service on the board that enrolls, classifies and forgets.

Standard library only (`http.server.ThreadingHTTPServer`) on top of the TensorFlow-free runtime; see
docs/service.md for the API, the security model and why no web framework.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import io
import ipaddress
import json
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

try:  # CPython's constant-time comparison, which hmac.compare_digest falls back to; hmac would load OpenSSL
    from _operator import _compare_digest as _same_secret  # type: ignore[attr-defined]
except ImportError:  # another Python
    from hmac import compare_digest as _same_secret

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
DEFAULT_MAX_REQUEST_BYTES = 4 * 2**20
DEFAULT_MAX_IMAGES = 32
DEFAULT_MAX_PIXELS = 1_000_000
DEFAULT_MAX_CONNECTIONS = 16
MIN_TOKEN_LENGTH = 16
MAX_LABEL_LENGTH = 256
SOCKET_TIMEOUT = 10.0  # seconds one read or write may stall
BODY_SECONDS = 30.0  # a whole body must arrive within this, or 408
WORK_WAIT_SECONDS = 60.0  # a request waits this long for the model, or 503
LINGER_SECONDS = 2.0  # reading what a refused client still sends, so it gets our answer
SHUTDOWN_GRACE_SECONDS = 20.0  # in-flight requests get this long on SIGTERM (the unit's TimeoutStopSec is 30)
# Peak memory per decoded pixel while the runtime converts an image (uint8, float32 copies, grey, resize):
# a 1000x1000 RGB JPEG raised the service's peak RSS by 28.1 MiB (docs/service.md, "Memory").
PIXEL_BYTES = 30
ENDPOINTS = "GET /health, GET /labels, POST /enroll, POST /classify, POST /forget, DELETE /labels/<label>"
JSON_TYPE = "application/json"


class HTTPError(Exception):
    """A request refused with an HTTP status and a message saying what was received and expected."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


class ConfigError(ValueError):
    """The service cannot start with these options (the command exits 2)."""


@dataclass(frozen=True)
class Limits:
    """What one request may carry; each bounds the memory a request can take on a small board."""

    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_images: int = DEFAULT_MAX_IMAGES
    max_pixels: int = DEFAULT_MAX_PIXELS  # decoded pixels, all images of a request together


def _log(message: str) -> None:
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} edgemeta-serve: {message}", file=sys.stderr, flush=True)


class Service:
    """The endpoints, apart from HTTP: validated JSON in, a JSON-ready dict out, `HTTPError` otherwise.
    Bad input is refused before the adapter sees it, and the adapter's own changes are atomic, so a
    refused request changes nothing."""

    def __init__(self, adapter: Any, token: str | None = None, limits: Limits = Limits(),
                 state_path: str | os.PathLike | None = None, memory_budget: int | None = None) -> None:
        self.adapter = adapter
        self.memory_budget = memory_budget
        self.token = token.encode() if token else None
        self.limits = limits
        self.state_path = Path(state_path) if state_path is not None else None
        self.started = time.monotonic()
        # Decoding and the model run one request at a time: the interpreter is serialised anyway, and it
        # bounds transient memory (body, decoded pixels, float copies) to one request's.
        self._work = threading.Lock()

    # -- access ------------------------------------------------------------------------------------
    def auth_problem(self, headers: list[str] | None) -> str | None:
        """None when the request may proceed, else what was wrong with its Authorization header."""
        if self.token is None:
            return None
        if not headers:
            return "no Authorization header"
        if len(headers) > 1:
            return f"{len(headers)} Authorization headers"
        scheme, _, credentials = headers[0].strip().partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            return f"an Authorization header with scheme {scheme[:20]!r}, not 'Bearer <token>'"
        if not _same_secret(credentials.strip().encode("utf-8", "replace"), self.token):
            return "a wrong token"
        return None

    def check_host(self, host: str | None) -> None:
        """Without a token the service only listens on loopback; a Host header naming another machine
        means a browser was led here by DNS rebinding, so it is refused."""
        if self.token is not None or host is None:
            return
        name = host.strip()
        if name.startswith("["):  # [::1]:8765
            name = name[1:name.find("]")]
        elif name.count(":") == 1:  # 127.0.0.1:8765, localhost:8765
            name = name.rsplit(":", 1)[0]
        if name.lower() == "localhost" or name.lower().endswith(".localhost") or _is_loopback_ip(name):
            return
        raise HTTPError(403, "Without a token this service answers only requests addressed to this machine's "
                             f"loopback (localhost, 127.0.0.1, [::1]). Received: Host {host[:100]!r}")

    @contextmanager
    def working(self) -> Iterator[None]:
        if not self._work.acquire(timeout=WORK_WAIT_SECONDS):
            raise HTTPError(503, f"The service is busy: waited {WORK_WAIT_SECONDS:.0f} s for the model. "
                                 "Retry later. Received: one more request", {"Retry-After": "5"})
        try:
            yield
        finally:
            self._work.release()

    # -- endpoints ---------------------------------------------------------------------------------
    def health(self, full: bool) -> dict:
        if not full:  # no token sent: a liveness answer only
            return {"status": "ok"}
        return {"status": "ok", "classes": len(self.adapter.labels),
                "model_sha256": self.adapter.embedder.manifest.model_sha256,
                "uptime_seconds": round(time.monotonic() - self.started, 1),
                "state": str(self.state_path) if self.state_path else None,
                "token_required": self.token is not None,
                "limits": {"max_request_bytes": self.limits.max_request_bytes, "max_images": self.limits.max_images,
                           "max_pixels": self.limits.max_pixels},
                "memory": {"budget_bytes": self.memory_budget, "request_reserve_bytes": request_reserve(self.limits),
                           "adapter_budget_bytes": self.adapter.memory_budget}}

    def labels(self) -> dict:
        rows = []
        for label in self.adapter.labels:
            try:
                rows.append({"label": label, "shots": self.adapter.shots(label)})
            except KeyError:  # forgotten by another request meanwhile
                pass
        return {"labels": rows, "count": len(rows)}

    def enroll(self, body: Any) -> dict:
        from edgemeta.runtime import MemoryBudgetError

        fields = _fields(body, required=("label", "images"))
        label = _label(fields["label"])
        images = self.decode_images(fields["images"])
        try:
            total = self.adapter.enroll(label, images)
        except MemoryBudgetError as e:
            raise HTTPError(507, str(e)) from e
        except (ValueError, TypeError) as e:
            raise HTTPError(400, str(e)) from e
        except OSError as e:  # the store could not be saved (a full disk): the adapter kept nothing
            raise HTTPError(507, f"Could not save the store to {self.state_path} ({e}); nothing was changed. "
                                 f"Received: {len(images)} image(s) for {label!r}") from e
        return {"label": label, "shots": total, "added": len(images), "classes": len(self.adapter.labels)}

    def classify(self, body: Any) -> dict:
        fields = _fields(body, required=("images",), optional=("unknown_threshold",))
        threshold = _threshold(fields.get("unknown_threshold", "adapter"))
        if not self.adapter.labels:
            raise HTTPError(409, "No classes enrolled yet: POST /enroll first. Received: a classify request")
        images = self.decode_images(fields["images"])
        try:
            predictions = self.adapter.classify(images, unknown_threshold=threshold)
        except RuntimeError as e:  # every class forgotten meanwhile
            raise HTTPError(409, f"{e} Received: a classify request") from e
        except (ValueError, TypeError) as e:
            raise HTTPError(400, str(e)) from e
        return {"predictions": [{"label": p.label, "nearest": p.nearest, "distance": p.distance, "score": p.score}
                                for p in predictions]}

    def forget(self, label: Any) -> dict:
        label = _label(label)
        try:
            self.adapter.forget(label)
        except KeyError:
            known = self.adapter.labels
            shown = known if len(known) <= 20 else [*known[:20], f"... {len(known) - 20} more"]
            raise HTTPError(404, f"No class is enrolled under that label. Received: {label!r}. "
                                 f"Enrolled labels: {shown}") from None
        except OSError as e:
            raise HTTPError(507, f"Could not save the store to {self.state_path} ({e}); nothing was changed. "
                                 f"Received: forget {label!r}") from e
        return {"forgot": label, "classes": len(self.adapter.labels)}

    def save(self) -> str | None:
        if self.state_path is None:
            return None
        self.adapter.save(self.state_path)
        return f"saved {len(self.adapter.labels)} class(es) to {self.state_path}"

    # -- images ------------------------------------------------------------------------------------
    def decode_images(self, value: Any) -> list:
        """Base64 PNG/JPEG files -> pixel arrays, as the runtime reads an image file. Every image's size is
        read from its header and the request's total checked before any pixel is decoded."""
        from PIL import Image, UnidentifiedImageError

        if not isinstance(value, list) or not value:
            raise HTTPError(400, "images must be a non-empty list of base64-encoded PNG or JPEG files. "
                                 f"Received: {_describe(value)}")
        if len(value) > self.limits.max_images:
            raise HTTPError(413, f"Too many images in one request: at most {self.limits.max_images} "
                                 f"(--max-images); split the batch. Received: {len(value)} images")
        opened = []
        for i, text in enumerate(value):
            data = _base64(text, i)
            try:
                opened.append(Image.open(io.BytesIO(data), formats=("PNG", "JPEG")))
            except Image.DecompressionBombError as e:
                raise HTTPError(413, f"images[{i}] is too large ({e}). Received: {len(data)} bytes") from e
            except (OSError, ValueError, SyntaxError) as e:  # not a PNG/JPEG, or a broken header
                why = "" if isinstance(e, UnidentifiedImageError) else f" ({e})"  # its text is only a BytesIO repr
                raise HTTPError(400, f"images[{i}] is not a PNG or JPEG file{why}. "
                                     f"Received: {len(data)} bytes starting {data[:8]!r}") from e
        pixels = sum(im.size[0] * im.size[1] for im in opened)
        if pixels > self.limits.max_pixels:
            sizes = ", ".join(f"{w}x{h}" for w, h in (im.size for im in opened[:8]))
            raise HTTPError(413, f"The images have too many pixels for one request: at most {self.limits.max_pixels} "
                                 "decoded pixels (--max-pixels); send smaller images (the model sees "
                                 f"{_input_size(self.adapter)}) or fewer per request. Received: {pixels} pixels "
                                 f"({sizes}{', ...' if len(opened) > 8 else ''})")
        arrays = []
        for i, im in enumerate(opened):
            try:
                im.load()
                # Exactly what the runtime does with an image file, so a request and a file agree.
                arrays.append(_pixels(im))
            except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
                raise HTTPError(400, f"images[{i}] could not be decoded ({e}). Received: a {im.format} "
                                     f"header of {im.size[0]}x{im.size[1]} pixels") from e
            finally:
                im.close()
            opened[i] = None  # each decoded image's PIL copy is freed as soon as its array exists
        return arrays


def _pixels(im: Any) -> Any:
    import numpy as np

    from edgemeta.format.preprocessing import _load

    return _load(np.asarray(im.convert("RGB") if im.mode not in ("L", "RGB", "RGBA", "1") else im))


def _input_size(adapter: Any) -> str:
    h, w, _ = adapter.embedder.preprocessing.input_shape
    return f"{w}x{h}"


def _describe(value: Any) -> str:
    text = json.dumps(value)
    return f"{type(value).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"


def _fields(body: Any, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict:
    if not isinstance(body, dict):
        raise HTTPError(400, f"The body must be a JSON object with {list(required)}. Received: {_describe(body)}")
    missing = [k for k in required if k not in body]
    unknown = sorted(set(body) - set(required) - set(optional))
    if missing or unknown:
        raise HTTPError(400, f"The body must have the field(s) {list(required)}"
                             f"{f' and may have {list(optional)}' if optional else ''}. "
                             f"Received: missing {missing}, unknown {unknown[:10]}")
    return body


def _label(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_LABEL_LENGTH or not value.isprintable():
        shown = _describe(value) if not isinstance(value, str) else f"{value[:60]!r} ({len(value)} characters)"
        raise HTTPError(400, f"label must be a non-empty printable string of at most {MAX_LABEL_LENGTH} "
                             f"characters. Received: {shown}")
    return value


def _threshold(value: Any) -> float | None | str:
    if value is None or value == "adapter":
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < float("inf"):
        return float(value)
    raise HTTPError(400, "unknown_threshold must be a distance >= 0, or null to always answer the nearest class "
                         f"(leave it out for the service's). Received: {_describe(value)}")


def _base64(text: Any, i: int) -> bytes:
    if not isinstance(text, str):
        raise HTTPError(400, f"images[{i}] must be a base64 string of a PNG or JPEG file. Received: {_describe(text)}")
    if text.startswith("data:"):  # a data URL, as a browser's FileReader gives it
        text = text.partition(",")[2]
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as e:
        raise HTTPError(400, f"images[{i}] is not valid base64 ({e}). Received: {len(text)} characters "
                             f"starting {text[:20]!r}") from e


def _is_loopback_ip(text: str) -> bool:
    try:
        return ipaddress.ip_address(text.split("%")[0]).is_loopback
    except ValueError:
        return False


def is_loopback(host: str) -> bool:
    """Whether binding `host` listens on loopback only: an IP literal, or a name all of whose addresses are."""
    if _is_loopback_ip(host):
        return True
    if not host or host in ("0.0.0.0", "::"):
        return False
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)}
    except OSError:
        return False
    return bool(addresses) and all(_is_loopback_ip(a) for a in addresses)


# -- HTTP ------------------------------------------------------------------------------------------
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


def _route(method: str, path: str) -> tuple[str, str | None]:
    fixed = {"/health": ("GET", "health"), "/labels": ("GET", "labels"), "/enroll": ("POST", "enroll"),
             "/classify": ("POST", "classify"), "/forget": ("POST", "forget")}
    if path in fixed:
        allowed, name = fixed[path]
        if method != allowed:
            raise HTTPError(405, f"{path} takes {allowed}. Received: {method}", {"Allow": allowed})
        return name, None
    if path.startswith("/labels/") and len(path) > len("/labels/"):
        if method != "DELETE":
            raise HTTPError(405, f"/labels/<label> takes DELETE. Received: {method}", {"Allow": "DELETE"})
        return "forget", unquote(path[len("/labels/"):])
    raise HTTPError(404, f"No such endpoint. Received: {method} {path[:100]}. Endpoints: {ENDPOINTS}")


def make_server(service: Service, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                max_connections: int = DEFAULT_MAX_CONNECTIONS) -> Any:
    """A threading HTTP server for `service`, bound and listening (`serve_forever` runs it)."""
    http_server = _http_server_module()
    import socketserver

    class Handler(http_server.BaseHTTPRequestHandler):
        server_version = "edgemeta"
        protocol_version = "HTTP/1.0"  # one request per connection: no idle keep-alive holding a thread
        timeout = SOCKET_TIMEOUT
        _unread = 0

        def version_string(self) -> str:
            return self.server_version  # no Python version for a scanner to match against

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

        def _serve(self, method: str) -> None:
            start, status, path = time.monotonic(), 500, "?"
            try:
                self._unread = self._announced_length()
                path = urlsplit(self.path).path
                try:
                    status, payload, headers = 200, self._dispatch(method, path), {}
                except HTTPError as e:
                    status, payload, headers = e.status, {"error": e.message}, e.headers
                except Exception as e:  # a bug: the client gets no traceback, the log does
                    _log(f"internal error on {method} {path}:\n{traceback.format_exc()}")
                    message = (f"Internal error ({type(e).__name__}); see the service's log. "
                               f"Received: {method} {path[:100]}")
                    status, payload, headers = 500, {"error": message}, {}
                self._send_json(status, payload, headers)
                if self._unread:
                    self._discard_unread()
            finally:
                took = 1000 * (time.monotonic() - start)
                _log(f'{self.client_address[0]} "{method} {path[:200]}" {status} {took:.0f} ms')

        def _dispatch(self, method: str, path: str) -> dict:
            name, argument = _route(method, path)
            problem = service.auth_problem(self.headers.get_all("Authorization"))
            if name == "health":
                return service.health(full=problem is None)
            if problem is not None:
                raise HTTPError(401, "This service requires its token: send 'Authorization: Bearer <token>'. "
                                     f"Received: {problem}", {"WWW-Authenticate": 'Bearer realm="edgemeta"'})
            service.check_host(self.headers.get("Host"))
            if name == "labels":
                return service.labels()
            if argument is not None:
                return service.forget(argument)
            length = self._body_length()
            with service.working():
                body = self._read_json(length)
                if name == "forget":
                    return service.forget(_fields(body, required=("label",))["label"])
                return service.enroll(body) if name == "enroll" else service.classify(body)

        def _announced_length(self) -> int:
            try:
                return max(int(self.headers.get("Content-Length", 0)), 0)
            except ValueError:
                return 0

        def _body_length(self) -> int:
            """The body's length from the headers, refused before a byte of it is read."""
            if self.headers.get("Transfer-Encoding"):
                raise HTTPError(411, "Send the body with a Content-Length (chunked transfer is not accepted). "
                                     f"Received: Transfer-Encoding {self.headers['Transfer-Encoding'][:40]!r}")
            values = self.headers.get_all("Content-Length") or []
            if not values:
                raise HTTPError(411, "A POST needs a Content-Length header. Received: none")
            if len(set(values)) > 1 or not values[0].strip().isdigit():
                raise HTTPError(400, f"Content-Length must be one non-negative integer. Received: {values[:3]}")
            length = int(values[0])
            if length > service.limits.max_request_bytes:
                raise HTTPError(413, f"The body is too large: at most {service.limits.max_request_bytes} bytes "
                                     f"(--max-request-bytes). Received: Content-Length {length}")
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
                return json.loads(buffer)
            except (ValueError, RecursionError) as e:
                raise HTTPError(400, f"The body is not valid JSON ({str(e)[:200]}). Received: {length} bytes "
                                     f"starting {bytes(buffer[:40])!r}") from None

        def _send_json(self, status: int, payload: dict, headers: dict[str, str]) -> None:
            data = json.dumps(payload).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", JSON_TYPE)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Cache-Control", "no-store")
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                if not self._unread:  # a connection that still drains an upload keeps its slot until it ends
                    self.server.release_slot()  # before the last bytes: a client with its answer finds it free
                self.wfile.write(data)
            except OSError as e:  # the client went away
                _log(f"{self.client_address[0]}: could not send the response ({e})")

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
            _log(f"{self.client_address[0]} {format % args}")

    class Server(http_server.ThreadingHTTPServer):
        daemon_threads = True  # after the grace period, a stuck client does not keep the process alive
        block_on_close = False
        request_queue_size = 64  # the default 5 drops connections when a few clients arrive at once

        def __init__(self, address: tuple, family: int, max_connections: int) -> None:
            self.address_family = family
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
                _refuse_busy(request, max_connections)
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

    family = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
    return Server((host, port), family, max_connections)


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


# -- command line ----------------------------------------------------------------------------------
def _size(text: str) -> int:
    from edgemeta.format.units import parse_bytes

    try:
        return parse_bytes(int(text) if text.strip().isdigit() else text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of bytes such as 4194304 or '4MB'. "
                                         f"Received: {text!r}") from None


def _positive(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer. Received: {text!r}")
    return int(text)


def _port(text: str) -> int:
    if not text.strip().isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 0 to 65535 (0: any free port). Received: {text!r}")
    return int(text)


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `edgemeta device serve`."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--bundle", metavar="DIR", help="bundle directory (model.tflite + manifest.json)")
    source.add_argument("--preset", metavar="NAME", help="a bundle shipped with edgemeta, e.g. omniglot")
    parser.add_argument("--device", metavar="PROFILE",
                        help="board profile (edgemeta device list): its threads, delegate and memory budget")
    parser.add_argument("--state", metavar="FILE",
                        help="store file: loaded at start, saved after every change and at shutdown")
    parser.add_argument("--host", metavar="ADDRESS", default=DEFAULT_HOST,
                        help=f"address to listen on (default {DEFAULT_HOST}); any non-loopback address needs a token")
    parser.add_argument("--port", type=_port, metavar="N", default=DEFAULT_PORT,
                        help=f"default {DEFAULT_PORT}; 0 picks a free port")
    token = parser.add_mutually_exclusive_group()
    token.add_argument("--token", help="bearer token clients must send (visible in `ps`: prefer --token-file "
                                       "or the EDGEMETA_TOKEN environment variable)")
    token.add_argument("--token-file", metavar="FILE", help="file holding the bearer token")
    parser.add_argument("--max-request-bytes", type=_size, metavar="SIZE", default=DEFAULT_MAX_REQUEST_BYTES,
                        help=f"largest request body (default {DEFAULT_MAX_REQUEST_BYTES // 2**20}MB); larger: 413")
    parser.add_argument("--max-images", type=_positive, metavar="N", default=DEFAULT_MAX_IMAGES,
                        help=f"images per request (default {DEFAULT_MAX_IMAGES}, at most 1024)")
    parser.add_argument("--max-pixels", type=_positive, metavar="N", default=DEFAULT_MAX_PIXELS,
                        help=f"decoded pixels per request, all images together (default {DEFAULT_MAX_PIXELS})")
    parser.add_argument("--max-connections", type=_positive, metavar="N", default=DEFAULT_MAX_CONNECTIONS,
                        help=f"connections served at once (default {DEFAULT_MAX_CONNECTIONS}); more get 503")
    parser.add_argument("--threads", type=_positive, metavar="N",
                        help="interpreter threads (default: the profile's, else the runtime's)")
    parser.add_argument("--memory-budget", metavar="SIZE",
                        help="the process's memory budget, e.g. 96MB (default: the profile's); one request's "
                             "reserve is kept out of the adapter's share")
    parser.add_argument("--on-full", choices=["error", "evict"], default="error",
                        help="past the budget: refuse the enrollment (507), or forget the least recently used class")
    parser.add_argument("--keep-support", choices=["embeddings", "images"], default=None,
                        help="also keep each shot (for fit_head, or to re-enroll under a new model)")
    parser.add_argument("--prototype-dtype", choices=["float32", "int8"], default="float32")
    parser.add_argument("--unknown-threshold", metavar="VALUE", default="calibrated",
                        help="distance beyond which an image is 'unknown': 'calibrated' (the bundle's), "
                             "a number, or 'none'")


def _read_token(args: argparse.Namespace) -> str | None:
    if args.token is not None:
        token, source = args.token, "--token"
    elif args.token_file is not None:
        try:
            token, source = Path(args.token_file).read_text().strip(), f"--token-file {args.token_file}"
        except OSError as e:
            raise ConfigError(f"Cannot read the token file ({e}). Received: --token-file {args.token_file!r}") from e
    elif os.environ.get("EDGEMETA_TOKEN"):
        token, source = os.environ["EDGEMETA_TOKEN"].strip(), "EDGEMETA_TOKEN"
    else:
        return None
    if len(token) < MIN_TOKEN_LENGTH or not token.isascii() or not token.isprintable() or " " in token:
        raise ConfigError(f"The token must be at least {MIN_TOKEN_LENGTH} printable ASCII characters without spaces, "
                          "e.g. from `python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`. "
                          f"Received: {len(token)} characters from {source}")
    return token


def _threshold_option(text: str) -> float | str | None:
    lowered = text.strip().lower()
    if lowered in ("calibrated", "none"):
        return None if lowered == "none" else "calibrated"
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"--unknown-threshold takes 'calibrated', a distance or 'none'. Received: {text!r}") from None


def request_reserve(limits: Limits) -> int:
    """Bytes one request may take beyond the adapter's steady state: its body, the parsed JSON and
    decoded files (3x the body), and its pixels as the runtime converts them (PIXEL_BYTES each)."""
    return PIXEL_BYTES * limits.max_pixels + 3 * limits.max_request_bytes


def _budget(args: argparse.Namespace, limits: Limits) -> tuple[int | None, int | None]:
    """(the process's budget, the adapter's share): the adapter gets the budget less one request's reserve,
    so a full store plus the largest request still fits the budget (the unit's MemoryMax)."""
    from edgemeta.format.units import parse_bytes

    if args.memory_budget:
        budget = parse_bytes(args.memory_budget)
    elif args.device:
        from edgemeta.profiles import load_profile

        budget = load_profile(args.device).budget_bytes
    else:
        return None, None
    reserve = request_reserve(limits)
    if budget - reserve < 16 * 2**20:  # not even room for the runtime itself
        raise ConfigError(f"The memory budget of {budget / 2**20:.0f} MB leaves too little once one request's "
                          f"{reserve / 2**20:.1f} MB are set aside ({PIXEL_BYTES} B x --max-pixels + 3 x "
                          "--max-request-bytes): lower those limits or raise the budget. "
                          f"Received: budget {budget} B, --max-pixels {limits.max_pixels}, "
                          f"--max-request-bytes {limits.max_request_bytes}")
    return budget, budget - reserve


def _adapter(args: argparse.Namespace, adapter_budget: int | None) -> Any:
    from edgemeta.presets import preset_path
    from edgemeta.runtime import FewShotAdapter

    bundle = args.bundle if args.bundle else preset_path(args.preset)
    options: dict[str, Any] = {"unknown_threshold": _threshold_option(args.unknown_threshold),
                               "on_full": args.on_full, "keep_support": args.keep_support,
                               "prototype_dtype": args.prototype_dtype, "memory_budget": adapter_budget}
    if args.threads:
        options["num_threads"] = args.threads
    if args.device:
        return FewShotAdapter.for_device(bundle, args.device, state=args.state, **options)
    return FewShotAdapter.from_bundle(bundle, args.state, options.pop("num_threads", None), **options)


def serve_from_args(args: argparse.Namespace) -> int:
    """Runs the service until SIGTERM or SIGINT; returns the exit code (0 after a clean stop, 2 when it
    cannot start, 1 when the store could not be saved at shutdown)."""
    try:
        token = _read_token(args)
        if not is_loopback(args.host) and token is None:
            raise ConfigError(f"Listening on {args.host!r} exposes the service beyond this machine: give it a token "
                              "(--token-file FILE, the EDGEMETA_TOKEN environment variable, or --token), or keep "
                              f"the default --host {DEFAULT_HOST}. Received: --host {args.host!r} and no token")
        if args.max_images > 1024:
            raise ConfigError("--max-images is at most 1024 (the runtime's limit per call). "
                              f"Received: {args.max_images}")
        limits = Limits(args.max_request_bytes, args.max_images, args.max_pixels)
        budget, adapter_budget = _budget(args, limits)
        service = Service(_adapter(args, adapter_budget), token, limits, args.state, budget)
    except Exception as e:  # a bad option, bundle, profile or store: say which, start nothing
        print(f"edgemeta device serve: error: {e}", file=sys.stderr)
        return 2
    import warnings

    from PIL import Image

    # Pillow's own bomb check as a second line behind --max-pixels; its warning (at 1x) would only
    # repeat the 413 that --max-pixels already answers.
    Image.MAX_IMAGE_PIXELS = args.max_pixels
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
    try:
        server = make_server(service, args.host, args.port, args.max_connections)
    except OSError as e:
        print(f"edgemeta device serve: error: cannot listen on {args.host}:{args.port} ({e})", file=sys.stderr)
        return 2
    return run(server, service)


def run(server: Any, service: Service) -> int:
    """Serves until SIGTERM/SIGINT, lets requests in flight finish, saves the store."""
    stopping = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        if not stopping.is_set():
            stopping.set()
            _log(f"{signal.Signals(signum).name}: no new connections; finishing the requests in flight")
            # shutdown() waits for serve_forever to return, so it cannot run in serve_forever's thread.
            threading.Thread(target=server.shutdown, name="shutdown", daemon=True).start()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    host, port = server.server_address[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"edgemeta device serve: listening on http://{shown}:{port}/ ({len(service.adapter.labels)} classes, "
          f"token {'required' if service.token else 'not required (loopback only)'}, "
          f"state {service.state_path or 'none: what is taught is lost at exit'})", flush=True)
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.socket.close()  # refuse new connections while the last requests finish
        running = server.wait_idle(SHUTDOWN_GRACE_SECONDS)
    # The handlers stay ours until the store is saved: a second SIGTERM (systemd, an impatient user)
    # must not kill the process between the last request and the save.
    if running:
        _log(f"{running} request(s) still running after {SHUTDOWN_GRACE_SECONDS:.0f} s; stopping without them")
    code = 0
    try:
        saved = service.save()  # under the adapter's lock: a whole store, even beside a late request
        if saved:
            _log(saved)
    except Exception as e:
        _log(f"could not save the store to {service.state_path}: {e}")
        code = 1
    for s, handler in previous.items():
        signal.signal(s, handler)
    _log("stopped")
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edgemeta device serve",
                                     description="HTTP/JSON service: health, labels, enroll, classify, forget.")
    add_serve_arguments(parser)
    return serve_from_args(parser.parse_args(argv))


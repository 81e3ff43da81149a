"""What each endpoint of the service does, apart from HTTP: validated JSON in, a JSON-ready dict out,
`HTTPError` otherwise; the limits one request is held to; and the page's sign-in sessions."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import os
import socket
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgemeta.runtime.budget import pixel_bytes

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
MAX_LABEL_LENGTH = 256
WORK_WAIT_SECONDS = 60.0  # a request waits this long for the model, or 503
IMAGE_FORMATS = ("PNG", "JPEG")  # what a request's images may be (Pillow's format names)
# The page's sign-in (docs/service.md, "The page"): a session id in an HttpOnly cookie stands for the token.
SESSION_COOKIE = "edgemeta_session"
SESSION_SECONDS = 12 * 3600  # a session lasts this long from sign-in (the cookie's Max-Age); none survives a restart
MAX_SESSIONS = 64  # sessions held at once; the oldest is dropped for a new one
LOGIN_FAILURE_SECONDS = 1.0  # a wrong token at POST /session is answered after this, one at a time: ~1 guess a second
MAX_LOGIN_BYTES = 1024  # a sign-in body: {"token": ...}; read before any token is checked, so small


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


def body_reserve(limits: Limits) -> int:
    """Bytes one request's body may take: the body, the parsed JSON and the decoded files (3x the body).
    One image is open at a time, so PNG text adds at most one image's (1.25 MiB: edgemeta.format.images),
    within this margin. The service sets it aside from its budget; the adapter's own budget sets aside the
    pixels (`pixel_bytes` x --max-pixels, the adapter's max_pixels)."""
    return 3 * limits.max_request_bytes


def request_reserve(limits: Limits, channels: int) -> int:
    """Bytes one request may take beyond the adapter's steady state: its body (`body_reserve`) and its
    pixels as the runtime converts them for a model of `channels` channels (`pixel_bytes` each)."""
    return pixel_bytes(channels) * limits.max_pixels + body_reserve(limits)


def log(message: str) -> None:
    """One line on stderr (the journal under systemd), timestamped."""
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} edgemeta-serve: {message}", file=sys.stderr, flush=True)


class Sessions:
    """The page's sign-in sessions, in memory: at most `limit` at once (the oldest dropped for a new one), each
    valid `seconds` from its creation. A session id is 32 random bytes, URL-safe base64, and only ever travels in
    the HttpOnly cookie; a restart forgets every session (the page then asks for the token again)."""

    def __init__(self, seconds: float = SESSION_SECONDS, limit: int = MAX_SESSIONS) -> None:
        self.seconds, self.limit = seconds, limit
        self._expiry: OrderedDict[str, float] = OrderedDict()  # id -> monotonic expiry, oldest first
        self._lock = threading.Lock()

    def open(self) -> str:
        """A new session's id."""
        # os.urandom, not `secrets`: secrets imports hmac, which loads OpenSSL (see _same_secret above).
        session = base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()
        now = time.monotonic()
        with self._lock:
            self._drop_expired(now)
            while len(self._expiry) >= self.limit:
                self._expiry.popitem(last=False)
            self._expiry[session] = now + self.seconds
        return session

    def valid(self, session: str) -> bool:
        """Whether `session` was opened here, is not closed and has not expired."""
        with self._lock:
            expiry = self._expiry.get(session)
            if expiry is not None and expiry <= time.monotonic():
                del self._expiry[session]
                expiry = None
            return expiry is not None

    def close(self, session: str) -> None:
        with self._lock:
            self._expiry.pop(session, None)

    def __len__(self) -> int:
        with self._lock:
            self._drop_expired(time.monotonic())
            return len(self._expiry)

    def _drop_expired(self, now: float) -> None:
        for session in [s for s, expiry in self._expiry.items() if expiry <= now]:
            del self._expiry[session]


class Service:
    """The endpoints, apart from HTTP: validated JSON in, a JSON-ready dict out, `HTTPError` otherwise.
    Bad input is refused before the adapter sees it, and the adapter's own changes are atomic, so a
    refused request changes nothing."""

    def __init__(self, adapter: Any, token: str | None = None, limits: Limits = Limits(),
                 state_path: str | os.PathLike | None = None, memory_budget: int | None = None,
                 bundle_name: str | None = None) -> None:
        self.adapter = adapter
        self.memory_budget = memory_budget
        self.token = token.encode() if token else None
        self.limits = limits
        self.state_path = Path(state_path) if state_path is not None else None
        self.bundle_name = bundle_name
        self.started = time.monotonic()
        self.sessions = Sessions()
        # The board's camera endpoints (edgemeta.serve.camera.CameraEndpoints), when a camera is configured.
        self.camera: Any = None
        # Decoding and the model run one request at a time: the interpreter is serialised anyway, and it
        # bounds transient memory (body, decoded pixels, float copies) to one request's.
        self._work = threading.Lock()
        self._login = threading.Lock()  # wrong tokens at POST /session are answered one at a time

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

    def authorize(self, authorization: list[str] | None, session: str | None) -> tuple[str | None, bool]:
        """(None when the request may proceed, else what was wrong; whether its session cookie let it in).
        An Authorization header decides alone; without one, the page's session cookie stands for the token."""
        if self.token is None:
            return None, False
        if authorization or session is None:
            problem = self.auth_problem(authorization)
            return ("no Authorization header or session cookie" if problem == "no Authorization header" else problem), False
        if self.sessions.valid(session):
            return None, True
        return "a session cookie that is unknown or expired (sign in again: the service may have restarted)", False

    def login(self, body: Any) -> str:
        """POST /session: the token, checked as the Bearer token is; a new session's id. A wrong token is answered
        after LOGIN_FAILURE_SECONDS, one at a time, so guessing through the page takes ~1 s a guess."""
        if self.token is None:
            raise HTTPError(409, "This service has no token (it listens on loopback only): the page needs no "
                                 "sign-in. Received: POST /session")
        # The body is checked without echoing it: it is meant to hold the token.
        if not isinstance(body, dict) or set(body) != {"token"} or not isinstance(body["token"], str):
            shown = sorted(body)[:5] if isinstance(body, dict) else type(body).__name__
            raise HTTPError(400, f'The body must be {{"token": "<the service\'s token>"}}. Received: {shown}')
        token = body["token"].strip().encode("utf-8", "replace")  # at most MAX_LOGIN_BYTES: the body's limit
        with self._login:
            if not _same_secret(token, self.token):
                time.sleep(LOGIN_FAILURE_SECONDS)
                raise HTTPError(401, "Wrong token: it is the one the service was started with (--token-file, "
                                     "EDGEMETA_TOKEN or --token). Received: a wrong token")
        return self.sessions.open()

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
        manifest = self.adapter.embedder.manifest
        dataset = (manifest.provenance or {}).get("dataset")  # {"name": ...} or a name, as the exporter wrote it
        memory = {"budget_bytes": self.memory_budget,
                  "request_reserve_bytes": request_reserve(self.limits, manifest.preprocessing.channels),
                  "adapter_budget_bytes": self.adapter.memory_budget}
        if hasattr(self.adapter, "memory_report"):
            # What the adapter's budget counts now and how many more classes fit (the page's status).
            memory["adapter"] = self.adapter.memory_report()
        return {"status": "ok", "classes": len(self.adapter.labels),
                "model_sha256": manifest.model_sha256,
                "bundle": {"name": self.bundle_name, "model_sha256": manifest.model_sha256,
                           "dataset": dataset.get("name") if isinstance(dataset, dict) else dataset},
                "uptime_seconds": round(time.monotonic() - self.started, 1),
                "state": str(self.state_path) if self.state_path else None,
                "token_required": self.token is not None,
                "camera": self.camera.source.name if self.camera is not None else None,
                "limits": {"max_request_bytes": self.limits.max_request_bytes, "max_images": self.limits.max_images,
                           "max_pixels": self.limits.max_pixels},
                "memory": memory}

    def labels(self) -> dict:
        if hasattr(self.adapter, "classes"):
            rows = [{"label": c.label, "shots": c.shots, "last_used": c.last_used, "enrolled": c.enrolled,
                     "has_thumbnail": c.has_thumbnail} for c in self.adapter.classes()]
            return {"labels": rows, "count": len(rows)}
        rows = []
        for label in self.adapter.labels:
            try:
                rows.append({"label": label, "shots": self.adapter.shots(label)})
            except KeyError:  # forgotten by another request meanwhile
                pass
        return {"labels": rows, "count": len(rows)}

    def thumbnail(self, label: str) -> bytes:
        """GET /labels/<label>/thumbnail.jpg: the class's JPEG thumbnail; 404 for an unknown label or none kept."""
        label = _label(label)
        try:
            data = self.adapter.thumbnail(label) if hasattr(self.adapter, "thumbnail") else None
        except KeyError:
            raise self._unknown_label(label) from None
        if data is None:
            raise HTTPError(404, "This class has no thumbnail (taught before thumbnails were kept, or by a service "
                                 f"that keeps none). Received: {label!r}")
        return data

    def rename(self, body: Any) -> dict:
        """POST /rename {"label": old, "to": new}: the class keeps its shots, times and thumbnail."""
        fields = fields_of(body, required=("label", "to"))
        old, new = _label(fields["label"]), _label(fields["to"])
        if new != old and new in self.adapter.labels:
            raise HTTPError(409, f"A class is already enrolled under the new label: forget it first, or choose "
                                 f"another. Received: rename {old!r} to {new!r}")
        try:
            self.adapter.rename(old, new)
        except KeyError:
            raise self._unknown_label(old) from None
        except ValueError as e:
            raise HTTPError(409 if new in self.adapter.labels else 400, str(e)) from e
        except OSError as e:
            raise HTTPError(507, f"Could not save the store to {self.state_path} ({e}); nothing was changed. "
                                 f"Received: rename {old!r} to {new!r}") from e
        return {"renamed": old, "to": new, "classes": len(self.adapter.labels)}

    def enroll(self, body: Any) -> dict:
        from edgemeta.runtime import MemoryBudgetError

        fields = fields_of(body, required=("label", "images"))
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
        fields = fields_of(body, required=("images",), optional=("unknown_threshold",))
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
        return {"predictions": [prediction_json(p) for p in predictions]}

    def forget(self, label: Any) -> dict:
        label = _label(label)
        try:
            self.adapter.forget(label)
        except KeyError:
            raise self._unknown_label(label) from None
        except OSError as e:
            raise HTTPError(507, f"Could not save the store to {self.state_path} ({e}); nothing was changed. "
                                 f"Received: forget {label!r}") from e
        return {"forgot": label, "classes": len(self.adapter.labels)}

    def _unknown_label(self, label: str) -> HTTPError:
        known = self.adapter.labels
        shown = known if len(known) <= 20 else [*known[:20], f"... {len(known) - 20} more"]
        return HTTPError(404, f"No class is enrolled under that label. Received: {label!r}. Enrolled labels: {shown}")

    def save(self) -> str | None:
        if self.state_path is None:
            return None
        self.adapter.save(self.state_path)
        return f"saved {len(self.adapter.labels)} class(es) to {self.state_path}"

    # -- images ------------------------------------------------------------------------------------
    def decode_images(self, value: Any) -> list:
        """Base64 PNG/JPEG files -> pixel arrays, through the runtime's own decoding of an image file
        (`edgemeta.format.images.decode_image`), so a request and a file agree. Every image's size is read
        from its header (each image opened and closed in turn) and the request's total checked before any
        pixel is decoded; then the images are decoded one at a time, each closed before the next is opened."""
        from edgemeta.format.images import ImageDecodeError, ImageTooLargeError, decode_image, image_header

        if not isinstance(value, list) or not value:
            raise HTTPError(400, "images must be a non-empty list of base64-encoded PNG or JPEG files. "
                                 f"Received: {_describe(value)}")
        if len(value) > self.limits.max_images:
            raise HTTPError(413, f"Too many images in one request: at most {self.limits.max_images} "
                                 f"(--max-images); split the batch. Received: {len(value)} images")
        files = [_base64(text, i) for i, text in enumerate(value)]
        embedder = self.adapter.embedder
        # A large JPEG decodes at a reduced scale near the model's input size; the pixel limits count that size.
        draft = (embedder.preprocessing.width, embedder.preprocessing.height)
        headers = []
        for i, data in enumerate(files):
            try:
                headers.append(image_header(data, draft=draft, formats=IMAGE_FORMATS))
            except ImageTooLargeError as e:  # PNG text chunks that inflate too far, or Pillow's own bomb check
                raise HTTPError(413, f"images[{i}] is too large: {e.reason}. Received: {len(data)} bytes") from e
            except ImageDecodeError as e:  # not a PNG/JPEG, or a broken header
                why = "" if e.reason.startswith("not a known image file") else f" ({e.reason})"
                raise HTTPError(400, f"images[{i}] is not a PNG or JPEG file{why}. "
                                     f"Received: {len(data)} bytes starting {data[:8]!r}") from e
        pixels = sum(header.pixels for header in headers)
        if pixels > self.limits.max_pixels:
            sizes = ", ".join(f"{w}x{h}" for w, h in (header.size for header in headers[:8]))
            raise HTTPError(413, f"The images have too many pixels for one request: at most {self.limits.max_pixels} "
                                 "decoded pixels (--max-pixels); send smaller images (the model sees "
                                 f"{_input_size(self.adapter)}) or fewer per request. Received: {pixels} pixels "
                                 f"({sizes}{', ...' if len(headers) > 8 else ''})")
        # Each image within the request's pixels, and within the runtime's per image (which the adapter applies again).
        per_image = min(self.limits.max_pixels, getattr(embedder, "max_pixels", self.limits.max_pixels))
        arrays = []
        for i, (data, header) in enumerate(zip(files, headers)):
            received = f"a {header.format} header of {header.size[0]}x{header.size[1]} pixels"
            try:
                arrays.append(decode_image(data, max_pixels=per_image, draft=draft, formats=IMAGE_FORMATS))
            except ImageTooLargeError as e:
                raise HTTPError(413, f"images[{i}] is too large: {e.reason}. Received: {received}") from e
            except ImageDecodeError as e:
                raise HTTPError(400, f"images[{i}] could not be decoded ({e.reason}). Received: {received}") from e
            files[i] = None  # each file's bytes are freed once its pixels exist
        return arrays


def prediction_json(p: Any) -> dict:
    """One prediction as the service answers it: label (None: unknown), nearest, distance, score, and where the
    runtime's Prediction has them the calibrated `probability` that the image is of an enrolled class at all and
    the `softmax` among the enrolled classes."""
    out = {"label": p.label, "nearest": p.nearest, "distance": p.distance, "score": p.score}
    for name in ("probability", "softmax"):
        if hasattr(p, name):
            out[name] = getattr(p, name)
    return out


# -- request bodies ----------------------------------------------------------------------------------
def fields_of(body: Any, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict:
    """`body` when it is a JSON object with every `required` field and no field beyond `optional`, else 400."""
    if not isinstance(body, dict):
        raise HTTPError(400, f"The body must be a JSON object with {list(required)}. Received: {_describe(body)}")
    missing = [k for k in required if k not in body]
    unknown = sorted(set(body) - set(required) - set(optional))
    if missing or unknown:
        raise HTTPError(400, f"The body must have the field(s) {list(required)}"
                             f"{f' and may have {list(optional)}' if optional else ''}. "
                             f"Received: missing {missing}, unknown {unknown[:10]}")
    return body


def _input_size(adapter: Any) -> str:
    h, w, _ = adapter.embedder.preprocessing.input_shape
    return f"{w}x{h}"


def _describe(value: Any) -> str:
    text = json.dumps(value)
    return f"{type(value).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"


def _label(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_LABEL_LENGTH or not value.isprintable():
        shown = _describe(value) if not isinstance(value, str) else f"{value[:60]!r} ({len(value)} characters)"
        raise HTTPError(400, f"label must be a non-empty printable string of at most {MAX_LABEL_LENGTH} "
                             f"characters. Received: {shown}")
    return value


def _threshold(value: Any) -> float | None | str:
    from edgemeta.runtime.threshold import check_threshold

    try:
        return check_threshold(value, words=("adapter",))  # "adapter": the field left out
    except ValueError:
        raise HTTPError(400, "unknown_threshold must be a distance >= 0, or null to always answer the nearest "
                             f"class (leave it out for the service's). Received: {_describe(value)}") from None


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


# -- addresses ---------------------------------------------------------------------------------------
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

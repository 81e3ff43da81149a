"""What each endpoint of the service does, apart from HTTP: validated JSON in, a JSON-ready dict out,
`HTTPError` otherwise; and the limits one request is held to."""

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
                "memory": {"budget_bytes": self.memory_budget, "request_reserve_bytes": request_reserve(
                    self.limits, self.adapter.embedder.manifest.preprocessing.channels),
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

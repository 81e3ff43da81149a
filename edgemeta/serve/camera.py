"""The service's camera endpoints, apart from HTTP: status, a preview still, teach from N frames, classify one frame.

`CameraEndpoints(service, source)` answers as `Service` does (a JSON-ready dict, or `HTTPError`); the routes
(GET /camera, GET /camera/frame.jpg, POST /camera/teach, POST /camera/classify) are edgemeta.serve.http's.
`teach` and `classify` take the service's work lock themselves (`service.working()`): call them WITHOUT holding it.
Frames are held to the service's own limits: a teach's frames together to `--max-pixels` decoded pixels (each
frame downscaled to its share), so a camera request costs no more than an API request (docs/camera.md).
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any

from edgemeta.runtime.camera import (
    MAX_CAPTURE_FRAMES,
    MAX_CAPTURE_SECONDS,
    CameraError,
    FrameSource,
    capture,
    fit_pixels,
    jpeg_bytes,
)
from edgemeta.serve.api import (
    WORK_WAIT_SECONDS,
    HTTPError,
    Service,
    _describe,
    _label,
    _threshold,
    fields_of,
    prediction_json,
)

DEFAULT_FRAMES = 8
DEFAULT_SECONDS = 3.0
PREVIEW_SIDE = 640
PREVIEW_QUALITY = 80
# Previews asked for within this long of the last one get the same JPEG: a phone polling, or several phones, cost
# one frame at a time.
PREVIEW_MAX_AGE = 0.25


def no_camera(path: str) -> HTTPError:
    """The 404 for a camera route when the service runs without a camera."""
    return HTTPError(404, "No camera is configured on this board: start the service with --camera auto, picamera2, "
                          f"opencv, opencv:N or a folder of images (docs/camera.md). Received: {path[:100]}")


class CameraEndpoints:
    """The camera's endpoints for `service`, reading frames from `source` (`edgemeta.runtime.camera.open_camera`)."""

    def __init__(self, service: Service, source: FrameSource) -> None:
        self.service, self.source = service, source
        self._preview = threading.Lock()  # one preview frame decoded and encoded at a time
        self._last: tuple[float, bytes] | None = None

    def status(self) -> dict:
        return {"camera": self.source.name, "preview": "/camera/frame.jpg",
                "teach": {"frames": DEFAULT_FRAMES, "seconds": DEFAULT_SECONDS, "max_frames": MAX_CAPTURE_FRAMES,
                          "max_seconds": MAX_CAPTURE_SECONDS},
                "max_pixels": self.service.limits.max_pixels}

    def frame_jpeg(self) -> bytes:
        """A JPEG still of what the camera sees now (at most PREVIEW_SIDE pixels a side)."""
        if not self._preview.acquire(timeout=WORK_WAIT_SECONDS):
            raise HTTPError(503, f"The camera is busy: waited {WORK_WAIT_SECONDS:.0f} s for a frame. Retry later. "
                                 "Received: one more preview", {"Retry-After": "2"})
        try:
            if self._last is not None and time.monotonic() - self._last[0] < PREVIEW_MAX_AGE:
                return self._last[1]
            data = jpeg_bytes(self._read(), PREVIEW_SIDE, PREVIEW_QUALITY)
            self._last = (time.monotonic(), data)
            return data
        finally:
            self._preview.release()

    def teach(self, body: Any) -> dict:
        """Enrolls `frames` frames (1..MAX_CAPTURE_FRAMES, default 8) read over `seconds` (0..MAX_CAPTURE_SECONDS,
        default 3) under `label`."""
        from edgemeta.runtime import MemoryBudgetError

        fields = fields_of(body, required=("label",), optional=("frames", "seconds"))
        label = _label(fields["label"])
        frames = fields.get("frames", DEFAULT_FRAMES)
        if isinstance(frames, bool) or not isinstance(frames, int) or not 1 <= frames <= MAX_CAPTURE_FRAMES:
            raise HTTPError(400, f"frames must be an integer from 1 to {MAX_CAPTURE_FRAMES}. Received: {_describe(frames)}")
        seconds = fields.get("seconds", DEFAULT_SECONDS)
        if (isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds)
                or not 0 <= seconds <= MAX_CAPTURE_SECONDS):
            raise HTTPError(400, f"seconds must be a number from 0 to {MAX_CAPTURE_SECONDS:g}. "
                                 f"Received: {_describe(seconds)}")
        # Under the work lock: one teach's frames at a time, as one request's images.
        with self.service.working():
            try:
                shots = capture(self.source, frames, float(seconds), max_pixels=self._max_pixels())
            except CameraError as e:
                raise HTTPError(503, f"{e} Nothing was taught.") from e
            try:
                total = self.service.adapter.enroll(label, shots)
            except MemoryBudgetError as e:
                raise HTTPError(507, str(e)) from e
            except (ValueError, TypeError) as e:
                raise HTTPError(400, str(e)) from e
            except OSError as e:  # the store could not be saved: the adapter kept nothing
                raise HTTPError(507, f"Could not save the store to {self.service.state_path} ({e}); nothing was "
                                     f"changed. Received: {len(shots)} camera frame(s) for {label!r}") from e
        return {"label": label, "shots": total, "added": len(shots), "classes": len(self.service.adapter.labels),
                "frame_size": list(shots[0].shape[1::-1]) if shots else None}

    def classify(self, body: Any) -> dict:
        """One frame classified, answered as `Service.classify` answers one image. `body`: {} or
        {"unknown_threshold": ...}."""
        fields = fields_of(body, required=(), optional=("unknown_threshold",))
        threshold = _threshold(fields.get("unknown_threshold", "adapter"))
        adapter = self.service.adapter
        if not adapter.labels:
            raise HTTPError(409, "No classes enrolled yet: teach some first (POST /camera/teach or /enroll). "
                                 "Received: a camera classify request")
        with self.service.working():
            frame = fit_pixels(self._read(), self._max_pixels())
            try:
                predictions = adapter.classify(frame, unknown_threshold=threshold)
            except RuntimeError as e:  # every class forgotten meanwhile
                raise HTTPError(409, f"{e} Received: a camera classify request") from e
            except (ValueError, TypeError) as e:
                raise HTTPError(400, str(e)) from e
        return {"predictions": [prediction_json(p) for p in predictions]}

    # -- internals ---------------------------------------------------------------------------------
    def _read(self) -> Any:
        try:
            return self.source.read()
        except CameraError as e:
            raise HTTPError(503, str(e), {"Retry-After": "5"}) from e

    def _max_pixels(self) -> int:
        """Pixels a camera request may decode: the service's per request, within the runtime's per image."""
        embedder = self.service.adapter.embedder
        return min(self.service.limits.max_pixels, getattr(embedder, "max_pixels", self.service.limits.max_pixels))

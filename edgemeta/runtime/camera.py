"""The board's own camera behind one small interface: RGB frames of bounded size from picamera2, OpenCV, or a folder.

- `open_camera(spec)`: "auto" (the first present of picamera2 and OpenCV's `VideoCapture(0)`, else None), "none",
  "picamera2", "opencv", "opencv:N", "opencv:/dev/videoN", or a directory of PNG/JPEG images (`FolderSource`, the
  fake camera of tests and demos); `find_camera` is "auto" that also says what it looked for.
- `FrameSource`: `.name`, `.read()` -> uint8 RGB `(H, W, 3)` of at most `MAX_FRAME_PIXELS`, `.close()`; `read` is
  thread-safe (a lock in each source), so a preview and a teach can share one camera.
- `capture(source, frames, seconds)`: up to `MAX_CAPTURE_FRAMES` frames spread over up to `MAX_CAPTURE_SECONDS`.
- `jpeg_bytes(frame)`: a preview still.

Only numpy and Pillow are imported here; picamera2 (Raspberry Pi OS: `sudo apt install python3-picamera2`) and
OpenCV (`pip install 'edgemeta[camera]'`) are imported when chosen. Never TensorFlow (docs/camera.md).
"""

from __future__ import annotations

import importlib.util
import io
import math
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

# ~1 MP: the board's largest image (edgemeta.profiles.BOARD_MAX_PIXELS), far above any few-shot model's input;
# a larger frame is downscaled before anyone keeps it.
MAX_FRAME_PIXELS = 2**20
MAX_CAPTURE_FRAMES = 30
MAX_CAPTURE_SECONDS = 10.0
# Pixels of one teach, all frames together (each frame downscaled to its share): 30 full frames would be 90 MB.
CAPTURE_PIXELS = 2**20
FRAME_SIZE = (640, 480)  # what a camera is asked for: a modest size, read quickly on a Pi Zero
FOLDER_FORMATS = ("PNG", "JPEG")
FOLDER_SUFFIXES = (".png", ".jpg", ".jpeg")
MAX_FOLDER_FILES = 10_000  # a folder is listed at every read: a bounded listing
SPECS = ("auto", "none", "picamera2", "opencv", "opencv:N", "opencv:/dev/videoN", "a directory of PNG/JPEG images")


class CameraError(RuntimeError):
    """A camera that cannot be opened or read: its library missing, no device, no frame, no image in the folder."""


@runtime_checkable
class FrameSource(Protocol):
    """Where frames come from. `read` returns uint8 RGB `(H, W, 3)` of at most `MAX_FRAME_PIXELS` and is safe to
    call from several threads; `close` releases the device."""

    name: str

    def read(self) -> np.ndarray: ...

    def close(self) -> None: ...


# -- frames ------------------------------------------------------------------------------------------
def as_frame(pixels: Any, max_pixels: int = MAX_FRAME_PIXELS) -> np.ndarray:
    """`pixels` as a frame: uint8 RGB `(H, W, 3)` (grey replicated, alpha dropped, float [0, 1] scaled),
    downscaled to at most `max_pixels` (`fit_pixels`)."""
    array = np.asarray(pixels)
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)) or 0 in array.shape:
        raise ValueError(f"A frame is an image of shape (H, W) or (H, W, C) with C in 1, 3, 4. "
                         f"Received: {array.dtype} of shape {array.shape}")
    if array.dtype != np.uint8:
        if array.dtype.kind != "f":
            raise ValueError(f"A frame's pixels are uint8, or floats in [0, 1]. Received: {array.dtype}")
        array = np.round(np.clip(np.nan_to_num(array), 0.0, 1.0) * 255).astype(np.uint8)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    array = fit_pixels(array, max_pixels)  # before the RGB copy: a grey 4 MP image never becomes 12 MB
    if array.ndim == 2:
        return np.repeat(array[:, :, None], 3, axis=2)
    return np.ascontiguousarray(array[:, :, :3])


def fit_pixels(frame: np.ndarray, max_pixels: int) -> np.ndarray:
    """`frame` (uint8, `(H, W)` or `(H, W, C)`) itself when it has at most `max_pixels` pixels, else a copy
    downscaled, aspect kept, to at most that many."""
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise ValueError(f"max_pixels must be a positive integer. Received: {max_pixels!r}")
    h, w = frame.shape[:2]
    if h * w <= max_pixels:
        return frame
    scale = math.sqrt(max_pixels / (h * w))
    size = (max(1, int(w * scale)), max(1, int(h * scale)))
    while size[0] * size[1] > max_pixels:  # int() rounding can leave one row too many for a very thin frame
        size = (max(1, size[0] - 1), max(1, size[1] - 1))
    # reducing_gap: a first integer reduction in the source's blocks, then a bilinear step (fast on a Pi, and smooth)
    return np.asarray(Image.fromarray(frame).resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0))


def jpeg_bytes(frame: np.ndarray, max_side: int = 640, quality: int = 80) -> bytes:
    """A JPEG still of `frame` (as `as_frame` takes it) at most `max_side` pixels on its longer side."""
    if isinstance(max_side, bool) or not isinstance(max_side, int) or not 16 <= max_side <= 4096:
        raise ValueError(f"max_side must be an integer from 16 to 4096. Received: {max_side!r}")
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 95:
        raise ValueError(f"quality must be an integer from 1 to 95. Received: {quality!r}")
    image = Image.fromarray(as_frame(frame))
    image.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()


def capture(source: FrameSource, frames: int, seconds: float, *, max_pixels: int | None = None,
            stop: threading.Event | None = None) -> list[np.ndarray]:
    """`frames` frames read from `source`, spread evenly over `seconds` (the first at once, the last at `seconds`).
    `max_pixels`: all frames together at most this many pixels (each downscaled to its share; default none beyond
    each frame's `MAX_FRAME_PIXELS`). `stop`: when set, capture ends early and returns the frames read so far."""
    if isinstance(frames, bool) or not isinstance(frames, int) or not 1 <= frames <= MAX_CAPTURE_FRAMES:
        raise ValueError(f"frames must be an integer from 1 to {MAX_CAPTURE_FRAMES}. Received: {frames!r}")
    if (isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds)
            or not 0 <= seconds <= MAX_CAPTURE_SECONDS):
        raise ValueError(f"seconds must be a number from 0 to {MAX_CAPTURE_SECONDS:g}. Received: {seconds!r}")
    share = MAX_FRAME_PIXELS if max_pixels is None else max(1, max_pixels // frames)
    step = seconds / (frames - 1) if frames > 1 else 0.0
    start, out = time.monotonic(), []
    for i in range(frames):
        wait = start + i * step - time.monotonic()
        if wait > 0:
            if stop is not None:
                if stop.wait(wait):
                    break
            else:
                time.sleep(wait)
        if stop is not None and stop.is_set():
            break
        out.append(fit_pixels(source.read(), share))
    return out


# -- sources -----------------------------------------------------------------------------------------
class FolderSource:
    """The fake camera: the PNG/JPEG files of a directory, in name order, cycled. The directory is listed again at
    every read (at most `MAX_FOLDER_FILES` entries), so files added, removed or swapped are seen at the next frame.
    Each file is decoded within `max_decode_pixels` (`edgemeta.format.images.decode_image`: a large JPEG at a reduced
    scale) and downscaled to `MAX_FRAME_PIXELS`; a file that cannot be read is skipped (`skipped` says why)."""

    def __init__(self, path: str | os.PathLike, max_decode_pixels: int | None = None) -> None:
        from edgemeta.format.images import DEFAULT_MAX_PIXELS

        self.path = Path(path)
        if not self.path.is_dir():
            raise ValueError(f"A folder camera needs a directory of PNG/JPEG images. Received: {str(path)!r} "
                             f"({'not a directory' if self.path.exists() else 'no such directory'})")
        self.max_decode_pixels = DEFAULT_MAX_PIXELS if max_decode_pixels is None else max_decode_pixels
        self.skipped: dict[str, str] = {}  # file name -> why it was skipped, at its last try
        self._lock = threading.Lock()
        self._next = 0
        self._files = self._list()
        if not self._files:
            raise CameraError(f"The folder camera found no image in {str(self.path)!r}: it reads files named "
                              f"{', '.join('*' + s for s in FOLDER_SUFFIXES)}. Received: an empty folder"
                              f"{self._others()}")

    @property
    def name(self) -> str:
        return f"folder:{self.path} ({len(self._files)} images)"

    def read(self) -> np.ndarray:
        from edgemeta.format.images import ImageDecodeError, decode_image

        with self._lock:
            self._files = files = self._list()
            for _ in range(len(files)):
                file = files[self._next % len(files)]
                self._next = self._next % len(files) + 1
                try:
                    pixels = decode_image(file, max_pixels=self.max_decode_pixels, draft=FRAME_SIZE,
                                          formats=FOLDER_FORMATS)
                except FileNotFoundError:  # removed since the listing
                    continue
                except ImageDecodeError as e:
                    self.skipped[file.name] = e.reason
                    continue
                self.skipped.pop(file.name, None)
                return as_frame(pixels)
            why = "; ".join(f"{name}: {reason}" for name, reason in list(self.skipped.items())[:5])
            raise CameraError(f"The folder camera could not read an image from {str(self.path)!r}. Received: "
                              f"{len(files)} image file(s){f' ({why})' if why else ''}")

    def close(self) -> None:
        pass

    def _list(self) -> list[Path]:
        files = []
        with os.scandir(self.path) as entries:
            for i, entry in enumerate(entries):
                if i >= MAX_FOLDER_FILES:
                    break
                if entry.name.lower().endswith(FOLDER_SUFFIXES) and not entry.name.startswith(".") and entry.is_file():
                    files.append(Path(entry.path))
        return sorted(files)

    def _others(self) -> str:
        names = sorted(os.listdir(self.path))[:5]
        return f" (other files: {names})" if names else ""


class OpenCVSource:
    """A USB webcam or another V4L2 device through OpenCV's `VideoCapture`: `device` an index (0: the first) or a
    device path; asked for `size` frames, converted from OpenCV's BGR to RGB."""

    def __init__(self, device: int | str = 0, size: tuple[int, int] = FRAME_SIZE) -> None:
        try:
            import cv2
        except ImportError:
            raise CameraError("OpenCV is not installed: pip install 'edgemeta[camera]' (opencv-python-headless). "
                              f"Received: camera 'opencv:{device}'") from None
        self._cv2 = cv2
        self.name = f"opencv:{device}"
        self._lock = threading.Lock()
        self._capture = cv2.VideoCapture(device)
        if not self._capture.isOpened():
            self._capture.release()
            raise CameraError(f"OpenCV could not open camera {device!r}: is a camera plugged in (ls /dev/video*), and "
                              f"is this user in the 'video' group? Received: camera 'opencv:{device}'")
        self._capture.set(cv2.CAP_PROP_FRAME_WIDTH, size[0])
        self._capture.set(cv2.CAP_PROP_FRAME_HEIGHT, size[1])
        self._capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the newest frame, not one queued seconds ago (where supported)

    def read(self) -> np.ndarray:
        with self._lock:
            ok, frame = self._capture.read()
        if not ok or frame is None:
            raise CameraError(f"OpenCV gave no frame from {self.name} (unplugged, or in use by another program). "
                              "Received: nothing")
        if frame.ndim == 3 and frame.shape[2] >= 3:
            frame = frame[:, :, 2::-1]  # BGR(A) -> RGB
        return as_frame(frame)

    def close(self) -> None:
        with self._lock:
            self._capture.release()


class PiCamera2Source:
    """The Raspberry Pi camera through picamera2 (libcamera), configured for `size` stills in RGB888."""

    def __init__(self, size: tuple[int, int] = FRAME_SIZE, camera: int = 0) -> None:
        try:
            from picamera2 import Picamera2
        except ImportError:
            raise CameraError("picamera2 is not installed: on Raspberry Pi OS, sudo apt install python3-picamera2 "
                              "(in a venv made with --system-site-packages). Received: camera 'picamera2'") from None
        found = Picamera2.global_camera_info()
        if len(found) <= camera:
            raise CameraError(f"picamera2 finds {len(found)} camera(s): is the ribbon cable seated, and does "
                              f"`rpicam-hello --list-cameras` list it? Received: camera 'picamera2' (number {camera})")
        self.name = "picamera2" + (f":{camera}" if camera else "")
        self._lock = threading.Lock()
        self._camera = Picamera2(camera)
        try:
            self._camera.configure(self._camera.create_still_configuration(main={"size": size, "format": "RGB888"}))
            self._camera.start()
        except BaseException:
            self._camera.close()
            raise

    def read(self) -> np.ndarray:
        with self._lock:
            frame = self._camera.capture_array("main")
        # libcamera's RGB888 lays each pixel out as B, G, R (Picamera2 manual, appendix A): reversed to RGB.
        return as_frame(np.asarray(frame)[:, :, 2::-1])

    def close(self) -> None:
        with self._lock:
            try:
                self._camera.stop()
            finally:
                self._camera.close()


# -- choosing ----------------------------------------------------------------------------------------
def find_camera() -> tuple[FrameSource | None, list[str]]:
    """What "auto" opens: the first present of picamera2 and OpenCV's `VideoCapture(0)`, else None; and what was
    looked for, one line each (for a message when nothing was found)."""
    looked = []
    candidates = (("picamera2", "picamera2", PiCamera2Source), ("OpenCV VideoCapture(0)", "cv2", OpenCVSource))
    for name, module, opener in candidates:
        if not _installed(module):
            looked.append(f"{name}: not installed")
            continue
        try:
            return opener(), looked
        except CameraError as e:
            looked.append(f"{name}: {e}")
    return None, looked


def _installed(module: str) -> bool:
    """Whether `module` can be imported, found without importing it (None in sys.modules: blocked)."""
    if module in sys.modules:
        return sys.modules[module] is not None
    return importlib.util.find_spec(module) is not None


def open_camera(spec: str = "auto") -> FrameSource | None:
    """The camera `spec` names (see the module's docstring); None for "none", or for "auto" when none is present.
    ValueError for a spec that names nothing; CameraError for a camera named that cannot be opened."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"A camera is one of {', '.join(SPECS)}. Received: {spec!r}")
    text = spec.strip()
    if text == "none":
        return None
    if text == "auto":
        return find_camera()[0]
    if text == "picamera2":
        return PiCamera2Source()
    if text == "opencv" or text.startswith("opencv:"):
        device = text.partition(":")[2] or "0"
        if device.isdigit():
            return OpenCVSource(int(device))
        if device.startswith("/dev/video"):
            return OpenCVSource(device)
        raise ValueError(f"An OpenCV camera is opencv, opencv:N (a device index) or opencv:/dev/videoN. Received: {spec!r}")
    if os.path.isdir(text):
        return FolderSource(text)
    looks_like_path = os.sep in text or text.startswith((".", "~"))
    raise ValueError(f"{'No such directory' if looks_like_path else 'Unknown camera'}: a camera is one of "
                     f"{', '.join(SPECS)}. Received: {spec!r}")


__all__ = ["CAPTURE_PIXELS", "MAX_CAPTURE_FRAMES", "MAX_CAPTURE_SECONDS", "MAX_FRAME_PIXELS", "CameraError",
           "FolderSource", "FrameSource", "OpenCVSource", "PiCamera2Source", "as_frame", "capture", "find_camera",
           "fit_pixels", "jpeg_bytes", "open_camera"]

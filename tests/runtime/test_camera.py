"""edgemeta.runtime.camera: the folder camera (cycling, bounds, skipped files), choosing a camera by its spec,
capture, preview stills, thread-safe reads, and the picamera2 / OpenCV sources against their libraries' calls."""

from __future__ import annotations

import io
import math
import sys
import threading
import time
import types
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from edgemeta.runtime.camera import (
    MAX_FRAME_PIXELS,
    CameraError,
    FolderSource,
    FrameSource,
    OpenCVSource,
    PiCamera2Source,
    capture,
    find_camera,
    fit_pixels,
    jpeg_bytes,
    open_camera,
)
from tests.harness import run_python


def drawing(kind: str, variant: int) -> np.ndarray:
    """An Omniglot-like drawing (black strokes on white, 105x105) of `kind` (circle, cross, zigzag); each `variant`
    moves the strokes a few pixels, as another hand would draw them."""
    rng = np.random.default_rng(1000 * len(kind) + variant)

    def j() -> float:
        return float(rng.uniform(-6, 6))

    image = Image.new("L", (105, 105), 255)
    pen = ImageDraw.Draw(image)
    if kind == "circle":
        r, cx, cy = 30 + j() / 2, 52 + j(), 52 + j()
        pen.ellipse((cx - r, cy - r, cx + r, cy + r), outline=0, width=3)
    elif kind == "cross":
        pen.line((20 + j(), 20 + j(), 85 + j(), 85 + j()), fill=0, width=3)
        pen.line((85 + j(), 20 + j(), 20 + j(), 85 + j()), fill=0, width=3)
    elif kind == "zigzag":
        pen.line([(15 + 15 * i + j() / 2, (30 if i % 2 else 75) + j()) for i in range(6)], fill=0, width=3)
    else:
        raise ValueError(kind)
    return np.asarray(image)


def save(array: np.ndarray, path: Path, **options) -> Path:
    Image.fromarray(array).save(path, **options)
    return path


def rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[:, :, None], 3, axis=2)


@pytest.fixture
def folder(tmp_path) -> tuple[Path, list[np.ndarray]]:
    """Three drawings saved as a.png, b.png, c.png (name order: the order they are read in)."""
    images = [drawing("circle", 0), drawing("cross", 0), drawing("zigzag", 0)]
    for name, image in zip("abc", images):
        save(image, tmp_path / f"{name}.png")
    return tmp_path, images


def test_the_folder_camera_cycles_its_images_in_name_order_as_rgb_frames(folder):
    path, images = folder
    source = open_camera(str(path))
    assert isinstance(source, FolderSource) and isinstance(source, FrameSource)
    assert source.name == f"folder:{path} (3 images)"
    frames = [source.read() for _ in range(7)]
    for i, frame in enumerate(frames):
        assert frame.dtype == np.uint8 and frame.shape == (105, 105, 3)
        np.testing.assert_array_equal(frame, rgb(images[i % 3]))
    source.close()


def test_the_folder_is_read_again_at_every_frame(folder):
    path, images = folder
    source = FolderSource(path)
    np.testing.assert_array_equal(source.read(), rgb(images[0]))
    for name in "abc":
        (path / f"{name}.png").unlink()
    swapped = drawing("circle", 7)
    save(swapped, path / "z.png")
    np.testing.assert_array_equal(source.read(), rgb(swapped))
    assert source.name.endswith("(1 images)")
    (path / "z.png").unlink()
    with pytest.raises(CameraError, match="could not read an image .* Received: 0 image file"):
        source.read()


def test_files_that_are_not_images_are_skipped_and_said(tmp_path):
    good = save(drawing("cross", 1), tmp_path / "m.png")
    (tmp_path / "b.png").write_bytes(b"not a png at all")  # sorts first: tried, refused, skipped
    (tmp_path / "notes.txt").write_text("a camera folder")
    save(drawing("circle", 1), tmp_path / ".hidden.png")
    (tmp_path / "sub.png").mkdir()
    source = FolderSource(tmp_path)
    assert source.name.endswith("(2 images)")  # b.png and m.png: by name, until read
    for _ in range(3):
        np.testing.assert_array_equal(source.read(), rgb(np.asarray(Image.open(good))))
    assert list(source.skipped) == ["b.png"] and "not a known image file" in source.skipped["b.png"]


def test_an_empty_folder_or_one_without_images_is_refused_clearly(tmp_path):
    with pytest.raises(CameraError, match=r"found no image in .*\*\.png, \*\.jpg, \*\.jpeg. Received: an empty folder$"):
        FolderSource(tmp_path)
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(CameraError, match=r"Received: an empty folder \(other files: \['readme.txt'\]\)"):
        open_camera(str(tmp_path))


def test_huge_images_are_decoded_within_bounds_and_downscaled_to_a_frame(tmp_path):
    big = np.full((1200, 1800), 255, np.uint8)
    big[300:900, 400:1400] = 0
    save(big, tmp_path / "a_large.png")  # 2.2 MP PNG: decoded, then downscaled
    photo = np.random.default_rng(0).integers(0, 256, (40, 60, 3), np.uint8).repeat(100, 0).repeat(100, 1)
    save(photo, tmp_path / "b_photo.jpg", quality=90)  # 24 MP JPEG: decodes at a reduced scale first
    bomb = tmp_path / "c_bomb.png"
    Image.new("L", (6000, 6000), 255).save(bomb)  # 36 MP of white in ~40 KB: refused from its header
    source = FolderSource(tmp_path)
    large, scaled = source.read(), source.read()
    assert large.shape[0] * large.shape[1] <= MAX_FRAME_PIXELS and large.shape[2] == 3
    assert abs(large.shape[1] / large.shape[0] - 1.5) < 0.01  # aspect kept
    assert large[large.shape[0] // 2, large.shape[1] // 2, 0] == 0 and large[5, 5, 0] == 255
    assert scaled.shape[0] * scaled.shape[1] <= MAX_FRAME_PIXELS and abs(scaled.shape[1] / scaled.shape[0] - 1.5) < 0.01
    third = source.read()  # the bomb is skipped: the cycle goes on to the first image
    np.testing.assert_array_equal(third, large)
    assert "36000000 pixels" in source.skipped["c_bomb.png"] and "more than max_pixels" in source.skipped["c_bomb.png"]
    for name in ("a_large.png", "b_photo.jpg"):
        (tmp_path / name).unlink()
    with pytest.raises(CameraError, match=r"could not read an image .*c_bomb.png: 6000x6000 = 36000000 pixels"):
        source.read()


def test_specs_choose_the_source_or_say_what_is_available(tmp_path, monkeypatch):
    assert open_camera("none") is None
    missing = tmp_path / "no-such-folder"
    with pytest.raises(ValueError, match=f"No such directory: a camera is one of auto, none, picamera2, opencv, .*"
                                         f"Received: '{missing}'"):
        open_camera(str(missing))
    with pytest.raises(ValueError, match="Unknown camera: a camera is one of .*Received: 'webcam'"):
        open_camera("webcam")
    with pytest.raises(ValueError, match="opencv:N .*Received: 'opencv:front'"):
        open_camera("opencv:front")
    with pytest.raises(ValueError, match="Received: '  '"):
        open_camera("  ")
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(ValueError, match="not a directory"):
        FolderSource(tmp_path / "file.png")
    # Libraries absent (blocked here, whatever this machine has): named, with how to install them.
    monkeypatch.setitem(sys.modules, "cv2", None)
    monkeypatch.setitem(sys.modules, "picamera2", None)
    with pytest.raises(CameraError, match=r"OpenCV is not installed: pip install 'edgemeta\[camera\]'.*'opencv:2'"):
        open_camera("opencv:2")
    with pytest.raises(CameraError, match="sudo apt install python3-picamera2"):
        open_camera("picamera2")
    assert open_camera("auto") is None
    assert find_camera() == (None, ["picamera2: not installed", "OpenCV VideoCapture(0): not installed"])


def test_auto_finds_no_camera_on_this_machine():
    import importlib.util

    if importlib.util.find_spec("cv2") or importlib.util.find_spec("picamera2"):
        pytest.skip("this machine has OpenCV or picamera2")
    assert open_camera() is None and open_camera("auto") is None


def test_capture_spreads_frames_over_the_seconds_and_bounds_them(folder):
    path, images = folder
    source = FolderSource(path)
    start = time.monotonic()
    frames = capture(source, 3, 0.4)
    took = time.monotonic() - start
    assert 0.4 <= took < 2.0
    for frame, image in zip(frames, images):
        np.testing.assert_array_equal(frame, rgb(image))
    small = capture(source, 4, 0, max_pixels=4000)  # 1,000 pixels each of 11,025
    assert len(small) == 4 and all(f.shape[0] * f.shape[1] <= 1000 and f.shape[2] == 3 for f in small)
    for count in (0, 31, True, 2.0):
        with pytest.raises(ValueError, match=f"frames must be an integer from 1 to 30. Received: {count!r}"):
            capture(source, count, 1)
    for seconds in (-1, 10.5, math.nan, "1"):
        with pytest.raises(ValueError, match="seconds must be a number from 0 to 10. Received"):
            capture(source, 3, seconds)
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    start = time.monotonic()
    early = capture(source, 30, 10, stop=stop)
    assert time.monotonic() - start < 2.0 and 1 <= len(early) < 30


def test_jpeg_preview_stills(folder):
    frame = np.random.default_rng(1).integers(0, 256, (768, 1024, 3), np.uint8)
    data = jpeg_bytes(frame)
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "JPEG" and im.size == (640, 480) and im.mode == "RGB"
    with Image.open(io.BytesIO(jpeg_bytes(drawing("circle", 0), max_side=64))) as im:
        assert im.size == (64, 64)
    for options in ({"max_side": 8}, {"quality": 0}, {"quality": 96}, {"max_side": True}):
        with pytest.raises(ValueError, match="Received"):
            jpeg_bytes(frame, **options)
    with pytest.raises(ValueError, match=r"Received: int64 of shape \(4,\)"):
        jpeg_bytes(np.arange(4))


def test_fit_pixels_keeps_small_frames_and_bounds_large_ones():
    frame = np.zeros((10, 4000, 3), np.uint8)  # very thin: the rounding must not leave it over the bound
    assert fit_pixels(frame, 40_000) is frame
    thin = fit_pixels(frame, 3_000)
    assert thin.shape[0] * thin.shape[1] <= 3_000 and thin.shape[0] >= 1
    with pytest.raises(ValueError, match="Received: 0"):
        fit_pixels(frame, 0)


def test_reads_from_many_threads_are_one_at_a_time_and_the_cycle_stays_exact(tmp_path, monkeypatch):
    import edgemeta.format.images as images_module

    images = [drawing(kind, v) for kind in ("circle", "cross") for v in range(2)] + [drawing("zigzag", 0)]
    for i, image in enumerate(images):
        save(image, tmp_path / f"{i}.png")
    source = FolderSource(tmp_path)
    decode, inside, overlaps = images_module.decode_image, [0], []
    guard = threading.Lock()

    def slow_decode(*args, **kwargs):  # holds each decode open a while: a read without its lock would overlap here
        with guard:
            inside[0] += 1
            overlaps.append(inside[0] > 1)
        try:
            time.sleep(0.002)
            return decode(*args, **kwargs)
        finally:
            with guard:
                inside[0] -= 1

    monkeypatch.setattr(images_module, "decode_image", slow_decode)
    seen, errors = Counter(), []

    def reader() -> None:
        try:
            for _ in range(10):
                frame = source.read()
                with guard:
                    seen[next(i for i, image in enumerate(images) if np.array_equal(frame, rgb(image)))] += 1
        except Exception as e:  # a torn frame (no image matches) or a failed read
            errors.append(e)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(overlaps) == 40 and not any(overlaps)
    assert seen == {i: 8 for i in range(5)}


def test_importing_the_camera_loads_neither_opencv_picamera2_nor_tensorflow():
    result = run_python("import sys, edgemeta.runtime.camera, edgemeta.serve.camera\n"
                        "print(sorted(m for m in ('cv2', 'picamera2', 'gpiozero', 'tensorflow', 'keras') if m in sys.modules))")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# -- the device sources, against their libraries' documented calls ------------------------------------
class FakeCapture:
    """cv2.VideoCapture as the OpenCV docs describe it: isOpened, set(prop, value), read() -> (ok, BGR frame)."""

    opened, frame = True, None

    def __init__(self, device):
        self.device, self.props, self.released = device, {}, False

    def isOpened(self):  # noqa: N802 (OpenCV's name)
        return self.opened

    def set(self, prop, value):
        self.props[prop] = value
        return True

    def read(self):
        return (self.frame is not None), self.frame

    def release(self):
        self.released = True


@pytest.fixture
def fake_cv2(monkeypatch):
    made = []

    def video_capture(device):
        made.append(FakeCapture(device))
        return made[-1]

    module = types.SimpleNamespace(VideoCapture=video_capture, CAP_PROP_FRAME_WIDTH=3, CAP_PROP_FRAME_HEIGHT=4,
                                   CAP_PROP_BUFFERSIZE=38, made=made)
    monkeypatch.setitem(sys.modules, "cv2", module)
    monkeypatch.setitem(sys.modules, "picamera2", None)
    monkeypatch.setattr(FakeCapture, "opened", True)
    return module


def test_opencv_frames_are_converted_from_bgr_and_bounded(fake_cv2, monkeypatch):
    bgr = np.zeros((1080, 1920, 3), np.uint8)
    bgr[:, :, 0] = 200  # blue, in OpenCV's order
    monkeypatch.setattr(FakeCapture, "frame", bgr)
    source = open_camera("opencv:/dev/video2")
    assert source.name == "opencv:/dev/video2" and fake_cv2.made[-1].device == "/dev/video2"
    assert fake_cv2.made[-1].props == {3: 640, 4: 480, 38: 1}
    frame = source.read()
    assert frame.shape[0] * frame.shape[1] <= MAX_FRAME_PIXELS and frame.shape[2] == 3
    assert (frame[:, :, 2] == 200).all() and (frame[:, :, :2] == 0).all()  # blue is RGB's third channel
    source.close()
    assert fake_cv2.made[-1].released
    monkeypatch.setattr(FakeCapture, "frame", None)
    with pytest.raises(CameraError, match="OpenCV gave no frame from opencv:0"):
        OpenCVSource(0).read()
    monkeypatch.setattr(FakeCapture, "opened", False)
    with pytest.raises(CameraError, match="could not open camera 1.*Received: camera 'opencv:1'"):
        open_camera("opencv:1")
    assert fake_cv2.made[-1].released
    source, looked = find_camera()  # auto: picamera2 absent, OpenCV present but no camera opens
    assert source is None and looked[0] == "picamera2: not installed" and "could not open camera 0" in looked[1]


class FakePicamera2:
    """picamera2.Picamera2 as its manual describes it: RGB888 arrays hold each pixel as B, G, R."""

    cameras = [{"Model": "imx708", "Num": 0}]

    def __init__(self, camera_num=0):
        self.config, self.started, self.closed = None, False, False
        FakePicamera2.last = self

    @staticmethod
    def global_camera_info():
        return FakePicamera2.cameras

    def create_still_configuration(self, main=None):
        return {"use_case": "still", "main": main}

    def configure(self, config):
        self.config = config

    def start(self):
        self.started = True

    def capture_array(self, name="main"):
        w, h = self.config["main"]["size"]
        frame = np.zeros((h, w, 3), np.uint8)
        frame[:, :, 2] = 150  # red, stored third in RGB888
        return frame

    def stop(self):
        self.started = False

    def close(self):
        self.closed = True


def test_picamera2_is_configured_for_rgb888_stills_and_its_frames_reach_rgb(monkeypatch):
    monkeypatch.setitem(sys.modules, "picamera2", types.SimpleNamespace(Picamera2=FakePicamera2))
    source, looked = find_camera()
    assert isinstance(source, PiCamera2Source) and looked == [] and source.name == "picamera2"
    assert FakePicamera2.last.config["main"] == {"size": (640, 480), "format": "RGB888"} and FakePicamera2.last.started
    frame = source.read()
    assert frame.shape == (480, 640, 3) and (frame[:, :, 0] == 150).all() and (frame[:, :, 1:] == 0).all()
    source.close()
    assert FakePicamera2.last.closed and not FakePicamera2.last.started
    monkeypatch.setattr(FakePicamera2, "cameras", [])
    with pytest.raises(CameraError, match="picamera2 finds 0 camera.*rpicam-hello --list-cameras"):
        open_camera("picamera2")

"""edgemeta.serve.camera.CameraEndpoints on the folder camera, the real Omniglot preset and its interpreter: status,
preview stills, teach and classify as the service answers them, bad bodies refused with nothing changed, the service's
limits and work lock applied to the camera's frames, a full budget (507) and a camera without frames (503)."""

from __future__ import annotations

import base64
import io
import math
import shutil
import threading
import time

import numpy as np
import pytest
from PIL import Image

import edgemeta.serve.camera as camera_module
from edgemeta.runtime import FewShotAdapter
from edgemeta.runtime.camera import FolderSource
from edgemeta.serve import HTTPError, Limits, Service
from edgemeta.serve.camera import CameraEndpoints, no_camera
from tests.runtime.test_camera import drawing, save


def show(folder, kind: str, variants) -> None:
    """Puts the drawings of `kind` in front of the folder camera, and nothing else."""
    for old in folder.iterdir():
        old.unlink()
    for v in variants:
        save(drawing(kind, v), folder / f"{kind}-{v}.png")


@pytest.fixture
def board(tmp_path):
    """A service on the Omniglot preset with a store file, and the camera endpoints on a folder camera."""
    folder = tmp_path / "camera"
    folder.mkdir()
    show(folder, "circle", range(3))
    state = tmp_path / "taught.store"
    adapter = FewShotAdapter.from_preset("omniglot", state)
    service = Service(adapter, state_path=state)
    yield CameraEndpoints(service, FolderSource(folder)), folder, state
    adapter.close()


def test_teach_then_classify_what_the_camera_sees(board):
    camera, folder, state = board
    assert camera.status() == {"camera": f"folder:{folder} (3 images)", "preview": "/camera/frame.jpg",
                               "teach": {"frames": 8, "seconds": 3.0, "max_frames": 30, "max_seconds": 10.0},
                               "max_pixels": 1_000_000}
    with pytest.raises(HTTPError) as info:
        camera.classify({})
    assert info.value.status == 409 and "No classes enrolled yet" in info.value.message
    taught = camera.teach({"label": "circle", "frames": 3, "seconds": 0})
    assert taught == {"label": "circle", "shots": 3, "added": 3, "classes": 1, "frame_size": [105, 105]}
    show(folder, "cross", range(3))
    assert camera.teach({"label": "cross", "frames": 3, "seconds": 0.2})["classes"] == 2
    assert camera.service.adapter.shots("cross") == 3
    for kind in ("circle", "cross"):
        show(folder, kind, [9])  # a drawing the camera was not taught with
        answer = camera.classify({})
        [p] = answer["predictions"]
        assert p["label"] == kind and p["nearest"] == kind and p["distance"] >= 0
        # The same shape as the service's classify of the same picture, sent as a file.
        png = io.BytesIO()
        Image.fromarray(drawing(kind, 9)).save(png, "PNG")
        with camera.service.working():
            served = camera.service.classify({"images": [base64.b64encode(png.getvalue()).decode()]})
        assert set(served["predictions"][0]) == set(p) and served["predictions"][0]["label"] == kind
        assert math.isclose(served["predictions"][0]["distance"], p["distance"], rel_tol=1e-5)
    assert camera.classify({"unknown_threshold": 0.0})["predictions"][0]["label"] is None  # the field as /classify's
    # Taught to the store file: a new adapter on it knows both classes.
    camera.service.adapter.close()
    with FewShotAdapter.from_preset("omniglot", state, read_only=True) as again:
        assert again.labels == ["circle", "cross"] and again.shots("circle") == 3


BAD_TEACH = [
    ([], "The body must be a JSON object"),
    ("circle", "The body must be a JSON object"),
    ({}, "missing ['label']"),
    ({"label": "x", "color": "red"}, "unknown ['color']"),
    ({"label": ""}, "label must be a non-empty printable string"),
    ({"label": 7}, "label must be a non-empty printable string"),
    ({"label": "x" * 257}, "label must be a non-empty printable string"),
    ({"label": "x", "frames": 0}, "frames must be an integer from 1 to 30. Received: int 0"),
    ({"label": "x", "frames": 31}, "frames must be an integer from 1 to 30. Received: int 31"),
    ({"label": "x", "frames": 2.0}, "frames must be an integer from 1 to 30. Received: float 2.0"),
    ({"label": "x", "frames": True}, "frames must be an integer from 1 to 30. Received: bool true"),
    ({"label": "x", "seconds": -1}, "seconds must be a number from 0 to 10. Received: int -1"),
    ({"label": "x", "seconds": 10.5}, "seconds must be a number from 0 to 10. Received: float 10.5"),
    ({"label": "x", "seconds": "3"}, "seconds must be a number from 0 to 10. Received: str"),
    ({"label": "x", "seconds": float("nan")}, "seconds must be a number from 0 to 10. Received: float NaN"),
]


def test_bad_bodies_are_refused_with_400_and_change_nothing(board):
    camera, folder, state = board
    camera.teach({"label": "circle", "frames": 2, "seconds": 0})
    saved, shots = state.read_bytes(), camera.service.adapter.shots("circle")
    for body, fragment in BAD_TEACH:
        with pytest.raises(HTTPError) as info:
            camera.teach(body)
        assert info.value.status == 400 and fragment in info.value.message and "Received" in info.value.message, body
    for body, fragment in (([], "The body must be a JSON object"), (None, "The body must be a JSON object"),
                           ({"label": "circle"}, "unknown ['label']"),
                           ({"unknown_threshold": -1}, "unknown_threshold must be a distance >= 0")):
        with pytest.raises(HTTPError) as info:
            camera.classify(body)
        assert info.value.status == 400 and fragment in info.value.message, body
    assert camera.service.adapter.labels == ["circle"] and camera.service.adapter.shots("circle") == shots
    assert state.read_bytes() == saved


def test_preview_stills_are_jpeg_and_shared_by_requests_close_together(board):
    camera, folder, _ = board
    first = camera.frame_jpeg()
    with Image.open(io.BytesIO(first)) as im:
        assert im.format == "JPEG" and im.size == (105, 105)
    assert camera.frame_jpeg() == first  # within PREVIEW_MAX_AGE: the same still, no new frame read
    for old in folder.iterdir():
        old.unlink()
    save(np.zeros((1500, 2000), np.uint8), folder / "large.png")  # the next frame: a large black one
    time.sleep(0.3)
    later = camera.frame_jpeg()
    with Image.open(io.BytesIO(later)) as im:
        assert im.size == (640, 480)


def test_the_camera_is_held_to_the_service_limits_and_its_work_lock(tmp_path, monkeypatch):
    folder = tmp_path / "camera"
    folder.mkdir()
    for v in range(3):
        save(np.asarray(Image.fromarray(drawing("circle", v)).resize((420, 420))), folder / f"{v}.png")
    with FewShotAdapter.from_preset("omniglot") as adapter:
        service = Service(adapter, limits=Limits(max_pixels=60_000))
        camera = CameraEndpoints(service, FolderSource(folder))
        held, real_capture = [], camera_module.capture

        def spying_capture(*args, **kwargs):  # is the model's lock held while the frames are taken?
            free = service._work.acquire(blocking=False)
            if free:
                service._work.release()
            held.append(not free)
            return real_capture(*args, **kwargs)

        monkeypatch.setattr(camera_module, "capture", spying_capture)
        taught = camera.teach({"label": "circle", "frames": 6, "seconds": 0})
        assert held == [True]
        w, h = taught["frame_size"]
        assert w * h <= 60_000 // 6  # each of the 6 frames within its share of --max-pixels
        seen = []
        real_classify = adapter.classify
        monkeypatch.setattr(adapter, "classify", lambda frame, **kw: (seen.append(np.shape(frame)),
                                                                      real_classify(frame, **kw))[1])
        camera.classify({})
        assert seen[0][0] * seen[0][1] <= 60_000 and seen[0][2] == 3
        # Another request holding the model: the camera waits for it (here: refused at once, the wait shortened).
        monkeypatch.setattr("edgemeta.serve.api.WORK_WAIT_SECONDS", 0.1)
        with service.working():
            result = []
            t = threading.Thread(target=lambda: result.append(_status_of(lambda: camera.teach({"label": "x"}))))
            t.start()
            t.join()
        assert result == [503] and adapter.labels == ["circle"]


def _status_of(call) -> int:
    try:
        call()
    except HTTPError as e:
        return e.status
    return 200


def test_a_full_budget_is_507_and_a_camera_without_frames_is_503(tmp_path):
    from edgemeta.runtime.budget import MemoryBudget

    folder = tmp_path / "camera"
    folder.mkdir()
    show(folder, "cross", range(3))
    options = {"keep_support": "images", "max_batch": 4, "max_pixels": 2**20}
    with FewShotAdapter.from_preset("omniglot", **options) as probe:
        fixed = -MemoryBudget.for_adapter(0, probe.embedder, probe.store).for_classes
    state = tmp_path / "taught.store"
    # 1.5 MB for classes: the store's first MB, then 2 frames kept as images (105x105 RGB, 33 KB each) fit, 30 do not.
    with FewShotAdapter.from_preset("omniglot", state, memory_budget=fixed + 3 * 2**19, **options) as adapter:
        camera = CameraEndpoints(Service(adapter, state_path=state), FolderSource(folder))
        with pytest.raises(HTTPError) as info:
            camera.teach({"label": "cross", "frames": 30, "seconds": 0})
        assert info.value.status == 507 and "Nothing was changed" in info.value.message
        assert adapter.labels == [] and not state.exists()
        assert camera.teach({"label": "cross", "frames": 2, "seconds": 0})["shots"] == 2  # a small one fits
        saved = state.read_bytes()
        shutil.rmtree(folder)
        folder.mkdir()  # the camera's folder emptied: no frame to give
        for call in (lambda: camera.teach({"label": "cross", "frames": 2, "seconds": 0}), lambda: camera.classify({}),
                     camera.frame_jpeg):
            with pytest.raises(HTTPError) as info:
                call()
            assert info.value.status == 503 and "could not read an image" in info.value.message
        assert adapter.shots("cross") == 2 and state.read_bytes() == saved


def test_no_camera_is_a_404_that_says_how_to_configure_one():
    error = no_camera("/camera/frame.jpg")
    assert error.status == 404 and "--camera auto, picamera2, opencv" in error.message
    assert error.message.endswith("Received: /camera/frame.jpg")

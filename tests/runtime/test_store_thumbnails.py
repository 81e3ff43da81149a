"""Format version 3 of the prototype store: per-class JPEG thumbnails and wall-clock times, persisted and
checked like every other member, counted in memory and in the plan; version-2 files still load; a failed
or killed save loses nothing."""

from __future__ import annotations

import hashlib
import io
import json
import random
import shutil
import signal
import struct
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
from PIL import Image

from edgemeta.format.images import thumbnail_jpeg
from edgemeta.runtime import FewShotAdapter, PrototypeStore, StoreError
from edgemeta.runtime.store import (
    MAGIC,
    THUMBNAIL_CLASS_BYTES,
    THUMBNAIL_ENTRY_BYTES,
    THUMBNAIL_MAX_BYTES,
    read_header,
)
from tests.harness import ROOT, run_python

SHA = "ab" * 32
FIXTURE = ROOT / "tests" / "runtime" / "fixtures" / "store-v2.store"
PRESET = ROOT / "edgemeta" / "presets" / "omniglot"


def _noise(seed: int, shape: tuple[int, ...] = (105, 105)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _jpeg(seed: int, shape: tuple[int, ...] = (64, 64)) -> bytes:
    return thumbnail_jpeg(_noise(seed, shape))


def _store(classes: int, seed: int, thumbnails: bool = True, dim: int = 16) -> PrototypeStore:
    rng = np.random.default_rng(seed)
    store = PrototypeStore(dim, SHA)
    store.wall_clock = lambda: 1.7e9 + seed  # the times written differ between two such stores
    for c in range(classes):
        store.add(f"class-{seed}-{c}", rng.normal(size=(1 + c % 3, dim)))
        if thumbnails:
            store.set_thumbnail(f"class-{seed}-{c}", _jpeg(seed * 1000 + c, (48 + c % 17, 64)))
    return store


def _same(a: PrototypeStore, b: PrototypeStore) -> bool:
    (la, pa), (lb, pb) = a.prototypes(), b.prototypes()
    return (la == lb and np.array_equal(pa, pb) and a.classes() == b.classes()
            and all(a.thumbnail(x) == b.thumbnail(x) for x in la))


# -- the thumbnail itself ----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["noise", "smooth photo", "grey"])
def test_a_4000x3000_image_makes_a_thumbnail_within_64_pixels_and_6_kib(kind):
    rng = np.random.default_rng(0)
    if kind == "noise":  # in 60-pixel blocks: noise at the thumbnail's scale too, its largest JPEG
        pixels = np.repeat(np.repeat(rng.integers(0, 256, (50, 67, 3), dtype=np.uint8), 60, 0), 60, 1)[:, :4000]
    elif kind == "smooth photo":
        pixels = np.zeros((3000, 4000, 3), np.uint8)
        pixels[..., 0] = np.linspace(0, 255, 4000, dtype=np.float32)[None].astype(np.uint8)
        pixels[800:2200, 1000:3000, 1] = 200
    else:
        pixels = rng.integers(0, 256, (3000, 4000), dtype=np.uint8)
    started = time.perf_counter()
    data = thumbnail_jpeg(pixels)
    seconds = time.perf_counter() - started
    with Image.open(io.BytesIO(data)) as im:
        print(f"{kind}: {len(data)} B, {im.size} {im.mode}, {seconds * 1000:.0f} ms")
        assert im.format == "JPEG" and im.size == (64, 48) and im.mode == ("L" if kind == "grey" else "RGB")
    assert 0 < len(data) <= THUMBNAIL_MAX_BYTES


def test_the_quality_then_the_side_is_lowered_until_the_bytes_fit():
    noise = _noise(1, (64, 64, 3))
    sizes = [len(thumbnail_jpeg(noise, max_bytes=limit)) for limit in (6144, 2000, 600)]
    assert sizes[0] > 2000 and sizes[1] <= 2000 and sizes[2] <= 600, sizes
    with Image.open(io.BytesIO(thumbnail_jpeg(noise, max_bytes=2000))) as im:
        assert im.size == (64, 64)  # a lower quality fits
    with Image.open(io.BytesIO(thumbnail_jpeg(noise, max_bytes=600))) as im:
        assert im.size == (48, 48)  # no quality fits 600 B at 64 pixels: a smaller side does
    tiny = thumbnail_jpeg(_noise(2, (10, 7)))
    with Image.open(io.BytesIO(tiny)) as im:
        assert im.size == (7, 10)  # never enlarged
    with Image.open(io.BytesIO(thumbnail_jpeg(np.dstack([_noise(3, (30, 40))] * 4)))) as im:
        assert im.mode == "RGB"  # alpha dropped


@pytest.mark.parametrize("pixels, fragment", [
    (np.zeros((20, 20), np.float32), "Received: float32 of shape (20, 20)"),
    (np.zeros((20, 20, 2), np.uint8), "Received: uint8 of shape (20, 20, 2)"),
    (np.zeros((0, 20), np.uint8), "Received: uint8 of shape (0, 20)"),
    (np.zeros(20, np.uint8), "Received: uint8 of shape (20,)"),
])
def test_bad_pixels_make_no_thumbnail(pixels, fragment):
    with pytest.raises(ValueError) as info:
        thumbnail_jpeg(pixels)
    assert fragment in str(info.value)


# -- in the store ------------------------------------------------------------------------------------
def test_thumbnails_and_times_round_trip_and_follow_their_class(tmp_path):
    store = _store(5, seed=1)
    store.add("plain", np.ones((1, 16)))  # no thumbnail
    store.save(tmp_path / "s")
    loaded = PrototypeStore.load(tmp_path / "s")
    assert _same(store, loaded) and read_header((tmp_path / "s").read_bytes())[0]["format_version"] == 3
    assert not loaded.classes()[-1].has_thumbnail and loaded.thumbnail("plain") is None
    assert all(info.enrolled == info.last_used == 1.7e9 + 1 for info in loaded.classes())
    before = loaded.thumbnail("class-1-2")
    loaded.rename("class-1-2", "renamed")
    assert loaded.thumbnail("renamed") == before and not loaded.has_thumbnail("class-1-2")
    with pytest.raises(KeyError, match="Received: 'class-1-2'"):
        loaded.thumbnail("class-1-2")
    loaded.remove("renamed")
    assert not loaded.has_thumbnail("renamed")
    loaded.save(tmp_path / "s")
    again = PrototypeStore.load(tmp_path / "s")
    assert "renamed" not in again and _same(loaded, again)
    with pytest.raises(ValueError, match="a class is enrolled under 'plain' already .*Received: 'plain'"):
        again.rename("class-1-0", "plain")
    with pytest.raises(ValueError, match="A thumbnail is a JPEG file"):
        again.set_thumbnail("plain", b"\x89PNG\r\n\x1a\n" + bytes(100))
    with pytest.raises(ValueError, match=f"1 to {THUMBNAIL_MAX_BYTES} bytes. Received: 7000 bytes"):
        again.set_thumbnail("plain", b"\xff\xd8\xff" + bytes(6995) + b"\xff\xd9")
    assert _same(loaded, again)  # the refusals changed nothing


def test_thumbnails_count_in_nbytes_and_are_given_back():
    store = _store(3, seed=2, thumbnails=False)
    empty = store.nbytes()
    data = _jpeg(5)
    store.set_thumbnail("class-2-1", data)
    assert store.nbytes() - empty == store.thumbnail_bytes() == sys.getsizeof(data) + THUMBNAIL_ENTRY_BYTES
    store.rename("class-2-1", "a much longer label than before")
    assert store.thumbnail_bytes() == sys.getsizeof(data) + THUMBNAIL_ENTRY_BYTES
    store.remove("a much longer label than before")
    assert store.thumbnail_bytes() == 0
    assert store.bytes_per_class(1, thumbnails=True) - store.bytes_per_class(1) == THUMBNAIL_CLASS_BYTES
    assert THUMBNAIL_CLASS_BYTES >= sys.getsizeof(b"x" * THUMBNAIL_MAX_BYTES) + THUMBNAIL_ENTRY_BYTES


def test_what_thumbnails_allocate_is_within_what_the_store_counts(tmp_path):
    """tracemalloc: 3000 thumbnails made and stored, then a save and a load of them, within `nbytes` and
    `persist_peak_bytes` (the dict entry's THUMBNAIL_ENTRY_BYTES is a bound, measured here)."""
    import tracemalloc

    store = PrototypeStore(16, SHA)
    for c in range(3000):
        store.add(f"class-{c}", np.ones((1, 16)))
    blobs = [_jpeg(c, (24 + c % 40, 30)) for c in range(3000)]
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        for c, data in enumerate(blobs):
            store.set_thumbnail(f"class-{c}", bytes(bytearray(data)))  # a fresh object, as a made thumbnail is
        grown = tracemalloc.get_traced_memory()[0] - start
        store.save(tmp_path / "s")
        PrototypeStore.load(tmp_path / "s")  # imports done
        tracemalloc.reset_peak()
        current = tracemalloc.get_traced_memory()[0]
        store.save(tmp_path / "s")
        save_extra = tracemalloc.get_traced_memory()[1] - current
        tracemalloc.reset_peak()
        start = tracemalloc.get_traced_memory()[0]
        loaded = PrototypeStore.load(tmp_path / "s")
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"3000 thumbnails: {grown} B allocated, {store.thumbnail_bytes()} B counted; save {save_extra // 1024} KiB, "
          f"load {(peak - current) // 1024} KiB beyond the result; persist_peak_bytes {store.persist_peak_bytes() // 1024} KiB; "
          f"loaded {(current - start) // 1024} KiB, nbytes {loaded.nbytes() // 1024} KiB")
    assert sum(map(sys.getsizeof, blobs)) < grown <= store.thumbnail_bytes()
    assert max(save_extra, peak - current) <= store.persist_peak_bytes()
    assert current - start <= loaded.nbytes() * 1.05 and _same(store, loaded)


# -- version 3's members, checked ---------------------------------------------------------------------
def _v3_parts(n: int = 3) -> tuple[dict, dict]:
    header = {"format": "edgemeta.store", "format_version": 3, "model_sha256": SHA, "embedding_size": 4,
              "prototype_dtype": "float32", "keep_support": None, "labels": [f"c{i}" for i in range(n)], "clock": 7}
    jpegs = [_jpeg(i, (8, 8)) for i in range(n)]
    arrays = {"means": np.ones((n, 4), np.float32), "scales": np.zeros(n, np.float32), "counts": np.ones(n, np.int64),
              "last_used": np.arange(n, dtype=np.int64), "enrolled_at": np.full(n, 1.7e9),
              "used_at": np.array([1.7e9 + i for i in range(n)]), "thumbnail_sizes": np.array([len(j) for j in jpegs]),
              "thumbnail_data": np.frombuffer(b"".join(jpegs), np.uint8)}
    return header, arrays


def _file(header: dict, arrays: dict | bytes) -> bytes:
    payload = io.BytesIO()
    if isinstance(arrays, bytes):
        payload.write(arrays)
    else:
        np.savez(payload, **arrays)
    text = json.dumps({**header, "payload_bytes": len(payload.getvalue())}).encode()
    body = MAGIC + struct.pack("<I", len(text)) + text + payload.getvalue()
    return body + hashlib.sha256(body).digest()


def _with(arrays: dict, name: str, value) -> dict:
    return {**arrays, name: value}


V3_CASES = [
    ("negative size", lambda a: _with(a, "thumbnail_sizes", np.array([-1, 0, 0])),
     "'thumbnail_sizes' must be from 0 to 6144 bytes. Received: -1 for label 'c0'"),
    ("size past the bound", lambda a: _with(a, "thumbnail_sizes", np.array([0, 7000, 0])),
     "'thumbnail_sizes' must be from 0 to 6144 bytes. Received: 7000 for label 'c1'"),
    ("sizes not adding up to the data", lambda a: _with(a, "thumbnail_sizes", a["thumbnail_sizes"] - 1),
     r"'thumbnail_data' must be uint8 of shape \("),
    ("sizes of another length", lambda a: _with(a, "thumbnail_sizes", np.array([10, 10])),
     "'thumbnail_sizes' must be int64 of shape"),
    ("data not a JPEG", lambda a: _with(a, "thumbnail_data", np.zeros(len(a["thumbnail_data"]), np.uint8)),
     "the thumbnail of label 'c0' is not a JPEG"),
    ("data as int16", lambda a: _with(a, "thumbnail_data", a["thumbnail_data"].astype(np.int16)),
     "'thumbnail_data' must be uint8"),
    ("an infinite time", lambda a: _with(a, "enrolled_at", np.array([1.7e9, np.inf, 1.7e9])),
     "'enrolled_at' must be Unix seconds .* Received: inf for label 'c1'"),
    ("a negative time", lambda a: _with(a, "used_at", np.array([1.7e9, 1.7e9, -5.0])), "'used_at' must be Unix seconds"),
    ("a time in the year 33658", lambda a: _with(a, "used_at", np.array([1e12, 1.7e9, 1.7e9])), "'used_at' must be Unix seconds"),
    ("times as float32", lambda a: _with(a, "used_at", a["used_at"].astype(np.float32)), "'used_at' must be float64"),
    ("a missing member", lambda a: {k: v for k, v in a.items() if k != "used_at"}, "arrays must be"),
]


@pytest.mark.parametrize("case, change, fragment", V3_CASES, ids=[c[0] for c in V3_CASES])
def test_an_inconsistent_version_3_member_is_refused_naming_it(tmp_path, case, change, fragment):
    header, arrays = _v3_parts()
    path = tmp_path / "s.store"
    path.write_bytes(_file(header, arrays))
    good = PrototypeStore.load(path)  # the unchanged parts load
    assert [info.has_thumbnail for info in good.classes()] == [True] * 3 and good.classes()[2].last_used == 1.7e9 + 2
    path.write_bytes(_file(header, change(dict(arrays))))
    with pytest.raises(StoreError, match=fragment):
        PrototypeStore.load(path)


def test_unknown_times_load_as_none_and_a_version_2_header_refuses_version_3_members(tmp_path):
    header, arrays = _v3_parts()
    path = tmp_path / "s.store"
    path.write_bytes(_file(header, {**arrays, "enrolled_at": np.full(3, np.nan)}))
    assert [info.enrolled for info in PrototypeStore.load(path).classes()] == [None] * 3
    path.write_bytes(_file({**header, "format_version": 2}, arrays))
    with pytest.raises(StoreError, match="arrays must be"):
        PrototypeStore.load(path)


def test_thumbnail_sizes_are_checked_before_their_bytes_are_read(tmp_path):
    """A data member whose npy header declares 3 x 6144 bytes that it does not hold: refused from the header
    (before a thumbnail is read), where zipfile would have read a short member to its end."""
    header, arrays = _v3_parts()
    arrays["thumbnail_sizes"] = np.full(3, THUMBNAIL_MAX_BYTES)
    payload = io.BytesIO()
    with zipfile.ZipFile(payload, "w", zipfile.ZIP_STORED) as zf:
        for name, value in arrays.items():
            with zf.open(f"{name}.npy", "w") as f:
                if name == "thumbnail_data":
                    np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False,
                                                             "shape": (3 * THUMBNAIL_MAX_BYTES,)})
                    f.write(b"\xff\xd8\xff" + bytes(97))
                else:
                    np.lib.format.write_array(f, value)
    path = tmp_path / "s.store"
    path.write_bytes(_file(header, payload.getvalue()))
    with pytest.raises(StoreError, match=f"'thumbnail_data' needs {3 * THUMBNAIL_MAX_BYTES} bytes. Received: a 2..-byte member"):
        PrototypeStore.load(path)


# -- version 2 ------------------------------------------------------------------------------------------
def test_a_version_2_file_written_by_the_previous_writer_loads_without_thumbnails_or_times(tmp_path):
    """tests/runtime/fixtures/store-v2.store was written by store.py's version-2 writer (commit c1a669a):
    3 classes of the omniglot preset's 64-d embeddings, kept shots, 'circle' used last."""
    rng = np.random.default_rng(20)
    shots = {label: rng.normal(size=(n, 64)).astype(np.float32) for label, n in (("circle", 1), ("square", 3),
                                                                                 ("€uro sign", 2))}
    assert read_header(FIXTURE.read_bytes())[0]["format_version"] == 2
    store = PrototypeStore.load(FIXTURE)
    labels, protos = store.prototypes()
    assert labels == list(shots) and [store.count(label) for label in labels] == [1, 3, 2]
    np.testing.assert_allclose(protos, [s.astype(np.float64).mean(0) for s in shots.values()], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(np.stack(store.support("square")), shots["square"])
    assert store.by_last_use() == ["square", "€uro sign", "circle"]
    assert [(i.last_used, i.enrolled, i.has_thumbnail) for i in store.classes()] == [(None, None, False)] * 3
    # The omniglot preset has been retrained since that file was written: an adapter refuses it by name and leaves
    # it as it was (deploy re-embeds kept support images; docs/deploy.md).
    state = tmp_path / "taught.store"
    shutil.copyfile(FIXTURE, state)
    with pytest.raises(StoreError, match="taught with another model"):
        FewShotAdapter.from_preset("omniglot", state=state, thumbnails=True)
    assert state.read_bytes() == FIXTURE.read_bytes()
    # Taught again, with a thumbnail, it is written as version 3.
    store.add("square", rng.normal(size=(1, 64)).astype(np.float32))
    store.set_thumbnail("square", _jpeg(0))
    store.save(state)
    assert read_header(state.read_bytes())[0]["format_version"] == 3
    again = PrototypeStore.load(state)
    assert again.count("square") == 4 and again.has_thumbnail("square") and not again.has_thumbnail("circle")
    square = {i.label: i for i in again.classes()}["square"]
    assert square == {i.label: i for i in store.classes()}["square"]
    assert square.enrolled is None and abs(square.last_used - time.time()) < 60
    assert again.by_last_use()[-1] == "square"


# -- crashes -------------------------------------------------------------------------------------------
def test_a_save_failing_midway_keeps_every_class_and_thumbnail_in_memory_and_on_disk(tmp_path):
    """The file size limit (RLIMIT_FSIZE, as a full disk) stops the saves of a new class with its thumbnail,
    of a rename to a long label and of a larger thumbnail: each is undone, and the old file loads."""
    state = tmp_path / "taught.store"
    code = f"""
import hashlib, os, resource, signal, numpy as np
from edgemeta.runtime import FewShotAdapter
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG as an OSError instead of a signal
noise = lambda seed, side: np.random.default_rng(seed).integers(0, 256, (side, side), dtype=np.uint8)
a = FewShotAdapter.from_preset("omniglot", state={str(state)!r}, thumbnails=True)
a.enroll("a", np.pad(np.zeros((20, 20), np.uint8), 40, constant_values=255))
before = (a.labels, a.thumbnail("a"), a.classes(), a.store.nbytes())
resource.setrlimit(resource.RLIMIT_FSIZE, (os.path.getsize({str(state)!r}) + 200, resource.RLIM_INFINITY))
for change in (lambda: a.enroll("b", noise(1, 105)), lambda: a.rename("a", "x" * 1000),
               lambda: a.set_thumbnail("a", noise(2, 300))):
    try:
        change()
        print("SAVED")
    except OSError as e:
        print("failed:", e.errno, (a.labels, a.thumbnail("a"), a.classes(), a.store.nbytes()) == before)
print("THUMB", hashlib.sha256(a.thumbnail("a")).hexdigest(), a.classes()[0].enrolled)
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("failed: 27 True") == 3, result.stdout  # EFBIG, and nothing half-there
    digest, enrolled = result.stdout.split("THUMB ")[1].split()
    with FewShotAdapter.from_preset("omniglot", state=state) as restored:
        assert restored.labels == ["a"] and hashlib.sha256(restored.thumbnail("a")).hexdigest() == digest
        assert restored.classes()[0].enrolled == float(enrolled)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


_SAVER = r"""
import sys
from edgemeta.runtime.store import PrototypeStore
old, new = PrototypeStore.load(sys.argv[1]), PrototypeStore.load(sys.argv[2])
print("ready", flush=True)
while True:  # nothing but saves, so a kill at a random moment lands inside one
    new.save(sys.argv[3])
    old.save(sys.argv[3])
"""


def test_sigkill_while_saving_thumbnails_leaves_the_old_or_the_new_store(tmp_path):
    """12 kills at random moments of a process saving 1 MB stores of 300 thumbnails each, back and forth:
    every reload is one of the two, thumbnails and times included (test_prototype_store.py kills 60+ times
    without thumbnails)."""
    old, new = _store(300, seed=1), _store(280, seed=2)
    old.save(tmp_path / "old.store")
    new.save(tmp_path / "new.store")
    target = tmp_path / "taught.store"
    old.save(target)
    assert target.stat().st_size > 500_000
    rng, outcomes = random.Random(0), {"old": 0, "new": 0}
    for _ in range(12):
        child = subprocess.Popen([sys.executable, "-c", _SAVER, str(tmp_path / "old.store"), str(tmp_path / "new.store"),
                                  str(target)], stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.1))
        child.send_signal(signal.SIGKILL)
        assert child.wait() == -signal.SIGKILL
        child.stdout.close()
        loaded = PrototypeStore.load(target, model_sha256=SHA)
        assert _same(loaded, old) or _same(loaded, new), "a reload gave neither the old nor the new store"
        outcomes["old" if _same(loaded, old) else "new"] += 1
    print(f"12 kills: {outcomes}")


# -- the plan ------------------------------------------------------------------------------------------
def test_the_plan_counts_a_thumbnail_at_its_largest_per_class():
    from edgemeta.runtime.memory import MB, plan_memory

    plain = plan_memory(PRESET, runtime_bytes=30 * MB, max_pixels=2**20)
    with_thumbnails = plan_memory(PRESET, runtime_bytes=30 * MB, max_pixels=2**20, thumbnails=True)
    assert with_thumbnails.per_class - plain.per_class == THUMBNAIL_CLASS_BYTES
    fits, fewer = plain.max_classes(96 * MB), with_thumbnails.max_classes(96 * MB)
    print(f"omniglot preset in 96 MB (30 MB runtime): {fits} classes, {fewer} with thumbnails")
    assert 0 < fewer < fits / 5

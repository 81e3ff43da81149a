"""A store file is checked field by field before anything is built from it: a checksum-valid file with
inconsistent contents is a StoreError naming the field (never a KeyError, IndexError or a late failure),
a version-1 zip bomb is refused before it inflates, labels are counted at their size, and save and load
stream the file (their transient memory measured in a fresh process)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from edgemeta.runtime import FewShotAdapter, PrototypeStore, StoreError
from edgemeta.runtime.lock import StoreLock
from edgemeta.runtime.store import MAGIC, MAX_LABEL_CHARS
from tests.harness import run_python

SHA = "ab" * 32
MiB = 2**20


def _parts(n: int = 3, d: int = 4, **header) -> tuple[dict, dict]:
    """A valid version-2 header and its arrays: n classes of d-dimensional float32 prototypes."""
    base = {"format": "edgemeta.store", "format_version": 2, "model_sha256": SHA, "embedding_size": d,
            "prototype_dtype": "float32", "keep_support": None, "labels": [f"c{i}" for i in range(n)], "clock": 7}
    arrays = {"means": np.ones((n, d), np.float32), "scales": np.zeros(n, np.float32), "counts": np.ones(n, np.int64),
              "last_used": np.arange(n, dtype=np.int64)}
    return {**base, **header}, arrays


def _file(header: dict, arrays: dict, save=np.savez, payload_bytes: int | None = None) -> bytes:
    """A version-2 store file of exactly this header and these arrays, with a valid checksum."""
    payload = io.BytesIO()
    save(payload, **arrays)
    header = {**header, "payload_bytes": len(payload.getvalue()) if payload_bytes is None else payload_bytes}
    text = json.dumps(header).encode()
    body = MAGIC + struct.pack("<I", len(text)) + text + payload.getvalue()
    return body + hashlib.sha256(body).digest()


class _Payload:
    """Unpickling it would leave a file behind: the proof that loading a store never unpickles."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _set(arrays: dict, name: str, index, value) -> dict:
    arrays[name][index] = value
    return arrays


# (case, change to (header, arrays), fragment of the StoreError)
CASES = [
    ("int labels", lambda h, a: ({**h, "labels": [1, 2, 3]}, a), "'labels' item 0: A label must be a non-empty string"),
    ("duplicate labels", lambda h, a: ({**h, "labels": ["a", "b", "a"]}, a), "'labels' must be unique. Received: 'a'"),
    ("an empty label", lambda h, a: ({**h, "labels": ["a", "", "c"]}, a), "'labels' item 1"),
    ("a 1 MiB label", lambda h, a: ({**h, "labels": ["x" * MiB, "b", "c"]}, a), f"at most {MAX_LABEL_CHARS} characters"),
    ("labels not a list", lambda h, a: ({**h, "labels": "abc"}, a), "'labels' must be a list"),
    ("NaN in a mean", lambda h, a: (h, _set(a, "means", (1, 2), np.nan)), "'means' must be finite.*label 'c1'"),
    ("infinite scale", lambda h, a: (h, _set(a, "scales", 2, np.inf)), "'scales' must be finite"),
    ("negative count", lambda h, a: (h, _set(a, "counts", 1, -3)), "'counts' must be integers >= 1.*-3 for label 'c1'"),
    ("zero count", lambda h, a: (h, _set(a, "counts", 0, 0)), "'counts' must be integers >= 1"),
    ("negative last use", lambda h, a: (h, _set(a, "last_used", 0, -1)), "'last_used' must be integers >= 0"),
    ("too few labels for the rows", lambda h, a: ({**h, "labels": ["c0", "c1"]}, a), r"'means' must be float32 of shape \(2, 4"),
    ("too many labels", lambda h, a: ({**h, "labels": ["c0", "c1", "c2", "c3"]}, a), r"'means' must be float32 of shape \(4, 4"),
    ("float64 means", lambda h, a: (h, {**a, "means": a["means"].astype(np.float64)}), "'means' must be float32.*: float64"),
    ("big-endian means", lambda h, a: (h, {**a, "means": a["means"].astype(">f4")}), "'means' must be float32"),
    ("float counts", lambda h, a: (h, {**a, "counts": a["counts"].astype(np.float64)}), "'counts' must be int64"),
    ("means too wide", lambda h, a: (h, {**a, "means": np.ones((3, 5), np.float32)}), r"'means' must be float32 of shape \(3, 4"),
    ("scales of two axes", lambda h, a: (h, {**a, "scales": np.zeros((3, 1), np.float32)}), "'scales' must be float32"),
    ("missing array", lambda h, a: (h, {k: v for k, v in a.items() if k != "last_used"}), "arrays must be"),
    ("extra array", lambda h, a: (h, {**a, "evil": np.zeros(1)}), "arrays must be"),
    ("missing header key", lambda h, a: ({k: v for k, v in h.items() if k != "clock"}, a), r"header lacks \['clock'\]"),
    ("embedding_size a string", lambda h, a: ({**h, "embedding_size": "4"}, a), "'embedding_size' must be an integer.*str '4'"),
    ("embedding_size a bool", lambda h, a: ({**h, "embedding_size": True}, a), "'embedding_size'"),
    ("embedding_size huge", lambda h, a: ({**h, "embedding_size": 10**9}, a), "'embedding_size'"),
    ("model_sha256 not hex", lambda h, a: ({**h, "model_sha256": "xyz"}, a), "'model_sha256'"),
    ("model_sha256 a number", lambda h, a: ({**h, "model_sha256": 12}, a), "'model_sha256'.*int 12"),
    ("prototype_dtype unknown", lambda h, a: ({**h, "prototype_dtype": "float16"}, a), "'prototype_dtype'"),
    ("keep_support unknown", lambda h, a: ({**h, "keep_support": "all"}, a), "'keep_support'"),
    ("keep_support a list", lambda h, a: ({**h, "keep_support": []}, a), "'keep_support'"),
    ("clock negative", lambda h, a: ({**h, "clock": -1}, a), "'clock' must be an integer >= 0"),
    ("clock a float", lambda h, a: ({**h, "clock": 1.5}, a), "'clock'"),
    ("another format", lambda h, a: ({**h, "format": "zip"}, a), "'format'"),
    ("int8 rows without a scale", lambda h, a: ({**h, "prototype_dtype": "int8"}, {**a, "means": np.ones((3, 4), np.int8)}),
     "'scales' must be finite and > 0"),
]


@pytest.mark.parametrize("case, change, fragment", CASES, ids=[c[0] for c in CASES])
def test_an_inconsistent_store_is_refused_naming_the_field_and_changes_nothing(tmp_path, case, change, fragment):
    path = tmp_path / "taught.store"
    path.write_bytes(_file(*change(*_parts())))
    before = path.read_bytes()
    with pytest.raises(StoreError, match=fragment):
        PrototypeStore.load(path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["taught.store"]


def test_the_payload_is_checked_as_stated_and_uncompressed(tmp_path):
    path = tmp_path / "s.store"
    path.write_bytes(_file(*_parts(), payload_bytes=12))
    with pytest.raises(StoreError, match="'payload_bytes' must be the arrays' length"):
        PrototypeStore.load(path)
    path.write_bytes(_file(*_parts(), save=np.savez_compressed))
    with pytest.raises(StoreError, match="array '[a-z_]+' is compressed"):
        PrototypeStore.load(path)
    header, arrays = _parts()
    text = json.dumps({**header, "payload_bytes": 0}).encode()
    body = MAGIC + struct.pack("<I", len(text)) + text + b"not a zip at all, but checksummed"
    path.write_bytes(body + hashlib.sha256(body).digest())
    with pytest.raises(StoreError, match="'payload_bytes'"):
        PrototypeStore.load(path)


def test_a_pickled_array_is_refused_and_never_unpickled(tmp_path):
    marker = tmp_path / "unpickled"
    header, arrays = _parts()
    evil = np.empty(3, object)
    evil[:] = [_Payload(str(marker))] * 3
    (tmp_path / "s.store").write_bytes(_file(header, {**arrays, "counts": evil}))
    with pytest.raises(StoreError, match="'counts' must be int64.*Received: object"):
        PrototypeStore.load(tmp_path / "s.store")
    assert not marker.exists()
    pickle.dumps(evil)  # (the payload does pickle: the refusal is the loader's)


def test_kept_shots_must_agree_with_their_rows_and_shapes(tmp_path):
    header, arrays = _parts(keep_support="embeddings")
    rows, data = np.array([1, 2, 0]), np.ones(12, np.float32)
    good = {"support_rows": rows, "support_shapes": np.array([[4, 0, 0]] * 3), "support_data": data}
    path = tmp_path / "s.store"
    path.write_bytes(_file(header, {**arrays, **good}))
    assert [len(PrototypeStore.load(path).support(label)) for label in ("c0", "c1", "c2")] == [1, 2, 0]
    for change, fragment in [
        ({"support_shapes": np.array([[5, 0, 0]] * 3)}, r"'support_shapes' row 0 must be \[4, 0, 0\]"),
        ({"support_data": np.ones(11, np.float32)}, r"'support_data' must be float32 of shape \(12,\)"),
        ({"support_rows": np.array([1, 2, -1])}, "'support_rows' must be >= 0"),
        ({"support_rows": np.array([1, 2, 1])}, r"'support_shapes' must be int64 of shape \(4, 3\)"),
        ({"support_data": np.full(12, np.nan, np.float32)}, "'support_data' .* must be finite"),
        ({"support_data": np.ones(12, np.uint8)}, "'support_data' must be float32"),
    ]:
        path.write_bytes(_file(header, {**arrays, **good, **change}))
        with pytest.raises(StoreError, match=fragment):
            PrototypeStore.load(path)
    header, arrays = _parts(keep_support="images")
    images = {"support_rows": np.array([1, 1, 0]), "support_shapes": np.array([[2, 3, 0], [0, 3, 0]]),
              "support_data": np.zeros(12, np.uint8)}
    path.write_bytes(_file(header, {**arrays, **images}))
    with pytest.raises(StoreError, match=r"'support_shapes' row 1 must be \[H, W, 0\] or \[H, W, C\]"):
        PrototypeStore.load(path)


def test_an_adapter_refuses_an_inconsistent_state_and_leaves_it_and_its_lock_alone(tmp_path):
    path = tmp_path / "taught.store"
    path.write_bytes(_file(*CASES[1][1](*_parts())))  # duplicate labels
    before = path.read_bytes()
    with pytest.raises(StoreError, match="unique"):
        FewShotAdapter.from_preset("omniglot", state=path)
    assert path.read_bytes() == before
    StoreLock.acquire(path).release()  # the refused adapter gave its lock back


def test_random_damage_under_a_valid_checksum_is_a_store_error_or_a_consistent_store(tmp_path):
    """300 stores with random bytes changed and the checksum recomputed: each loads consistently or is
    refused with StoreError, never another exception."""
    store = PrototypeStore(6, SHA, keep_support="images")
    for c in range(4):
        store.add(f"class-{c}", np.arange(12.0).reshape(2, 6) + c, [np.full((3, 2 + c), c, np.uint8)])
    good = store.to_bytes()[:-32]
    rng = np.random.default_rng(0)
    refused, loaded = 0, 0
    for _ in range(300):
        body = bytearray(good)
        for i in rng.integers(12, len(body), rng.integers(1, 4)):
            body[i] = int(rng.integers(256))
        path = tmp_path / "fuzzed.store"
        path.write_bytes(bytes(body) + hashlib.sha256(bytes(body)).digest())
        try:
            fuzzed = PrototypeStore.load(path)
        except StoreError:
            refused += 1
            continue
        loaded += 1
        labels, protos = fuzzed.prototypes()
        assert protos.shape == (len(labels), fuzzed.embedding_size) and np.isfinite(protos).all()
        assert all(fuzzed.count(label) >= 1 and isinstance(fuzzed.support(label), list) for label in labels)
    print(f"300 damaged stores with valid checksums: {refused} refused, {loaded} loaded consistently")
    assert refused > 150


def _v1_file(path, header: dict, sums: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.savez(f, header=np.array(json.dumps(header)), sums=sums)


def test_inconsistent_version_one_stores_are_refused(tmp_path):
    path = tmp_path / "v1.npz"
    base = {"format_version": 1, "model_sha256": SHA, "labels": ["a", "b"], "counts": [2, 4]}
    for header, sums, fragment in [
        ({**base, "counts": [2]}, np.ones((2, 4)), "'counts' must be 2 integers >= 1"),
        ({**base, "counts": [2, 0]}, np.ones((2, 4)), "'counts'"),
        ({**base, "labels": ["a", "a"]}, np.ones((2, 4)), "unique"),
        (base, np.ones((3, 4)), r"'sums' must be float64 of shape \(2, D\)"),
        (base, np.full((2, 4), np.nan), "'sums' must be finite"),
        ({k: v for k, v in base.items() if k != "model_sha256"}, np.ones((2, 4)), "lacks 'model_sha256'"),
        ({**base, "format_version": 3}, np.ones((2, 4)), "unsupported store version"),
    ]:
        _v1_file(path, header, sums)
        with pytest.raises(StoreError, match=fragment):
            PrototypeStore.load(path)


_BOMB_LOADER = r"""
import sys
from edgemeta.runtime.store import PrototypeStore, StoreError

def status(key):
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(key))

before = status("VmRSS:")
open("/proc/self/clear_refs", "w").write("5")  # VmHWM := VmRSS: the peak of what follows
try:
    PrototypeStore.load(sys.argv[1])
    print("LOADED")
except StoreError as e:
    print("REFUSED", e)
print("RISE", status("VmHWM:") - before)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux's /proc/self/clear_refs")
def test_a_version_one_zip_bomb_is_refused_before_it_inflates(tmp_path):
    """A 366 KB .npz whose sums inflate to 367 MiB: before, loading it took 368 MiB of RSS (and even
    loaded it, the labels' count not checked against the rows)."""
    path, rows, dim = tmp_path / "bomb.npz", 47000, 1024
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        with zf.open("header.npy", "w") as f:
            np.lib.format.write_array(f, np.array(json.dumps({"format_version": 1, "model_sha256": SHA, "labels": ["a"],
                                                              "counts": [1]})))
        with zf.open("sums.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False, "shape": (rows, dim)})
            zeros = bytes(8 * dim * 1000)
            for _ in range(rows // 1000):
                f.write(zeros)
    result = run_python(_BOMB_LOADER.replace("sys.argv[1]", repr(str(path))))
    assert result.returncode == 0, result.stderr[-2000:]
    rise = int(result.stdout.split("RISE")[1])
    print(f"{path.stat().st_size / 1024:.0f} KB bomb declaring {rows * dim * 8 / MiB:.0f} MiB: peak RSS rose "
          f"{rise / MiB:.1f} MiB while refusing it")
    assert "REFUSED" in result.stdout and "Refused before inflating" in result.stdout
    assert rise < 20 * MiB


def test_labels_are_counted_at_their_size_and_capped():
    store = PrototypeStore(8, SHA)
    with pytest.raises(ValueError, match=f"at most {MAX_LABEL_CHARS} characters.*Received: {MiB} characters"):
        store.add("x" * MiB, np.ones((1, 8)))
    with pytest.raises(ValueError, match="non-empty string"):
        store.add("", np.ones((1, 8)))
    assert len(store) == 0
    empty = store.nbytes()
    labels = [f"{i:04d}" + "€" * (MAX_LABEL_CHARS - 4) for i in range(150)]  # 2 bytes a character in memory
    for label in labels:
        store.add(label, np.ones((1, 8)))
    held = sum(sys.getsizeof(label) for label in labels)
    assert held > 150 * 2 * (MAX_LABEL_CHARS - 4)
    assert store.nbytes() - empty >= held + 150 * store.row_bytes
    before = store.nbytes()
    store.remove(labels[0])
    assert before - store.nbytes() == store.label_bytes(labels[0]) + 64  # its label and row objects come back
    assert store.label_bytes("x" * 1000) - store.label_bytes("x") == 999


_PEAK = r"""
import gc, os, sys
import numpy as np
from edgemeta.runtime.store import PrototypeStore

def status(key):
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(key))

def reset_peak():
    open("/proc/self/clear_refs", "w").write("5")  # VmHWM := VmRSS

path, kind, step = sys.argv[1:4]
if step == "make" and kind == "images":  # 400 classes of 5 kept 105x105 images: 21 MB
    rng = np.random.default_rng(0)
    store = PrototypeStore(64, "ab" * 32, keep_support="images")
    for c in range(400):
        store.add(f"class-{c}", rng.normal(size=(5, 64)), [rng.integers(0, 255, (105, 105), np.uint8) for _ in range(5)])
    store.save(path)
elif step == "make":  # 5000 classes of 1024 float32: 20 MB
    store = PrototypeStore(1024, "ab" * 32)
    for c in range(5000):
        store.add(f"class-{c}", np.full((1, 1024), c / 5000.0))
    store.save(path)
elif step == "save":  # a fresh process: what a board's adapter holds after its start, then one save
    store = PrototypeStore.load(path)
    gc.collect()
    steady = status("VmRSS:")
    reset_peak()
    store.save(path)
    print(os.path.getsize(path), store.nbytes(), status("VmHWM:") - steady)
else:  # a fresh process: the load's peak above what it leaves (the loaded store)
    gc.collect()
    reset_peak()
    store = PrototypeStore.load(path)
    gc.collect()
    print(status("VmHWM:") - status("VmRSS:"), getattr(store, "persist_peak_bytes", lambda: 0)())
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux's /proc/self/clear_refs")
@pytest.mark.parametrize("kind", ["prototypes", "images"])
def test_save_and_load_of_a_20_mb_store_stream_the_file(tmp_path, kind):
    """Before, save built the file in memory (payload, body, concatenation) and load read it whole: this
    test's script against the previous store.py (AMD EPYC) peaked 75.1 MiB above the steady state on save
    and 58.9 MiB on load for the 19.7 MiB store of prototypes, 100.8 and 63.5 MiB for the 21.2 MiB store
    of kept images."""
    def step(name: str) -> list[int]:
        result = subprocess.run([sys.executable, "-c", _PEAK, str(tmp_path / "s"), kind, name], capture_output=True,
                                text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        return [int(x) for x in result.stdout.split()]

    step("make")
    size, nbytes, save_peak = step("save")
    load_peak, bound = step("load")
    print(f"{kind}: {size / MiB:.1f} MiB file, nbytes {nbytes / MiB:.1f} MiB: peak RSS above the steady state "
          f"{save_peak // 1024} KiB on save, {load_peak // 1024} KiB on load; persist_peak_bytes {bound // 1024} KiB")
    assert size > 19 * MiB
    assert save_peak <= bound and load_peak <= bound


@pytest.mark.parametrize("kind", ["long non-ASCII labels", "kept embeddings", "kept images"])
def test_persist_peak_bytes_bounds_what_save_and_load_allocate(tmp_path, kind):
    """What Python allocates (tracemalloc) during a save and a load beyond what is there after it: within
    `persist_peak_bytes` (the load's largest part is the header: its bytes and their text)."""
    import tracemalloc

    rng = np.random.default_rng(0)
    store = PrototypeStore(256, SHA, keep_support={"kept embeddings": "embeddings", "kept images": "images"}.get(kind))
    for c in range(150 if kind == "long non-ASCII labels" else 600):
        label = f"{c}-" + "€" * 1000 if kind == "long non-ASCII labels" else f"class-{c}"
        images = [rng.integers(0, 255, (28, 28), np.uint8) for _ in range(5)] if kind == "kept images" else None
        store.add(label, rng.normal(size=(5, 256)), images)
    path = tmp_path / "s.store"
    store.save(path)
    PrototypeStore.load(path)  # imports done
    tracemalloc.start()
    try:
        store.save(path)
        current, peak = tracemalloc.get_traced_memory()
        save_extra = peak - current
        tracemalloc.reset_peak()
        start = tracemalloc.get_traced_memory()[0]
        loaded = PrototypeStore.load(path)
        current, peak = tracemalloc.get_traced_memory()
        load_extra = peak - current
    finally:
        tracemalloc.stop()
    print(f"{kind}: save {save_extra // 1024} KiB, load {load_extra // 1024} KiB beyond the result "
          f"(the loaded store: {(current - start) // 1024} KiB, nbytes {loaded.nbytes() // 1024} KiB); "
          f"persist_peak_bytes {store.persist_peak_bytes() // 1024} KiB")
    assert max(save_extra, load_extra) <= store.persist_peak_bytes()
    assert current - start <= loaded.nbytes() * 1.05  # and nbytes counts what a load holds

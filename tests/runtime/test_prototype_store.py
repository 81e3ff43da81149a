"""The prototype store keeps what the board was taught: atomic and checksummed saves that survive
SIGKILL at any moment, refusal of corrupt, foreign or future files, and the old format still read."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from edgemeta.runtime import FewShotAdapter, PrototypeStore, StoreError
from tests.harness import blank_with_square, run_python

SHA = "ab" * 32


def _store(classes: int, seed: int, dim: int = 64, **kwargs) -> PrototypeStore:
    rng = np.random.default_rng(seed)
    store = PrototypeStore(dim, SHA, **kwargs)
    for c in range(classes):
        store.add(f"class-{seed}-{c}", rng.normal(size=(2, dim)))
    return store


def _same(a: PrototypeStore, b: PrototypeStore) -> bool:
    (la, pa), (lb, pb) = a.prototypes(), b.prototypes()
    return la == lb and np.array_equal(pa, pb) and [a.count(x) for x in la] == [b.count(x) for x in lb]


_SAVER = r"""
import sys
import numpy as np
from edgemeta.runtime.store import PrototypeStore
old, new = PrototypeStore.load(sys.argv[1]), PrototypeStore.load(sys.argv[2])
print("ready", flush=True)
while True:  # nothing but saves, so a kill at a random moment lands inside one
    new.save(sys.argv[3])
    old.save(sys.argv[3])
"""


@pytest.mark.slow
def test_sigkill_at_random_moments_of_save_leaves_the_old_or_the_new_store(tmp_path):
    old, new = _store(1500, seed=1), _store(1700, seed=2)  # ~1 MB files: a save takes milliseconds
    old.save(tmp_path / "old.store")
    new.save(tmp_path / "new.store")
    target = tmp_path / "taught.store"
    old.save(target)
    rng = random.Random(0)
    outcomes, mid_save, kills = {"old": 0, "new": 0}, 0, 0
    # At least 60 kills, and on until 5 of them landed in the short write window (capped).
    while kills < 60 or (mid_save < 5 and kills < 400):
        kills += 1
        child = subprocess.Popen([sys.executable, "-c", _SAVER, str(tmp_path / "old.store"), str(tmp_path / "new.store"),
                                  str(target)], stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.08))
        child.send_signal(signal.SIGKILL)
        assert child.wait() == -signal.SIGKILL
        child.stdout.close()
        mid_save += any(p.name.startswith(".taught.store.") for p in tmp_path.iterdir())  # killed while writing
        loaded = PrototypeStore.load(target, model_sha256=SHA)  # a reader: it removes nothing (the next writer does)
        assert _same(loaded, old) or _same(loaded, new), "a reload gave neither the old nor the new store"
        outcomes["old" if _same(loaded, old) else "new"] += 1
    assert outcomes["old"] and outcomes["new"], outcomes
    # Every kill lands inside save() (the child does nothing else); `mid_save` landed in its riskiest
    # part, with the temporary file half-written or not yet renamed.
    assert mid_save >= 5, f"only {mid_save} of {kills} kills landed while the file was being written"
    print(f"{kills} kills inside save(), {mid_save} while writing the file; reloads: {outcomes}")
    # Each child's first save (under the writer lock) removed the temporary its killed predecessor left;
    # the last child's is removed by the next writer.
    assert len([p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]) <= 1
    old.save(target)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("damage, fragment", [
    (lambda b: b[:-100], "do not match its checksum"),
    (lambda b: b[:40] + bytes([b[40] ^ 1]) + b[41:], "corrupt"),  # inside the header's labels
    (lambda b: b[:300] + bytes([b[300] ^ 1]) + b[301:], "corrupt"),
    (lambda b: b[: len(b) - 50] + bytes([b[-50] ^ 0x10]) + b[len(b) - 49 :], "do not match its checksum"),
    (lambda b: b"XXXXXXXX" + b[8:], "is not an edgemeta prototype store"),
    (lambda b: b[:5], "is not an edgemeta prototype store"),
    (lambda b: b.replace(b'"format_version": 3', b'"format_version": 9'), "store format version 9"),
])
def test_damaged_or_future_store_files_are_refused(tmp_path, damage, fragment):
    path = tmp_path / "s.store"
    path.write_bytes(damage(_store(20, seed=3).to_bytes()))
    with pytest.raises(StoreError, match=fragment.replace("(", r"\(")):
        PrototypeStore.load(path)


def test_adapter_refuses_a_corrupt_store_and_keeps_its_classes(digits_run, tmp_path):
    state = tmp_path / "taught.store"
    adapter = FewShotAdapter.from_bundle(digits_run["bundles"]["int8"], state=state)
    adapter.enroll("a", blank_with_square())
    (tmp_path / "bad.store").write_bytes(state.read_bytes()[:-10])
    with pytest.raises(StoreError, match="checksum"):
        adapter.load(tmp_path / "bad.store")
    assert adapter.labels == ["a"]
    with pytest.raises(StoreError, match="was taught with another model"):
        FewShotAdapter.from_bundle(digits_run["bundles"]["float32"], state=state, read_only=True)
    adapter.close()
    with pytest.raises(StoreError, match="was taught with another model"):
        FewShotAdapter.from_bundle(digits_run["bundles"]["float32"], state=state)


def test_version_one_state_files_still_load(digits_run, tmp_path):
    import io
    import json

    embedder = FewShotAdapter.from_bundle(digits_run["bundles"]["int8"]).embedder
    sha, dim = embedder.manifest.model_sha256, embedder.embedding_size
    sums = np.arange(2 * dim, dtype=np.float64).reshape(2, dim)
    buffer = io.BytesIO()  # exactly what edgemeta 0.1's adapter wrote
    header = {"format_version": 1, "model_sha256": sha, "labels": ["a", "b"], "counts": [2, 4]}
    np.savez(buffer, header=np.array(json.dumps(header)), sums=sums)
    (tmp_path / "v1.npz").write_bytes(buffer.getvalue())
    adapter = FewShotAdapter.from_bundle(digits_run["bundles"]["int8"], state=tmp_path / "v1.npz")
    labels, protos = adapter.prototypes()
    assert labels == ["a", "b"] and adapter.shots("b") == 4
    np.testing.assert_allclose(protos, sums / np.array([[2], [4]]), rtol=1e-6)


def test_int8_prototypes_keep_the_running_mean_within_quantization_error():
    rng = np.random.default_rng(0)
    shots = rng.normal(size=(5, 64))
    exact, small = PrototypeStore(64, SHA), PrototypeStore(64, SHA, prototype_dtype="int8")
    for s in shots:
        exact.add("x", s[None]), small.add("x", s[None])
    err = np.abs(small.prototypes()[1] - exact.prototypes()[1]).max()
    assert err < 5 * np.abs(exact.prototypes()[1]).max() / 127, err
    assert exact.bytes_per_class() - small.bytes_per_class() == 3 * 64  # 1 byte per component, not 4
    np.testing.assert_allclose(exact.prototypes()[1][0], shots.mean(0), rtol=1e-5, atol=1e-6)


def test_shrink_to_frees_spare_rows_and_never_a_class():
    store = _store(16, seed=3)
    rows, nbytes = store.capacity, store.nbytes()
    store.add("seventeenth", np.ones((1, 64)))
    assert store.capacity > rows and store.nbytes() > nbytes
    store.remove("seventeenth")
    store.shrink_to(rows)
    assert (store.capacity, store.nbytes()) == (rows, nbytes)
    store.shrink_to(0)  # asks for less than the classes need: they all stay
    assert store.capacity == len(store) == 16 and _same(store, _store(16, seed=3))


def test_kept_support_round_trips(tmp_path):
    store = PrototypeStore(8, SHA, keep_support="images")
    store.add("a", np.ones((2, 8)), [np.zeros((5, 6), np.uint8), np.full((7, 4, 3), 9, np.uint8)])
    store.save(tmp_path / "s")
    loaded = PrototypeStore.load(tmp_path / "s")
    assert [s.shape for s in loaded.support("a")] == [(5, 6), (7, 4, 3)] and loaded.support("a")[1][0, 0, 0] == 9


def test_a_failed_save_keeps_the_previous_state_in_memory_and_on_disk(digits_run, tmp_path):
    """A real write failure: the file size limit (RLIMIT_FSIZE, as on a full disk) stops the save."""
    state = tmp_path / "taught.store"
    code = f"""
import resource, signal, numpy as np
from edgemeta.runtime import FewShotAdapter
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG as an OSError instead of a signal
a = FewShotAdapter.from_bundle({str(digits_run['bundles']['int8'])!r}, state={str(state)!r}, keep_support="images")
a.enroll("a", np.zeros((28, 28), np.uint8))
resource.setrlimit(resource.RLIMIT_FSIZE, (4000, resource.RLIM_INFINITY))
try:
    a.enroll("b", np.zeros((3, 200, 200), np.uint8))
except OSError as e:
    print("failed:", e.errno)
print(a.labels, a.shots("a"))
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "failed: 27" in result.stdout and "['a'] 1" in result.stdout  # EFBIG, and 'b' is not half-there
    restored = FewShotAdapter.from_bundle(digits_run["bundles"]["int8"], state=state)
    assert restored.labels == ["a"]
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]

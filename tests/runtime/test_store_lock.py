"""One writer per store file, with real processes: a second writer is refused with the holder's PID, readers
never are and never delete a writer's temporary file, and the file's edges (symlink, mode, a failed
directory fsync) keep the disk and memory in agreement."""

from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
import sys
import threading

import numpy as np
import pytest

from edgemeta.format.atomic import atomic_writer
from edgemeta.runtime import FewShotAdapter, PrototypeStore
from edgemeta.runtime.lock import StoreLock, lock_path_of
from edgemeta.runtime.store import StoreLockedError, StoreReadOnlyError
from tests.harness import cli_in_process

SHA = "ab" * 32

# Enrolls 40 classes into the state file argv[2] as "argv[1]-<i>", printing each acknowledged label, then
# holds the store (and its lock) until its stdin closes. Refused at open: prints REFUSED and exits 3.
_ENROLLER = r"""
import sys
import numpy as np
from edgemeta.runtime import FewShotAdapter
from edgemeta.runtime.store import StoreLockedError
tag, state = sys.argv[1], sys.argv[2]
try:
    adapter = FewShotAdapter.from_preset("omniglot", state=state)
except StoreLockedError as e:
    print("REFUSED", e, flush=True)
    sys.exit(3)
print("OPEN", flush=True)
rng = np.random.default_rng(len(tag))
for i in range(40):
    adapter.enroll(f"{tag}-{i}", rng.integers(0, 256, (105, 105), dtype=np.uint8))
    print("ACK", f"{tag}-{i}", flush=True)
print("DONE", flush=True)
sys.stdin.read()
"""


def _enroller(tag: str, state) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _ENROLLER, tag, str(state)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (105, 105), dtype=np.uint8)


def test_two_processes_enrolling_40_classes_each_the_second_is_refused_and_none_is_lost(tmp_path):
    """Before the lock both enrolled, 80 classes were acknowledged and the last saver's 40 survived."""
    state = tmp_path / "taught.store"
    first = _enroller("A", state)
    assert first.stdout.readline().strip() == "OPEN"
    second = _enroller("B", state)  # while the first enrolls
    out, _ = second.communicate(timeout=120)
    assert second.returncode == 3 and out.startswith("REFUSED"), out
    assert f"PID {first.pid}" in out and "read_only=True" in out and len(out.strip().splitlines()) == 1
    # A reader beside the live writer: allowed, and it sees whole stores.
    reader = FewShotAdapter.from_preset("omniglot", state=state, read_only=True)
    assert all(label.startswith("A-") for label in reader.labels)
    with pytest.raises(StoreReadOnlyError, match="read-only"):
        reader.enroll("C-0", _image(0))
    with pytest.raises(StoreReadOnlyError, match="read-only"):
        reader.save(state)
    # `edgemeta adapt` that would write is refused in one line; one that only reads works.
    (tmp_path / "support" / "x").mkdir(parents=True)  # (refused before the folder is read)
    refused = cli_in_process("adapt", "--preset", "omniglot", "--state", state, "--support", tmp_path / "support")
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert refused.stderr.startswith("edgemeta adapt: error: ") and f"PID {first.pid}" in refused.stderr
    listed = cli_in_process("adapt", "--preset", "omniglot", "--state", state)
    assert listed.returncode == 0 and "Enrolled labels:" in listed.stdout, listed.stderr

    out, _ = first.communicate("", timeout=120)
    assert first.returncode == 0 and out.strip().endswith("DONE"), out
    acknowledged = {line.split()[1] for line in out.splitlines() if line.startswith("ACK")}
    on_disk = set(PrototypeStore.load(state).labels)
    print(f"first writer: {len(acknowledged)} acknowledged, {len(acknowledged & on_disk)} on disk; second writer refused")
    assert len(acknowledged) == 40 and acknowledged == on_disk
    # The first writer has exited: its lock went with it, and a new writer opens the store.
    with FewShotAdapter.from_preset("omniglot", state=state) as adapter:
        assert adapter.enroll("B-0", _image(1)) == 1
    assert len(PrototypeStore.load(state)) == 41


def test_a_second_writer_in_the_same_process_is_refused_until_the_first_closes(tmp_path):
    state = tmp_path / "taught.store"
    first = FewShotAdapter.from_preset("omniglot", state=state)
    first.enroll("a", _image(0))
    with pytest.raises(StoreLockedError, match=f"this process.*PID {os.getpid()}"):
        FewShotAdapter.from_preset("omniglot", state=state)
    with pytest.raises(StoreLockedError):
        PrototypeStore.load(state).save(state)  # a lone save is a writer too
    first.close()
    with pytest.raises(StoreReadOnlyError, match="closed"):
        first.enroll("b", _image(1))
    assert first.labels == ["a"] and first.classify(_image(0))[0].nearest == "a"  # still classifies
    with FewShotAdapter.from_preset("omniglot", state=state) as second:
        second.enroll("b", _image(1))
    StoreLock.acquire(state).release()  # the with block gave the lock back
    dropped = FewShotAdapter.from_preset("omniglot", state=state)
    del dropped  # an adapter dropped unclosed frees its lock too
    assert FewShotAdapter.from_preset("omniglot", state=state).labels == ["a", "b"]


def test_a_thread_loading_beside_a_thread_enrolling_breaks_none_of_200_enrolls(tmp_path):
    """Before, the loading thread deleted the writer's temporary files: 168 of 200 enrolls failed with
    FileNotFoundError."""
    state = tmp_path / "taught.store"
    writer = FewShotAdapter.from_preset("omniglot", state=state)
    writer.enroll("c-0", _image(0))
    done, loads, errors = threading.Event(), [], []

    def read() -> None:
        while not done.is_set():
            try:
                loads.append(len(PrototypeStore.load(state)))
                loads.append(len(FewShotAdapter(writer.embedder, state, read_only=True).labels))
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        counts = [writer.enroll(f"c-{i % 50}", _image(i)) for i in range(1, 201)]
    finally:
        done.set()
        reader.join()
    assert not errors, errors[:3]
    assert len(counts) == 200 and len(loads) > 20 and loads == sorted(loads)  # readers saw whole, growing stores
    assert sorted(PrototypeStore.load(state).labels) == sorted(writer.labels)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


_KILLED_WRITER = r"""
import sys, time
from edgemeta.format.atomic import atomic_writer
from edgemeta.runtime.lock import StoreLock
lock = StoreLock.acquire(sys.argv[1])
with atomic_writer(lock.path) as f:
    f.write(b"half a store")
    f.flush()
    print("WRITING", flush=True)
    time.sleep(60)
"""


def test_a_killed_writers_temporary_is_removed_by_the_next_writer_not_by_a_reader(tmp_path):
    state = tmp_path / "taught.store"
    store = PrototypeStore(8, SHA)
    store.add("a", np.ones((1, 8)))
    store.save(state)
    child = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(state)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "WRITING"

    def temporaries() -> list[str]:
        return [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]

    assert len(temporaries()) == 1
    # While the writer lives, a reader neither deletes its temporary nor gets the lock.
    assert PrototypeStore.load(state).labels == ["a"] and len(temporaries()) == 1
    with pytest.raises(StoreLockedError, match=f"PID {child.pid}"):
        StoreLock.acquire(state)
    assert len(temporaries()) == 1
    child.send_signal(signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL
    child.stdout.close()
    assert PrototypeStore.load(state).labels == ["a"] and len(temporaries()) == 1  # a reader still removes nothing
    with StoreLock.acquire(state):  # the kernel dropped the dead writer's lock; the next writer cleans up
        assert temporaries() == []


def test_a_symlinked_state_stays_a_symlink_and_is_locked_as_its_target(tmp_path):
    (tmp_path / "real").mkdir()
    target, link = tmp_path / "real" / "taught.store", tmp_path / "taught.store"
    link.symlink_to(target)  # dangling until the first save
    with FewShotAdapter.from_preset("omniglot", state=link) as adapter:
        adapter.enroll("a", _image(0))
        assert link.is_symlink() and PrototypeStore.load(target).labels == ["a"]
        with pytest.raises(StoreLockedError):  # the target's lock, whichever name opens it
            FewShotAdapter.from_preset("omniglot", state=target)
        adapter.enroll("b", _image(1))
        adapter.save(link)
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert sorted(PrototypeStore.load(link).labels) == ["a", "b"]
    assert lock_path_of(link) == tmp_path / "real" / "taught.store.lock" and not (tmp_path / "taught.store.lock").exists()


def test_the_state_keeps_its_mode_and_a_new_one_follows_the_umask(tmp_path):
    state = tmp_path / "taught.store"
    umask = os.umask(0o022)
    try:
        with FewShotAdapter.from_preset("omniglot", state=state) as adapter:
            adapter.enroll("a", _image(0))
            assert stat.S_IMODE(state.stat().st_mode) == 0o644  # 0o666 & ~umask, not the temporary's 0600
            for mode in (0o640, 0o600):
                state.chmod(mode)
                adapter.enroll(f"m{mode:o}", _image(mode))
                assert stat.S_IMODE(state.stat().st_mode) == mode
    finally:
        os.umask(umask)


def test_a_failed_directory_fsync_keeps_the_class_in_memory_and_on_disk_with_a_warning(tmp_path, monkeypatch):
    """The rename has happened when the directory's fsync fails: undoing the class in memory (as before)
    left it on disk, back after a restart."""
    state = tmp_path / "taught.store"
    adapter = FewShotAdapter.from_preset("omniglot", state=state)
    adapter.enroll("a", _image(0))
    fsync = os.fsync

    def failing_for_directories(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EIO, "simulated I/O error on the directory")
        fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_for_directories)
    with pytest.warns(RuntimeWarning, match="fsyncing its directory failed"):
        assert adapter.enroll("b", _image(1)) == 1
    with pytest.warns(RuntimeWarning, match="fsyncing its directory failed"):
        adapter.forget("a")
    assert adapter.labels == ["b"] and PrototypeStore.load(state).labels == ["b"]  # memory and disk agree
    monkeypatch.undo()
    # A failure before the rename still raises and changes nothing, in memory or on disk.
    with pytest.raises(OSError, match="simulated"):
        with atomic_writer(state) as f:
            f.write(b"never renamed")
            raise OSError("simulated failure while writing")
    assert PrototypeStore.load(state).labels == ["b"] and not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]

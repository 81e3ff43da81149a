"""One writer per store file: an advisory lock on `<store>.lock` beside it, held for as long as the writer lives.

Two writers of one store lose classes: each saves its whole store, so the last save drops what the
other acknowledged. A writer (an adapter given `state=` for writing, or a single `PrototypeStore.save`)
therefore takes `flock(LOCK_EX | LOCK_NB)` on the lock file first and refuses, naming the holder's PID,
when another writer has it. Readers take no lock: saves are atomic renames, so a reader sees a whole
old or a whole new file. The kernel drops the lock when the holder's file descriptor closes, so a
killed writer never leaves a store locked; the lock file itself stays (deleting it would let two
writers lock two different files of one name).

Symbolic links are resolved first: the lock and the writes are for the file the link points to, so a
linked state stays a link (to an updated file).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from edgemeta.format.atomic import remove_stale_temporaries
from edgemeta.runtime.store import StoreError, StoreLockedError

try:
    import fcntl
except ImportError:  # Windows: msvcrt's byte-range lock on the lock file's first byte
    fcntl = None  # type: ignore[assignment]

LOCK_SUFFIX = ".lock"


def resolve_store_path(path: str | os.PathLike) -> Path:
    """The file a store path names, symbolic links resolved (what is locked and written)."""
    return Path(os.path.realpath(path))


def lock_path_of(path: str | os.PathLike) -> Path:
    """The lock file of the store at `path` (beside the resolved store: `<store>.lock`)."""
    target = resolve_store_path(path)
    return target.with_name(target.name + LOCK_SUFFIX)


def lock_holder(path: str | os.PathLike) -> int | None:
    """The PID recorded in the store's lock file (the last writer that took it; it may have exited), or None."""
    try:
        with open(lock_path_of(path), "rb") as f:
            first = f.read(32).split(b"\n", 1)[0]
    except OSError:
        return None
    return int(first) if first.isdigit() else None


class StoreLock:
    """The writer lock of one store file. `StoreLock.acquire(path)` takes it or raises `StoreLockedError`;
    `release()` (or the end of a `with` block, or the process's exit) gives it back.

    Example:
        >>> with StoreLock.acquire("/tmp/taught.store") as lock:   # doctest: +SKIP
        ...     store.save(lock.path, lock=lock)
    """

    def __init__(self, path: Path, lock_path: Path, fd: int) -> None:
        self.path, self.lock_path, self._fd = path, lock_path, fd

    @classmethod
    def acquire(cls, path: str | os.PathLike) -> StoreLock:
        """Takes the writer lock of the store at `path` (created with its directory if need be), without
        waiting, then removes the temporaries a killed writer left (no live writer can own them now).
        Raises `StoreLockedError` naming the holder's PID when another writer holds it, in this process
        or another; `StoreError` when `path` is a directory."""
        target = resolve_store_path(path)
        if target.is_dir():
            raise StoreError(f"The store path {str(path)!r} is a directory; expected a file (e.g. "
                             f"{str(Path(path) / 'taught.store')!r}). Received: a directory")
        target.parent.mkdir(parents=True, exist_ok=True)
        lock_path = target.with_name(target.name + LOCK_SUFFIX)
        flags = os.O_CREAT | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
        try:
            fd = os.open(lock_path, os.O_RDWR | flags, 0o666)
        except PermissionError:  # another user's lock file: flock needs no write access, only the PID note does
            fd = os.open(lock_path, os.O_RDONLY | flags)
        try:
            locked = _try_lock(fd)
        except OSError:  # e.g. ENOLCK: a file system without locks
            os.close(fd)
            raise
        if not locked:
            os.close(fd)
            holder = lock_holder(target)
            who = ("another writer in this process (an adapter not closed)" if holder == os.getpid()
                   else f"process {holder}" if holder is not None else "another process")
            raise StoreLockedError(
                f"The store {str(target)!r} is already open for writing by {who}: one writer per store, or the "
                "classes one acknowledges are lost when the other saves. Stop that writer (e.g. the `edgemeta "
                "device serve --state` on this file) or close() its adapter, or open this one read-only "
                f"(read_only=True; `edgemeta adapt` without --support/--forget does). Received: {lock_path} is "
                f"locked by PID {holder if holder is not None else 'unknown'}")
        lock = cls(target, lock_path, fd)
        with contextlib.suppress(OSError):  # the PID only names the holder in the message above
            data = f"{os.getpid()}\n".encode()
            os.pwrite(fd, data, 0)  # then truncate: the first line is a whole PID at every moment
            os.ftruncate(fd, len(data))
        remove_stale_temporaries(target)
        return lock

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Gives the lock back (closing its file descriptor drops it); a second call does nothing."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> StoreLock:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.release()

    def __repr__(self) -> str:
        return f"StoreLock({str(self.path)!r}, {'held' if self.held else 'released'})"


def _try_lock(fd: int) -> bool:
    """Locks `fd` exclusively without waiting; False when another open file description holds it."""
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True
    import msvcrt

    try:
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError:
        return False
    return True

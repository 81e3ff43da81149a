"""Crash-safe file writes: write a temporary file, fsync it, rename it over the target, fsync the directory."""

from __future__ import annotations

import contextlib
import io
import os
import stat
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

# Not `tempfile`: it imports `random` and `shutil` (0.8 MB of resident memory on a board for two names).


def atomic_write(path: str | os.PathLike, data: bytes, *, follow_symlinks: bool = False, keep_mode: bool = True) -> None:
    """Replaces `path` with `data` so that a reader (or a power cut, or SIGKILL) sees the old file or the
    new one, never a half-written one. See `atomic_writer` for modes, symbolic links and the directory's fsync."""
    with atomic_writer(path, follow_symlinks=follow_symlinks, keep_mode=keep_mode) as f:
        f.write(data)


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike, *, follow_symlinks: bool = False, keep_mode: bool = True) -> Iterator[BinaryIO]:
    """A file to write `path`'s new contents into, streamed: when the block ends without an exception the
    file is fsynced and renamed over `path`; on an exception it is removed and `path` is untouched.

    The temporary file has a unique name in the same directory (so the rename cannot cross file systems
    and two writers never share one).
    - Mode: the new file keeps the mode of the file it replaces (a 0600 file stays 0600), its group when
      the writer may set it, and its owner when the writer is root; a new file gets 0o666 & ~umask, as
      `open()` gives. `keep_mode=False` makes it a new file even when it replaces one: 0o666 & ~umask
      (0644 under the usual umask 022), the writer's owner and group.
    - `follow_symlinks=True` writes the file a symbolic link points to (the link stays a link);
      otherwise the link itself is replaced by a regular file.
    - The directory is fsynced after the rename so that the new name survives a power cut. If that fsync
      fails the rename has still happened: the new file is what every reader sees from now on, and
      raising would tell the caller that nothing changed (an adapter would then undo in memory what
      the disk holds). So it returns normally with a RuntimeWarning that durability against a power
      cut is not confirmed."""
    path = Path(os.path.realpath(path)) if follow_symlinks else Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        existing: os.stat_result | None = os.stat(path)
    except FileNotFoundError:
        existing = None
    # An existing file's copy starts private and gets its mode once written (it may be 0600 for a reason);
    # a new file's mode comes from the umask, as open() gives it.
    if not keep_mode:
        existing = None
    fd, tmp = _create_unique(path.parent, f".{path.name}.", ".tmp", 0o600 if existing else 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            if existing is not None:
                _keep_owner_and_mode(f.fileno(), existing)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    try:
        _fsync_dir(path.parent)
    except OSError as e:
        warnings.warn(f"{path} was replaced, but fsyncing its directory failed ({e}): every reader sees the new "
                      "file, but a power cut soon after could bring back the old one.", RuntimeWarning, stacklevel=3)


def remove_stale_temporaries(path: str | os.PathLike) -> int:
    """Deletes the temporaries of `path`'s writers; returns how many. Only a writer that holds the file's
    lock may call it (`edgemeta.runtime.lock.StoreLock`): another live writer's temporary would vanish
    under it (its rename then fails with FileNotFoundError)."""
    path = Path(path)
    removed = 0
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        with contextlib.suppress(OSError):
            tmp.unlink()
            removed += 1
    return removed


def anonymous_file() -> io.BufferedRandom:
    """A read-write file with no name (unlinked at once), in $TMPDIR or /tmp."""
    fd, name = _create_unique(Path(os.environ.get("TMPDIR") or "/tmp"), ".edgemeta-", ".tmp")
    os.unlink(name)
    return os.fdopen(fd, "w+b")


def _create_unique(directory: Path, prefix: str, suffix: str, mode: int = 0o600) -> tuple[int, str]:
    """Creates a new file (O_EXCL: never an existing one) with a random name; returns `(fd, path)`."""
    for _ in range(100):
        name = os.path.join(directory, f"{prefix}{os.urandom(6).hex()}{suffix}")
        try:
            return os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), mode), name
        except FileExistsError:
            continue
    raise FileExistsError(f"Could not create a unique temporary file in {directory}")


def _keep_owner_and_mode(fd: int, existing: os.stat_result) -> None:
    """Gives the new file the replaced file's mode, its group when allowed, and its owner when root."""
    if hasattr(os, "fchown"):
        owner = existing.st_uid if os.geteuid() == 0 else -1
        # Not root and not in that group: the new file keeps the writer's group, as any rewrite by it would.
        with contextlib.suppress(OSError):
            os.fchown(fd, owner, existing.st_gid)
    if hasattr(os, "fchmod"):
        os.fchmod(fd, stat.S_IMODE(existing.st_mode))


def _fsync_dir(directory: Path) -> None:
    if os.name != "posix":  # Windows cannot open a directory; NTFS journals the rename itself
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

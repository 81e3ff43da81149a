"""The workstation's side of SSH: targets (`ssh://[user@]host[:port]/path`), the OpenSSH client's
options, and `Board`, which runs the shell scripts of `scripts/` on a board and reads and uploads files.

The board needs only `sshd`, a POSIX shell and GNU coreutils; every call opens its own connection.
"""

from __future__ import annotations

import functools
import os
import shlex
import subprocess
import time
import urllib.parse
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

ENV_SSH_OPTIONS = "EDGEMETA_SSH_OPTIONS"
UPLOAD_CHUNK = 1 << 16
_DATA_MARKER = b"EDGEMETA-DATA-7f3c9e1a"


class DeployError(RuntimeError):
    """A step on one host failed; the board was left on the version it ran before (unless said)."""


@dataclass(frozen=True)
class Target:
    """`ssh://[user@]host[:port]/path`. A path starting with `/~/` is relative to the user's home."""

    host: str
    path: str
    user: str | None = None
    port: int | None = None

    @classmethod
    def parse(cls, url: str) -> Target:
        parts = urllib.parse.urlsplit(url)
        expected = "Expected ssh://[user@]host[:port]/path, e.g. ssh://pi@raspberrypi.local/var/lib/edgemeta"
        if parts.scheme != "ssh" or not parts.hostname:
            raise ValueError(f"{expected}. Received: {url!r}")
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"{expected}; the port must be a number from 1 to 65535. Received: {url!r}") from None
        path = urllib.parse.unquote(parts.path)
        path = path.removeprefix("/~/")  # ssh runs commands in the home directory
        if not path.strip("/") or path.startswith("-") or "\n" in path or parts.query or parts.fragment:
            raise ValueError(f"{expected} (a directory on the board, not its root). Received: {url!r}")
        if parts.hostname.startswith("-") or (parts.username or "").startswith("-"):
            raise ValueError(f"{expected}. Received a host or user starting with '-': {url!r}")
        return cls(parts.hostname, path.rstrip("/"), urllib.parse.unquote(parts.username) if parts.username else None, port)

    def __str__(self) -> str:
        user = f"{self.user}@" if self.user else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = f":{self.port}" if self.port else ""
        path = self.path if self.path.startswith("/") else f"/~/{self.path}"
        return f"ssh://{user}{host}{port}{path}"


@dataclass(frozen=True)
class SSHOptions:
    """How to run the OpenSSH client: `options` are `-o KEY=VALUE` settings (they win over the defaults:
    ssh keeps the first value it reads), `extra` raw arguments (from $EDGEMETA_SSH_OPTIONS, e.g. "-F cfg")."""

    identity: str | None = None
    config: str | None = None
    options: tuple[str, ...] = ()
    extra: tuple[str, ...] = ()
    connect_timeout: int = 10
    ssh: str = "ssh"

    @classmethod
    def from_env(cls, **kwargs: Any) -> SSHOptions:
        return cls(extra=tuple(shlex.split(os.environ.get(ENV_SSH_OPTIONS, ""))), **kwargs)

    def __post_init__(self) -> None:
        for option in self.options:
            if "=" not in option or option.startswith(("-", "=")):
                raise ValueError(f"--ssh-option takes KEY=VALUE (an ssh_config setting). Received: {option!r}")
        if not isinstance(self.connect_timeout, int) or self.connect_timeout < 1:
            raise ValueError(f"connect_timeout must be a positive number of seconds. Received: {self.connect_timeout!r}")

    def command(self, target: Target, remote: str) -> list[str]:
        cmd = [self.ssh, *self.extra]
        if self.config:
            cmd += ["-F", self.config]
        for option in self.options:
            cmd += ["-o", option]
        cmd += ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={self.connect_timeout}",
                "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4"]  # a dead link fails in ~1 min
        if self.identity:
            cmd += ["-i", self.identity]
        if target.port:
            cmd += ["-p", str(target.port)]
        if target.user:
            cmd += ["-l", target.user]
        return [*cmd, "--", target.host, remote]


@functools.cache
def script(name: str) -> str:
    """The text of `scripts/<name>.sh` (package data): a POSIX sh script for `Board.run`, its arguments
    in $1, $2, ..."""
    scripts = resources.files(__package__) / "scripts"
    text = (scripts / f"{name}.sh").read_text(encoding="utf-8")
    # One script is one string sent over SSH: shared functions are put in, not sourced on the board.
    return text.replace("# include names.sh\n", (scripts / "names.sh").read_text(encoding="utf-8"))


class Board:
    """One target over SSH: runs shell scripts there, uploads and fetches files."""

    def __init__(self, target: Target, ssh: SSHOptions) -> None:
        self.target, self.ssh = target, ssh

    def run(self, script: str, *args: str, timeout: float | None = 600) -> dict[str, list[str]]:
        """Runs `script` with `sh -c` (sent whole in the command line, so a cut connection never runs half
        a script) and returns its `key=value` output lines grouped by key."""
        remote = " ".join(["sh", "-c", shlex.quote(script), "edgemeta", *map(shlex.quote, args)])
        result = subprocess.run(self.ssh.command(self.target, remote), capture_output=True, timeout=timeout)
        out = _parse_lines(result.stdout.decode(errors="replace"))
        if result.returncode != 0:
            if "error" in out:
                raise DeployError("; ".join(out["error"] + out.get("verify_failed", [])))
            raise DeployError(self._failure(result.returncode, result.stderr))
        out.setdefault("_warnings", [])
        return out

    def read(self, relative: str, limit: int | None = None) -> bytes:
        """The bytes of a file under the target's directory (its first `limit` bytes)."""
        path = f"{self.target.path}/{relative}"
        # A marker first: whatever the login shell's startup files print before it is not the file's.
        reader = f"head -c {int(limit)}" if limit else "cat"
        script = f'printf "%s\\n" {_DATA_MARKER.decode()} && exec {reader} -- "$1"'
        command = "sh -c " + shlex.quote(script) + " edgemeta " + shlex.quote(path)
        result = subprocess.run(self.ssh.command(self.target, command), capture_output=True, timeout=600, check=False)
        if result.returncode != 0:
            raise DeployError(f"Reading {path} failed: {self._failure(result.returncode, result.stderr)}")
        head, marker, data = result.stdout.partition(_DATA_MARKER + b"\n")
        if not marker:
            raise DeployError(f"Reading {path}: the board's output lacks the start marker. Received: {head[:200]!r}")
        return data

    def upload(self, local: Path, remote: str, rate: int | None = None) -> int:
        """Streams `local` into `remote` (`cat > remote` on the board, its directory created), at most
        `rate` bytes/s."""
        command = "sh -c " + shlex.quote('mkdir -p -- "$(dirname -- "$1")" && cat > "$1"') + " edgemeta " + shlex.quote(remote)
        proc = subprocess.Popen(self.ssh.command(self.target, command), stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        sent, start = 0, time.monotonic()
        try:
            with open(local, "rb") as f:
                for chunk in iter(lambda: f.read(UPLOAD_CHUNK), b""):
                    proc.stdin.write(chunk)
                    sent += len(chunk)
                    if rate:  # pace to the average rate: a slow link shared with the board's own traffic
                        ahead = sent / rate - (time.monotonic() - start)
                        if ahead > 0:
                            time.sleep(ahead)
            proc.stdin.close()
        except BrokenPipeError:
            pass  # ssh died; its exit status and stderr say why
        stderr = proc.stderr.read()
        code = proc.wait()
        if code != 0:
            raise DeployError(f"Uploading {local.name} to {remote} failed after {sent:,} bytes: "
                              f"{self._failure(code, stderr)}")
        return sent

    def _failure(self, code: int, stderr: bytes) -> str:
        text = stderr.decode(errors="replace").strip()
        tail = text.splitlines()[-1] if text else "(no message)"
        if code == 255:
            return f"ssh could not connect to {self.target.host} or lost the connection (exit 255): {tail}"
        return f"the board's shell exited with {code}: {tail}"


def _parse_lines(text: str) -> dict[str, list[str]]:
    """A script's `key=value` output lines, grouped by key (other lines are ignored)."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.replace("_", "").isalnum():
            out.setdefault(key, []).append(value)
    return out

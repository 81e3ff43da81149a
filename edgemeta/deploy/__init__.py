"""`edgemeta deploy | rollback | status`: ship a bundle to boards over SSH, verified, switched atomically,
reversible, keeping what each board learned across a model upgrade.

The workstation drives everything through the system's OpenSSH client; the board needs only a POSIX
shell and GNU coreutils (`sha256sum`, `ln`, `mv -T`, `mkdir`, `rm`, `head`, `sync`), no Python.
Board layout under the target's path (docs/deploy.md has the protocol and its crash windows):

    versions/<id>/            one deployed bundle (id: UTC time + the model's short sha256), plus
                              SHA256SUMS, and taught.store.saved: the store that was live under it
    versions/<id>.partial/    an upload in progress (never current; removed by the next deploy)
    current -> versions/<id>  the running version, switched with a rename
    state/taught.store        what the board was taught (the adapter's --state file)
    history                   one line per switch: time, action, to, from, note
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgemeta.format.checksum import sha256_file, sha256_hex

STORE_FILE = "state/taught.store"
PENDING_STORE = "taught.store.pending"  # a version's store, uploaded, not yet live
SAVED_STORE = "taught.store.saved"  # the store that was live while the version ran
SUMS_FILE = "SHA256SUMS"
ENV_SSH_OPTIONS = "EDGEMETA_SSH_OPTIONS"
HEADER_PROBE_BYTES = 65536  # the store's JSON header (labels included) fits in this for ~3000 classes
UPLOAD_CHUNK = 1 << 16
_DATA_MARKER = b"EDGEMETA-DATA-7f3c9e1a"


class DeployError(RuntimeError):
    """A step on one host failed; the board was left on the version it ran before (unless said)."""


# -- targets and the SSH client -------------------------------------------------------------------
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
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.replace("_", "").isalnum():
            out.setdefault(key, []).append(value)
    return out


# -- scripts run on the board (POSIX sh; $1... are their arguments) -------------------------------
# Inspect: what is there. In "deploy"/"rollback" mode it also finishes what a cut switch left: the store
# a switched-to version brought (its taught.store.pending) is moved into place, other pending stores and
# stale uploads (*.partial) are removed.
_INSPECT = r"""
set -eu
root=$1 mode=$2
if [ "$mode" != status ]; then mkdir -p -- "$root/versions" "$root/state"; fi
if ! cd -- "$root" 2>/dev/null; then echo "root="; exit 0; fi
echo "root=$(pwd -P)"
cur=
if [ -L current ]; then cur=$(readlink current); echo "current=${cur#versions/}"
elif [ -e current ]; then echo "current_not_link=1"; fi
if [ "$mode" != status ]; then
  if [ -n "$cur" ] && [ -f "$cur/taught.store.pending" ]; then
    mv -f -- "$cur/taught.store.pending" state/taught.store; sync; echo "rolled_forward=${cur#versions/}"
  fi
  for d in versions/*; do
    case $d in
      *.partial) rm -rf -- "$d"; echo "cleaned=${d#versions/}" ;;
      *) if [ "$d" != "$cur" ] && [ -f "$d/taught.store.pending" ]; then rm -f -- "$d/taught.store.pending"; fi ;;
    esac
  done
  rm -f current.new
fi
for d in versions/*; do
  [ -d "$d" ] || continue
  v=${d#versions/}
  echo "version=$v"
  if [ -f "$d/manifest.json" ]; then printf 'manifest=%s ' "$v"; tr -d '\r\n' < "$d/manifest.json"; echo; fi
  if [ -f "$d/taught.store.saved" ]; then echo "saved_store=$v"; fi
done
if [ -f history ]; then tail -n 200 history | sed 's/^/history=/'; fi
if [ -f state/taught.store ]; then echo "store_sha256=$(sha256sum state/taught.store | cut -d ' ' -f 1)"; fi
for tool in sha256sum readlink head mv ln sync; do
  command -v "$tool" >/dev/null 2>&1 || echo "missing=$tool"
done
"""

# Switch (deploy and rollback): verify the upload, check nothing changed since it was read, keep the
# live store for rollback, switch `current` (one rename), move the new version's store into place, log,
# prune, run the after hook. Each step is one rename or one new file. `restart` is the after hook when
# the before hook already ran (so a refused switch still restarts what it stopped), else empty.
_SWITCH = r"""
set -eu
root=$1 action=$2 id=$3 old=$4 store_action=$5 store_sha=$6 after=$7 restart=$8 note=$9 sums=${10} pending_sha=${11}
shift 11
cd -- "$root"
fail() {
  echo "error=$*"
  if [ -n "$restart" ]; then sh -c "$restart" >&2 || true; fi
  exit 3
}
if [ "$action" = deploy ]; then
  [ -d "versions/$id.partial" ] || fail "versions/$id.partial is gone (another deploy to this board cleaned it?); nothing was switched"
  # The list itself must be the one computed on the workstation (complete, not truncated).
  got=$(sha256sum "versions/$id.partial/SHA256SUMS" | cut -d ' ' -f 1)
  [ "$got" = "$sums" ] || { rm -rf -- "versions/$id.partial"; fail "SHA256SUMS on the board is not the one sent; nothing was switched"; }
  if ! out=$(cd "versions/$id.partial" && sha256sum -c SHA256SUMS 2>&1); then
    printf '%s\n' "$out" | grep -v ': OK$' | sed 's/^/verify_failed=/' || true
    rm -rf -- "versions/$id.partial"
    fail "sha256 verification failed on the board; nothing was switched"
  fi
  echo "verified=$(wc -l < "versions/$id.partial/SHA256SUMS" | tr -d ' ')"
  sync
  mv -- "versions/$id.partial" "versions/$id"
fi
[ -d "versions/$id" ] || fail "versions/$id does not exist on the board"
now=
if [ -L current ]; then now=$(readlink current); now=${now#versions/}; fi
[ "$now" = "$old" ] || fail "current changed during the $action (it is now '${now}', was '${old}'): another deploy? Nothing was switched; re-run"
if [ "$store_action" != keep ]; then
  live=
  if [ -f state/taught.store ]; then live=$(sha256sum state/taught.store | cut -d ' ' -f 1); fi
  [ "$live" = "$store_sha" ] || fail "the board's store changed during the $action (a class enrolled meanwhile?); nothing was switched; re-run"
  if [ -n "$live" ]; then
    if [ -n "$old" ]; then keep="versions/$old/taught.store.saved"; else keep="state/taught.store.before-$id"; fi
    ln -f state/taught.store "$keep.tmp" 2>/dev/null || cp -p state/taught.store "$keep.tmp"
    mv -f -- "$keep.tmp" "$keep"
  fi
  if [ "$store_action" = restore ]; then
    ln -f "versions/$id/taught.store.saved" "versions/$id/taught.store.pending" 2>/dev/null ||
      cp -p "versions/$id/taught.store.saved" "versions/$id/taught.store.pending"
  fi
  [ -f "versions/$id/taught.store.pending" ] || fail "versions/$id/taught.store.pending is missing; nothing was switched"
  if [ -n "$pending_sha" ]; then
    got=$(sha256sum "versions/$id/taught.store.pending" | cut -d ' ' -f 1)
    [ "$got" = "$pending_sha" ] || fail "sha256 verification failed on the board for the new store ($got); nothing was switched"
  fi
fi
ln -sfn "versions/$id" current.new
mv -T current.new current
echo "switched=$id"
if [ "$store_action" != keep ]; then
  mv -f -- "versions/$id/taught.store.pending" state/taught.store
  echo "store=replaced"
fi
printf '%s\t%s\t%s\t%s\t%s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$action" "$id" "${old:--}" "$note" >> history
sync
for v in "$@"; do rm -rf -- "versions/$v"; echo "pruned=$v"; done
if [ -n "$after" ]; then sh -c "$after" >&2 || echo "warning=the --after-switch command failed"; fi
"""

_STORE_SHA = r"""
set -eu
cd -- "$1"
if [ -f state/taught.store ]; then echo "store_sha256=$(sha256sum state/taught.store | cut -d ' ' -f 1)"; fi
"""

_VERIFY_CURRENT = r"""
set -eu
cd -- "$1"
cur=$(readlink current)
cd "$cur"
if out=$(sha256sum -c SHA256SUMS 2>&1); then echo "verified=$(wc -l < SHA256SUMS | tr -d ' ')"
else printf '%s\n' "$out" | grep -v ': OK$' | sed 's/^/verify_failed=/'; fi
"""


# -- the state of one board ----------------------------------------------------------------------
@dataclass
class BoardState:
    """What `_INSPECT` found."""

    root: str | None
    current: str | None
    versions: list[str]
    manifests: dict[str, dict]
    saved_stores: set[str]
    history: list[list[str]]
    store_sha256: str | None
    rolled_forward: str | None = None
    cleaned: list[str] = field(default_factory=list)

    @classmethod
    def inspect(cls, board: Board, mode: str) -> BoardState:
        out = board.run(_INSPECT, board.target.path, mode, timeout=120)
        if out.get("missing"):
            raise DeployError(f"The board lacks {out['missing']} (needs a POSIX shell and GNU coreutils).")
        if out.get("current_not_link"):
            raise DeployError(f"{board.target.path}/current exists but is not a symbolic link; edgemeta deploy "
                              "manages it. Move it away first.")
        manifests = {}
        for line in out.get("manifest", []):
            version, _, text = line.partition(" ")
            try:
                manifests[version] = json.loads(text)
            except json.JSONDecodeError:
                manifests[version] = {}
        root = (out.get("root") or [""])[0] or None
        return cls(root=root, current=(out.get("current") or [None])[0],
                   versions=sorted(v for v in out.get("version", []) if not v.endswith(".partial")),
                   manifests=manifests, saved_stores=set(out.get("saved_store", [])),
                   history=[h.split("\t") for h in out.get("history", [])],
                   store_sha256=(out.get("store_sha256") or [None])[0],
                   rolled_forward=(out.get("rolled_forward") or [None])[0], cleaned=out.get("cleaned", []))

    def model_of(self, version: str | None) -> str | None:
        return self.manifests.get(version or "", {}).get("model_sha256")

    def previous(self) -> str | None:
        """The version that was current before the last switch to the current one (what rollback goes to)."""
        for entry in reversed(self.history):
            if len(entry) >= 4 and entry[2] == self.current:
                return None if entry[3] == "-" else entry[3]
        return None


def _store_header(data: bytes) -> dict | None:
    """The JSON header of a version-2 store file from its first bytes; None when more bytes are needed
    or the file is of another format (then the whole file is read)."""
    from edgemeta.runtime.store import MAGIC

    if data[:8] != MAGIC or len(data) < 12:
        return None
    length = int.from_bytes(data[8:12], "little")
    if len(data) < 12 + length:
        return None
    try:
        return json.loads(data[12 : 12 + length])
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None


def _fetch_store_header(board: Board) -> dict:
    """The board's store header: model_sha256, labels, keep_support, prototype_dtype, embedding_size."""
    data = board.read(STORE_FILE, HEADER_PROBE_BYTES)
    header = _store_header(data)
    if header is None and data[:8] == _magic() and len(data) >= 12:
        header = _store_header(board.read(STORE_FILE, 12 + int.from_bytes(data[8:12], "little")))
    if header is None:  # a version-1 store or a damaged one: load it whole, which checks it
        store = _load_store_bytes(board.read(STORE_FILE), f"{board.target}/{STORE_FILE}")
        header = {"model_sha256": store.model_sha256, "labels": store.labels, "keep_support": store.keep_support,
                  "prototype_dtype": store.prototype_dtype, "embedding_size": store.embedding_size}
    return header


def _magic() -> bytes:
    from edgemeta.runtime.store import MAGIC

    return MAGIC


def _load_store_bytes(data: bytes, source: str):
    """A `PrototypeStore` from fetched bytes (checked: magic, version, checksum)."""
    from edgemeta.runtime.store import PrototypeStore, StoreError

    with tempfile.TemporaryDirectory(prefix="edgemeta-deploy-") as tmp:
        path = Path(tmp) / "taught.store"
        path.write_bytes(data)
        try:
            return PrototypeStore.load(path)
        except StoreError as e:
            raise DeployError(f"The board's store {source} cannot be read: {e}") from e


# -- results ------------------------------------------------------------------------------------
@dataclass
class HostResult:
    """The outcome on one host: `ok`, the version now current there, a one-line message, and details."""

    target: str
    ok: bool
    version: str | None = None
    message: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "ok": self.ok, "version": self.version, "message": self.message, **self.details}


Log = Callable[[str], None]


def _per_host(targets: Sequence[str | Target], work: Callable[[Target, Log], HostResult], log: Log | None,
               parallel: int) -> list[HostResult]:
    """Runs `work` on every target (up to `parallel` at once); an error on one host is its result,
    never the others'. Results come in the order of `targets`."""
    lock = threading.Lock()
    # A malformed URL is a usage error: refuse before any host is touched.
    parsed = [t if isinstance(t, Target) else Target.parse(t) for t in targets]

    def one(item: Target) -> HostResult:
        def host_log(text: str) -> None:
            if log is not None:
                with lock:
                    log(f"[{item}] {text}")

        try:
            return work(item, host_log)
        except (DeployError, ValueError, OSError, KeyError) as e:
            return HostResult(str(item), False, message=str(e))
        except Exception as e:  # one host's surprise must not hide the other hosts' results
            return HostResult(str(item), False, message=f"{type(e).__name__}: {e}")

    if not parsed:
        raise ValueError("Expected at least one --to ssh://[user@]host[:port]/path. Received: none")
    with ThreadPoolExecutor(max_workers=max(1, min(parallel, len(parsed)))) as pool:
        return list(pool.map(one, parsed))


# -- deploy -------------------------------------------------------------------------------------
def deploy(bundle: str | os.PathLike, targets: Sequence[str | Target], *, device: str | None = None,
           classes: int = 100, shots: int = 5, batch: int = 8, drop_classes: bool = False, keep: int = 3,
           ssh: SSHOptions | None = None, rate: int | None = None, before_switch: str = "", after_switch: str = "",
           parallel: int = 4, log: Log | None = print) -> list[HostResult]:
    """Deploys the bundle directory `bundle` to every target; one `HostResult` per target.

    Per host: inspect the board; read its store's header; with `device`, refuse when the adapter's
    predicted memory at the board's class count (else `classes`) exceeds the profile's budget; when the
    store was taught with another model, re-embed its kept support images with the new model (or, with
    `drop_classes`, start empty; without kept images the deploy refuses); upload into
    `versions/<id>.partial`; verify every file's sha256 on the board; switch `current`; keep `keep`
    versions (always the current and the previous one)."""
    from edgemeta.format.bundle import read_bundle

    bundle = Path(bundle)
    _, manifest = read_bundle(bundle)  # a broken bundle is refused before any host is touched
    if keep < 2:
        raise ValueError(f"keep must be at least 2 (the current version and the previous one). Received: {keep}")
    for name, value in (("classes", classes), ("shots", shots), ("batch", batch)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer. Received: {value!r}")
    if rate is not None and rate <= 0:
        raise ValueError(f"rate must be a positive number of bytes per second. Received: {rate!r}")
    files = _bundle_files(bundle)
    sums = {name: sha256_file(bundle / name) for name in files}
    profile = None
    if device is not None:
        from edgemeta.profiles import load_profile

        profile = load_profile(device)
    ssh = ssh or SSHOptions.from_env()
    plan_cache: dict[tuple, Any] = {}
    plan_lock = threading.Lock()

    def fit_check(header: dict | None) -> str:
        if profile is None:
            return "no --device: fit not checked"
        from edgemeta.runtime.memory import MB, plan_memory

        if header is not None:
            n = len(header.get("labels", []))
            key = (header.get("prototype_dtype", "float32"), header.get("keep_support"))
        else:
            n, key = classes, ("float32", None)
        with plan_lock:  # one plan per store configuration, shared by the hosts
            if key not in plan_cache:
                plan_cache[key] = plan_memory(bundle, batch, shots, key[0], key[1])
        plan = plan_cache[key]
        need = plan.predict(max(n, 1))
        if need > profile.budget_bytes:
            raise DeployError(
                f"The bundle does not fit {profile.key}: the adapter would need {need / MB:.1f} MB at {n} classes "
                f"({'the board' + chr(39) + 's store' if header is not None else '--classes'}), the profile's budget is "
                f"{profile.budget_bytes / MB:.1f} MB (at most {plan.max_classes(profile.budget_bytes)} classes fit). "
                "Nothing was uploaded.")
        return f"fits {profile.key}: {need / MB:.1f} MB of {profile.budget_bytes / MB:.1f} MB at {n} classes"

    def work(target: Target, say: Log) -> HostResult:
        board = Board(target, ssh)
        state = BoardState.inspect(board, "deploy")
        if state.rolled_forward:
            say(f"finished an interrupted switch: moved the store of {state.rolled_forward} into place")
        if state.cleaned:
            say(f"removed unfinished upload(s) {', '.join(state.cleaned)}")
        header = _fetch_store_header(board) if state.store_sha256 else None
        fit = fit_check(header)
        say(fit)
        upgrade = header is not None and header.get("model_sha256") != manifest.model_sha256
        if upgrade and header.get("keep_support") != "images" and not drop_classes:
            raise DeployError(_cannot_reenroll(len(header.get("labels", [])), len(header.get("labels", [])),
                                               header.get("keep_support"), header.get("labels", [])))
        details: dict[str, Any] = {"fit": fit, "previous": state.current, "model_sha256": manifest.model_sha256}
        version = _new_version_id(manifest.model_sha256, state.versions)
        partial = f"{target.path}/versions/{version}.partial"
        hooks = _Hooks(board, before_switch, after_switch)
        with tempfile.TemporaryDirectory(prefix="edgemeta-deploy-") as tmp, hooks:
            for name in files:
                say(f"uploaded {name} ({board.upload(bundle / name, f'{partial}/{name}', rate):,} bytes)")
            store_action, store_sha, pending_sha = "keep", "", ""
            note = "no store on the board" if header is None else "store kept: same model"
            if upgrade:
                # Stop the adapter first (it may save its store as it exits): the store read next is final.
                hooks.before()
                data = board.read(STORE_FILE)
                store_sha = sha256_hex(data)  # the switch proceeds only if the board's store is still these bytes
                old = _load_store_bytes(data, f"{target}/{STORE_FILE}")
                new, note = _upgrade_store(old, bundle, drop_classes, say)
                pending = Path(tmp) / PENDING_STORE
                new.save(pending)
                pending_sha = sha256_file(pending)  # checked by the switch, not listed: it leaves the version
                say(f"uploaded {PENDING_STORE} ({board.upload(pending, f'{partial}/{PENDING_STORE}', rate):,} bytes)")
                store_action = "replace"
                details.update(classes_before=len(old), classes_after=len(new), store="re-embedded")
            elif header is not None:
                details.update(classes=len(header.get("labels", [])), store="kept (same model)")
            sums_path = Path(tmp) / SUMS_FILE
            sums_path.write_text("".join(f"{digest}  {name}\n" for name, digest in sorted(sums.items())))
            board.upload(sums_path, f"{partial}/{SUMS_FILE}")
            hooks.before()
            prune = _to_prune(state.versions, version, state.current, keep)
            out = hooks.switch(_SWITCH, target.path, "deploy", version, state.current or "", store_action, store_sha,
                               after_switch, hooks.restart, note, sha256_file(sums_path), pending_sha, *prune)
        say(f"verified {out['verified'][0]} file(s) on the board; current -> versions/{version}")
        warnings = out.get("warning", [])
        if store_action != "keep" and not before_switch:
            warnings.append("the store was replaced: restart the adapter now (and use --before-switch to stop it "
                            "first: an adapter still running the old model saves its old store when it exits)")
        details.update(verified=int(out["verified"][0]), pruned=out.get("pruned", []), warnings=warnings)
        message = f"deployed ({note})" + "".join(f"; {w}" for w in warnings)
        return HostResult(str(target), True, version, message, details)

    return _per_host(targets, work, log, parallel)


class _Hooks:
    """The --before-switch / --after-switch commands of one host: `before` runs at most once; if it ran and
    the switch never happened, leaving the `with` block runs the after command (restart what was stopped)."""

    def __init__(self, board: Board, before: str, after: str) -> None:
        self.board, self.before_command, self.after_command = board, before, after
        self.ran, self.switch_started = False, False

    @property
    def restart(self) -> str:
        return self.after_command if self.ran else ""

    def before(self) -> None:
        if self.before_command and not self.ran:
            try:
                self.board.run('sh -c "$1" >&2', self.before_command, timeout=600)
            except DeployError as e:
                raise DeployError(f"The --before-switch command failed; nothing was switched: {e}") from e
            self.ran = True

    def switch(self, script: str, *args: str) -> dict[str, list[str]]:
        self.switch_started = True  # the switch script runs the after command itself, on success or refusal
        return self.board.run(script, *args)

    def __enter__(self) -> _Hooks:
        return self

    def __exit__(self, kind: Any, error: Any, traceback: Any) -> None:
        if kind is not None and self.ran and not self.switch_started and self.after_command:
            try:
                self.board.run('sh -c "$1" >&2', self.after_command, timeout=600)
            except DeployError:
                pass  # the original error is what the user must see


def _cannot_reenroll(missing: int, total: int, keep_support: str | None, labels: Sequence[str]) -> str:
    return (f"The new bundle's model differs from the one the board's {total} class(es) were taught with, and "
            f"{missing} of them have no kept support images to re-enroll from (store keep_support={keep_support!r}; "
            f"e.g. {list(labels)[:5]}). Nothing was switched. Re-run with --drop-classes to deploy anyway: the "
            "new version starts without those classes (the old store is kept for rollback). To keep classes "
            "across upgrades, run the adapter with keep_support='images'.")


def _bundle_files(bundle: Path) -> list[str]:
    """Every regular file of the bundle (relative names, sorted), hidden ones excepted."""
    files = []
    for path in sorted(bundle.rglob("*")):
        rel = path.relative_to(bundle).as_posix()
        if any(part.startswith(".") for part in rel.split("/")) or not path.is_file():
            continue
        if "\n" in rel or rel in (SUMS_FILE, PENDING_STORE, SAVED_STORE):
            raise ValueError(f"The bundle holds a file deploy reserves or cannot name: {rel!r}. Received bundle {bundle}")
        files.append(rel)
    return files


def _new_version_id(model_sha256: str, existing: Sequence[str]) -> str:
    base = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + model_sha256[:12]
    version, n = base, 2
    while version in existing:
        version, n = f"{base}-{n}", n + 1
    return version


def _to_prune(versions: Sequence[str], new: str, current: str | None, keep: int) -> list[str]:
    """Versions to delete after switching to `new`: `keep` survive, `new` and `current` (which becomes the
    previous one) always, then the newest others. Version ids start with their UTC time: they sort by age."""
    survivors = {new} | ({current} if current else set())
    for v in sorted(versions, reverse=True):
        if len(survivors) >= keep:
            break
        survivors.add(v)
    return [v for v in versions if v not in survivors]


def _upgrade_store(old, bundle: Path, drop_classes: bool, say: Log):
    """The board's store for the new model: every class re-embedded from its kept support images by the
    new model (same labels, shots, order of last use); classes without kept images are dropped only
    with `drop_classes`, else `DeployError`."""
    from edgemeta.runtime import Embedder, FewShotAdapter, PrototypeStore

    missing = [label for label in old.labels
               if old.keep_support != "images" or len(old.support(label)) != old.count(label)]
    if missing and not drop_classes:
        raise DeployError(_cannot_reenroll(len(missing), len(old), old.keep_support, missing))
    embedder = Embedder.from_bundle(bundle)
    keep_support = old.keep_support if old.keep_support == "images" else None
    adapter = FewShotAdapter(embedder, prototype_dtype=old.prototype_dtype, keep_support=keep_support,
                             unknown_threshold=None)
    kept = [label for label in old.by_last_use() if label not in missing]  # least recently used first
    for label in kept:
        images = old.support(label)
        for i in range(0, len(images), 256):  # the adapter refuses more than 1024 images per call
            adapter.enroll(label, images[i : i + 256])
    store: PrototypeStore = adapter.store
    if missing:
        say(f"dropped {len(missing)} class(es) without kept images (--drop-classes): {missing[:10]}")
    note = f"re-enrolled {len(kept)} class(es) with the new model"
    if missing:
        note += f", dropped {len(missing)}"
    say(note)
    return store, note


# -- rollback -----------------------------------------------------------------------------------
def rollback(targets: Sequence[str | Target], *, version: str | None = None, ssh: SSHOptions | None = None,
             before_switch: str = "", after_switch: str = "", parallel: int = 4,
             log: Log | None = print) -> list[HostResult]:
    """Switches each target's `current` back to the version that was current before the last switch
    (or to `version`), atomically. When the two versions' models differ, the store switches too: the
    one saved when the board left that version is restored (the live one is saved in its place); if
    none was saved, the board starts that version without classes."""
    ssh = ssh or SSHOptions.from_env()

    def work(target: Target, say: Log) -> HostResult:
        board = Board(target, ssh)
        state = BoardState.inspect(board, "rollback")
        if state.rolled_forward:
            say(f"finished an interrupted switch: moved the store of {state.rolled_forward} into place")
        if state.current is None:
            raise DeployError(f"Nothing is deployed at {target} (no `current` link): nothing to roll back.")
        goal = version or state.previous()
        if goal is None:
            raise DeployError(f"No previous version recorded at {target} (current is {state.current}; "
                              f"versions there: {state.versions}). Pass --version ID to choose one.")
        if goal not in state.versions:
            raise DeployError(f"Version {goal!r} is not on the board (pruned?). Received: {goal!r}; "
                              f"versions there: {state.versions}")
        if goal == state.current:
            raise DeployError(f"{goal} is already current at {target}; nothing to do.")
        old_model, new_model = state.model_of(state.current), state.model_of(goal)
        store_action = "keep"
        header = _fetch_store_header(board) if state.store_sha256 else None
        empty = None
        if old_model == new_model:
            note = "same model: store kept"
        elif header is not None and header.get("model_sha256") == new_model:
            note = "the store already matches that model: kept"
        elif goal in state.saved_stores:
            store_action, note = "restore", "restored the store saved when the board left this version"
        elif header is None:
            note = "no store on the board"
        else:  # no store of that model was kept: start empty (the live one is saved under the version left)
            from edgemeta.runtime import PrototypeStore

            store_action = "replace"
            empty = PrototypeStore(int(state.manifests[goal]["embedding_size"]), new_model,
                                   header.get("prototype_dtype", "float32"), header.get("keep_support"))
            note = (f"no store was saved for {goal}: it starts without classes "
                    f"(the current store is kept in versions/{state.current}/{SAVED_STORE})")
        hooks = _Hooks(board, before_switch, after_switch)
        with hooks, tempfile.TemporaryDirectory(prefix="edgemeta-rollback-") as tmp:
            pending_sha = ""
            if empty is not None:
                empty.save(Path(tmp) / PENDING_STORE)
                pending_sha = sha256_file(Path(tmp) / PENDING_STORE)
                board.upload(Path(tmp) / PENDING_STORE, f"{target.path}/versions/{goal}/{PENDING_STORE}")
            hooks.before()
            # Read after the before command: a stopping adapter may save its store as it exits.
            store_sha = (board.run(_STORE_SHA, target.path).get("store_sha256") or [""])[0]
            out = hooks.switch(_SWITCH, target.path, "rollback", goal, state.current, store_action, store_sha,
                               after_switch, hooks.restart, note, "", pending_sha)
        say(f"current -> versions/{goal} (was {state.current}); {note}")
        return HostResult(str(target), True, goal, f"rolled back from {state.current} ({note})",
                          {"previous": state.current, "warnings": out.get("warning", [])})

    return _per_host(targets, work, log, parallel)


# -- status -------------------------------------------------------------------------------------
def status(targets: Sequence[str | Target], *, ssh: SSHOptions | None = None, verify: bool = False,
           parallel: int = 4, log: Log | None = None) -> list[HostResult]:
    """What runs where: each target's current version, its model (sha256, quantization), the versions
    kept, the last switch, and the store (classes, the model it was taught with). Read-only. With
    `verify`, the current version's files are re-hashed on the board and the whole store is fetched and
    checked (checksum, format) here."""
    ssh = ssh or SSHOptions.from_env()

    def work(target: Target, say: Log) -> HostResult:
        board = Board(target, ssh)
        state = BoardState.inspect(board, "status")
        if state.root is None or state.current is None:
            return HostResult(str(target), True, None, "nothing deployed", {"versions": state.versions})
        manifest = state.manifests.get(state.current, {})
        model = manifest.get("model_sha256")
        details: dict[str, Any] = {
            "model_sha256": model, "quantization": manifest.get("quantization", {}).get("scheme"),
            "embedding_size": manifest.get("embedding_size"), "versions": state.versions,
            "previous": state.previous(), "last_switch": "\t".join(state.history[-1]) if state.history else None,
            "store": None,
        }
        message = f"model {str(model)[:12]} ({details['quantization']})"
        if state.store_sha256:
            header = _fetch_store_header(board)
            store = {"classes": len(header.get("labels", [])), "model_sha256": header.get("model_sha256"),
                     "keep_support": header.get("keep_support"), "matches_model": header.get("model_sha256") == model,
                     "sha256": state.store_sha256}
            if verify:
                loaded = _load_store_bytes(board.read(STORE_FILE), f"{target}/{STORE_FILE}")
                store["checked"] = True
                store["classes"] = len(loaded)
            details["store"] = store
            message += f"; store: {store['classes']} classes, images kept: {store['keep_support'] == 'images'}"
            if not store["matches_model"]:
                message += "; STORE TAUGHT WITH ANOTHER MODEL (the adapter will refuse it)"
        else:
            message += "; no store"
        if verify:
            out = board.run(_VERIFY_CURRENT, target.path, timeout=600)
            if out.get("verify_failed"):
                return HostResult(str(target), False, state.current,
                                  f"files of {state.current} do not match their SHA256SUMS: {out['verify_failed']}", details)
            details["verified"] = int(out["verified"][0])
            message += f"; {details['verified']} file(s) verified"
        return HostResult(str(target), True, state.current, message, details)

    return _per_host(targets, work, log, parallel)


# -- command line -------------------------------------------------------------------------------
def parse_rate(text: str) -> int:
    """"500K", "2M", "1.5MB" or "100000" (bytes per second; K = 1024) -> bytes per second."""
    units = {"": 1, "B": 1, "K": 1 << 10, "KB": 1 << 10, "M": 1 << 20, "MB": 1 << 20, "G": 1 << 30, "GB": 1 << 30}
    t = text.strip().upper().removesuffix("/S")
    number = t.rstrip("KMGB")
    try:
        value = float(number) * units[t[len(number):]]
    except (ValueError, KeyError):
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected bytes per second such as 500K or 2M. Received: {text!r}")
    return int(value)


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    """Adds the arguments of `command` ("deploy", "rollback" or "status") to `parser`."""
    if command not in ("deploy", "rollback", "status"):
        raise ValueError(f"command must be deploy, rollback or status. Received: {command!r}")
    parser.set_defaults(deploy_command=command)
    if command == "deploy":
        parser.add_argument("bundle", help="bundle directory (model.tflite + manifest.json)")
    parser.add_argument("--to", action="append", required=True, metavar="ssh://[user@]host[:port]/path",
                        help="a board and the directory edgemeta manages there (repeatable: several hosts)")
    if command == "deploy":
        parser.add_argument("--device", help="a board profile (edgemeta device list) or a profile .json: refuse "
                                             "before uploading when the adapter would not fit its memory budget")
        parser.add_argument("--classes", type=int, default=100,
                            help="classes to plan for when the board has no store yet (default 100)")
        parser.add_argument("--shots", type=int, default=5, help="shots per class to plan for (default 5)")
        parser.add_argument("--drop-classes", action="store_true",
                            help="on a model upgrade, deploy even though the board's classes cannot be re-enrolled "
                                 "(no kept support images): the new version starts without them")
        parser.add_argument("--keep", type=int, default=3, help="versions kept on the board (default 3, at least 2)")
        parser.add_argument("--limit-rate", type=parse_rate, metavar="BYTES/S",
                            help="upload at most this fast, e.g. 500K or 2M (a slow or shared link)")
    if command == "rollback":
        parser.add_argument("--version", help="switch to this version id instead of the previous one")
    if command in ("deploy", "rollback"):
        parser.add_argument("--before-switch", default="", metavar="CMD",
                            help="shell command run on the board before the switch (on a model upgrade, before "
                                 "its store is read), e.g. 'sudo systemctl stop edgemeta-adapter'; if it fails "
                                 "nothing is switched")
        parser.add_argument("--after-switch", default="", metavar="CMD",
                            help="shell command run on the board after the switch (and after a refused one if "
                                 "--before-switch ran), e.g. 'sudo systemctl start edgemeta-adapter'")
    if command == "status":
        parser.add_argument("--verify", action="store_true",
                            help="re-hash the current version's files on the board and check the whole store")
    parser.add_argument("--identity", "-i", help="ssh private key file")
    parser.add_argument("--ssh-config", "-F", help="ssh client configuration file")
    parser.add_argument("--ssh-option", "-o", action="append", default=[], metavar="KEY=VALUE",
                        help=f"an ssh_config option, repeatable (more raw ssh arguments: ${ENV_SSH_OPTIONS})")
    parser.add_argument("--connect-timeout", type=int, default=10, help="seconds (default 10)")
    parser.add_argument("--parallel", type=int, default=4, help="hosts handled at once (default 4)")
    parser.add_argument("--json", action="store_true", help="print the per-host results as JSON")


def run_from_args(args: argparse.Namespace) -> int:
    """Runs the command `add_arguments` set up; prints a per-host table (or JSON). 0 when every host
    succeeded, 1 when one failed, 2 for bad arguments."""
    command = args.deploy_command
    ssh = SSHOptions.from_env(identity=args.identity, config=args.ssh_config, options=tuple(args.ssh_option),
                              connect_timeout=args.connect_timeout)
    log = (lambda text: print(text, file=sys.stderr, flush=True)) if args.json else (lambda text: print(text, flush=True))
    try:
        if command == "deploy":
            results = deploy(args.bundle, args.to, device=args.device, classes=args.classes, shots=args.shots,
                             drop_classes=args.drop_classes, keep=args.keep, ssh=ssh, rate=args.limit_rate,
                             before_switch=args.before_switch, after_switch=args.after_switch,
                             parallel=args.parallel, log=log)
        elif command == "rollback":
            results = rollback(args.to, version=args.version, ssh=ssh, before_switch=args.before_switch,
                               after_switch=args.after_switch, parallel=args.parallel, log=log)
        else:
            results = status(args.to, ssh=ssh, verify=args.verify, parallel=args.parallel)
    except (ValueError, FileNotFoundError) as e:
        print(f"edgemeta {command}: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        print(format_results(results))
    return 0 if all(r.ok for r in results) else 1


def format_results(results: Sequence[HostResult]) -> str:
    """The per-host table: host, ok/FAILED, version, message."""
    rows = [("HOST", "RESULT", "VERSION", "MESSAGE")]
    rows += [(r.target, "ok" if r.ok else "FAILED", r.version or "-", r.message) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths)) + "  " + row[3] for row in rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgemeta.deploy", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for command, text in (("deploy", "deploy a bundle to boards"), ("rollback", "switch boards back"),
                          ("status", "show what runs where")):
        add_arguments(sub.add_parser(command, help=text), command)
    return run_from_args(parser.parse_args(argv))


"""`deploy`, `rollback` and `status` on every target: one `HostResult` per host, hosts handled in
parallel and independently, the --before-switch / --after-switch hooks, and on a model upgrade the
board's store re-enrolled with the new model.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgemeta.deploy.ssh import Board, DeployError, SSHOptions, Target, script
from edgemeta.deploy.state import (
    PENDING_STORE,
    SAVED_STORE,
    STORE_FILE,
    SUMS_FILE,
    BoardState,
    fetch_store_header,
    load_store_bytes,
    new_version_id,
    to_prune,
)
from edgemeta.format.checksum import sha256_file, sha256_hex


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


def _inspect(target: Target, ssh: SSHOptions, mode: str, say: Log) -> tuple[Board, BoardState]:
    """The board and what it holds (`mode` "deploy" or "rollback"), saying when an interrupted switch
    was finished there."""
    board = Board(target, ssh)
    state = BoardState.inspect(board, mode)
    if state.rolled_forward:
        say(f"finished an interrupted switch: moved the store of {state.rolled_forward} into place")
    for warning in state.warnings():
        say(warning)
    return board, state


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
        board, state = _inspect(target, ssh, "deploy", say)
        if state.cleaned:
            say(f"removed unfinished upload(s) {', '.join(state.cleaned)}")
        header = fetch_store_header(board) if state.store_sha256 else None
        fit = fit_check(header)
        say(fit)
        upgrade = header is not None and header.get("model_sha256") != manifest.model_sha256
        if upgrade and header.get("keep_support") != "images" and not drop_classes:
            raise DeployError(_cannot_reenroll(len(header.get("labels", [])), len(header.get("labels", [])),
                                               header.get("keep_support"), header.get("labels", [])))
        details: dict[str, Any] = {"fit": fit, "previous": state.current, "model_sha256": manifest.model_sha256}
        version = new_version_id(manifest.model_sha256, state.versions)
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
                old = load_store_bytes(data, f"{target}/{STORE_FILE}")
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
            prune = to_prune(state.versions, version, state.current, keep)
            out = hooks.switch(script("switch"), target.path, "deploy", version, state.current or "", store_action,
                               store_sha, after_switch, hooks.restart, note, sha256_file(sums_path), pending_sha,
                               *prune)
        say(f"verified {out['verified'][0]} file(s) on the board; current -> versions/{version}")
        warnings = state.warnings() + out.get("warning", [])
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
    """Every regular file of the bundle (relative names, sorted), hidden ones excepted. A symbolic link is
    refused, never followed: one pointing at a private key would be uploaded as a plain file."""
    files = []
    for path in sorted(bundle.rglob("*")):
        rel = path.relative_to(bundle).as_posix()
        if any(part.startswith(".") for part in rel.split("/")):
            continue
        if path.is_symlink():
            raise ValueError(f"The bundle holds a symbolic link, which deploy does not follow: {rel!r} -> "
                             f"{os.readlink(path)!r}. Copy the file itself into the bundle. Received bundle {bundle}")
        if not path.is_file():
            continue
        if "\n" in rel or rel in (SUMS_FILE, PENDING_STORE, SAVED_STORE):
            raise ValueError(f"The bundle holds a file deploy reserves or cannot name: {rel!r}. Received bundle {bundle}")
        files.append(rel)
    return files


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
        board, state = _inspect(target, ssh, "rollback", say)
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
        if goal in state.bad_manifests:
            raise DeployError(f"Version {goal} cannot be rolled back to: {state.bad_manifests[goal]}")
        old_model, new_model = state.model_of(state.current), state.model_of(goal)
        store_action = "keep"
        header = fetch_store_header(board) if state.store_sha256 else None
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
            store_sha = (board.run(script("store_sha"), target.path).get("store_sha256") or [""])[0]
            out = hooks.switch(script("switch"), target.path, "rollback", goal, state.current, store_action,
                               store_sha, after_switch, hooks.restart, note, "", pending_sha)
        say(f"current -> versions/{goal} (was {state.current}); {note}")
        warnings = state.warnings() + out.get("warning", [])
        return HostResult(str(target), True, goal, f"rolled back from {state.current} ({note})"
                          + "".join(f"; {w}" for w in warnings), {"previous": state.current, "warnings": warnings})

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
        warnings = state.warnings()
        if state.root is None or state.current is None:
            return HostResult(str(target), True, None, "nothing deployed" + "".join(f"; {w}" for w in warnings),
                              {"versions": state.versions, "warnings": warnings})
        manifest = state.manifests.get(state.current, {})
        model = manifest.get("model_sha256")
        details: dict[str, Any] = {
            "model_sha256": model, "quantization": manifest.get("quantization", {}).get("scheme"),
            "embedding_size": manifest.get("embedding_size"), "versions": state.versions,
            "previous": state.previous(), "last_switch": "\t".join(state.history[-1]) if state.history else None,
            "store": None, "warnings": warnings,
        }
        message = f"model {str(model)[:12]} ({details['quantization']})"
        if state.store_sha256:
            header = fetch_store_header(board)
            store = {"classes": len(header.get("labels", [])), "model_sha256": header.get("model_sha256"),
                     "keep_support": header.get("keep_support"), "matches_model": header.get("model_sha256") == model,
                     "sha256": state.store_sha256}
            if verify:
                loaded = load_store_bytes(board.read(STORE_FILE), f"{target}/{STORE_FILE}")
                store["checked"] = True
                store["classes"] = len(loaded)
            details["store"] = store
            message += f"; store: {store['classes']} classes, images kept: {store['keep_support'] == 'images'}"
            if not store["matches_model"]:
                message += "; STORE TAUGHT WITH ANOTHER MODEL (the adapter will refuse it)"
        else:
            message += "; no store"
        if verify:
            out = board.run(script("verify_current"), target.path, timeout=600)
            if out.get("verify_failed"):
                return HostResult(str(target), False, state.current,
                                  f"files of {state.current} do not match their SHA256SUMS: {out['verify_failed']}", details)
            details["verified"] = int(out["verified"][0])
            message += f"; {details['verified']} file(s) verified"
        return HostResult(str(target), True, state.current, message + "".join(f"; {w}" for w in warnings), details)

    return _per_host(targets, work, log, parallel)

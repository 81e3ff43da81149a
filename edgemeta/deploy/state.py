"""What a board holds, as deploy, rollback and status see it: its versions, `current`, history and store.

Board layout under the target's path (docs/deploy.md has the protocol and its crash windows):

    versions/<id>/            one deployed bundle (id: UTC time + the model's short sha256), plus
                              SHA256SUMS, and taught.store.saved: the store that was live under it
    versions/<id>.partial/    an upload in progress (never current; removed by the next deploy)
    current -> versions/<id>  the running version, switched with a rename
    state/taught.store        what the board was taught (the adapter's --state file)
    history                   one line per switch: time, action, to, from, note
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from edgemeta.deploy.ssh import Board, DeployError, script

STORE_FILE = "state/taught.store"
PENDING_STORE = "taught.store.pending"  # a version's store, uploaded, not yet live
SAVED_STORE = "taught.store.saved"  # the store that was live while the version ran
SUMS_FILE = "SHA256SUMS"
HEADER_PROBE_BYTES = 65536  # the store's JSON header (labels included) fits in this for ~3000 classes


@dataclass
class BoardState:
    """What `scripts/inspect.sh` found."""

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
        out = board.run(script("inspect"), board.target.path, mode, timeout=120)
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


# -- the board's store ----------------------------------------------------------------------------
def _store_header(data: bytes) -> dict | None:
    """The JSON header of a version-2 store file from its first bytes; None when more bytes are needed
    or the file is of another format (then the whole file is read)."""
    from edgemeta.runtime.store import StoreError, read_header

    try:
        return read_header(data)[0]
    except StoreError:
        return None


def fetch_store_header(board: Board) -> dict:
    """The board's store header: model_sha256, labels, keep_support, prototype_dtype, embedding_size."""
    from edgemeta.runtime.store import MAGIC

    data = board.read(STORE_FILE, HEADER_PROBE_BYTES)
    header = _store_header(data)
    if header is None and data[:8] == MAGIC and len(data) >= 12:
        header = _store_header(board.read(STORE_FILE, 12 + int.from_bytes(data[8:12], "little")))
    if header is None:  # a version-1 store or a damaged one: load it whole, which checks it
        store = load_store_bytes(board.read(STORE_FILE), f"{board.target}/{STORE_FILE}")
        header = {"model_sha256": store.model_sha256, "labels": store.labels, "keep_support": store.keep_support,
                  "prototype_dtype": store.prototype_dtype, "embedding_size": store.embedding_size}
    return header


def load_store_bytes(data: bytes, source: str):
    """A `PrototypeStore` from fetched bytes (checked: magic, version, checksum)."""
    from edgemeta.runtime.store import PrototypeStore, StoreError

    with tempfile.TemporaryDirectory(prefix="edgemeta-deploy-") as tmp:
        path = Path(tmp) / "taught.store"
        path.write_bytes(data)
        try:
            return PrototypeStore.load(path)
        except StoreError as e:
            raise DeployError(f"The board's store {source} cannot be read: {e}") from e


# -- version ids and pruning ----------------------------------------------------------------------
def new_version_id(model_sha256: str, existing: Sequence[str]) -> str:
    """The workstation's UTC time and the model's short sha256 (`-2`, `-3` appended if taken)."""
    base = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + model_sha256[:12]
    version, n = base, 2
    while version in existing:
        version, n = f"{base}-{n}", n + 1
    return version


def to_prune(versions: Sequence[str], new: str, current: str | None, keep: int) -> list[str]:
    """Versions to delete after switching to `new`: `keep` survive, `new` and `current` (which becomes the
    previous one) always, then the newest others. Version ids start with their UTC time: they sort by age."""
    survivors = {new} | ({current} if current else set())
    for v in sorted(versions, reverse=True):
        if len(survivors) >= keep:
            break
        survivors.add(v)
    return [v for v in versions if v not in survivors]

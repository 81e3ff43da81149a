"""What a board holds, as deploy, rollback and status see it: its versions, `current`, history and store.

Board layout under the target's path (docs/deploy.md has the protocol and its crash windows):

    versions/<id>/            one deployed bundle (id: UTC time + the model's short sha256), plus
                              SHA256SUMS, and taught.store.saved: the store that was live under it
    versions/<id>.partial/    an upload in progress (never current; removed by the next deploy)
    versions/<anything else>  not deploy's: reported, never used, pruned or removed (see VERSION_ID)
    current -> versions/<id>  the running version, switched with a rename
    state/taught.store        what the board was taught (the adapter's --state file)
    history                   one line per switch: time, action, to, from, note
"""

from __future__ import annotations

import json
import re
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
# A version id as `new_version_id` makes it; scripts/inspect.sh and switch.sh test names with the same pattern.
# A board's listing is trusted only for such names: any other entry under versions/ (a newline, a space,
# shell characters, someone's backup) is reported and left alone, so it can neither forge lines of the
# listing nor be pruned.
VERSION_ID = re.compile(r"[0-9]{8}T[0-9]{6}Z-[0-9a-f]{12}(?:-[0-9]+)?")


def is_version_id(name: str) -> bool:
    """Whether `name` is a version id deploy makes (`YYYYMMDDTHHMMSSZ-<12 hex>[-N]`)."""
    return isinstance(name, str) and VERSION_ID.fullmatch(name) is not None


def decode_name(hex_name: str) -> str:
    """A board entry's name, sent hex-encoded by the scripts (so that no byte of it can start a new line)."""
    try:
        return bytes.fromhex(hex_name).decode("utf-8", "backslashreplace")
    except ValueError:
        return f"<undecodable {hex_name[:64]!r}>"


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
    # Entries under versions/ that deploy did not make (decoded names), and versions whose manifest a
    # reader refuses (version -> why): both are left alone and reported.
    odd: list[str] = field(default_factory=list)
    bad_manifests: dict[str, str] = field(default_factory=dict)

    @classmethod
    def inspect(cls, board: Board, mode: str) -> BoardState:
        from edgemeta.format.bundle import BundleError, parse_manifest

        out = board.run(script("inspect"), board.target.path, mode, timeout=120)
        if out.get("missing"):
            raise DeployError(f"The board lacks {out['missing']} (needs a POSIX shell and GNU coreutils).")
        if out.get("current_not_link"):
            raise DeployError(f"{board.target.path}/current exists but is not a symbolic link; edgemeta deploy "
                              "manages it. Move it away first.")
        if out.get("current_odd"):
            raise DeployError(f"{board.target.path}/current points to {decode_name(out['current_odd'][0])!r}, not to a "
                              "version deploy made (versions/YYYYMMDDTHHMMSSZ-<model sha256>). Point it at one of "
                              f"{sorted(v for v in out.get('version', []) if is_version_id(v))} or remove it.")
        # The script lists only names that pass its own test; checked again here, as nothing from the board is trusted.
        versions = sorted(v for v in out.get("version", []) if is_version_id(v))
        odd = [decode_name(h) for h in out.get("odd", [])] + [v for v in out.get("version", []) if not is_version_id(v)]
        manifests, bad_manifests = {}, {}
        for line in out.get("manifest", []):
            version, _, text = line.partition(" ")
            if version not in versions:
                continue
            try:
                parse_manifest(text, f"versions/{version}/manifest.json")
            except BundleError as e:
                bad_manifests[version] = str(e)
            else:
                manifests[version] = json.loads(text)
        current = (out.get("current") or [None])[0]
        if current is not None and not is_version_id(current):
            raise DeployError(f"{board.target.path}/current points to {current!r}, not to a version deploy made.")
        root = (out.get("root") or [""])[0] or None
        return cls(root=root, current=current, versions=versions, manifests=manifests,
                   saved_stores={v for v in out.get("saved_store", []) if is_version_id(v)},
                   history=[h.split("\t") for h in out.get("history", [])],
                   store_sha256=(out.get("store_sha256") or [None])[0],
                   rolled_forward=(out.get("rolled_forward") or [None])[0],
                   cleaned=[c for c in out.get("cleaned", []) if is_version_id(c.removesuffix(".partial"))],
                   odd=odd, bad_manifests=bad_manifests)

    def warnings(self) -> list[str]:
        """What the listing held that deploy ignored, one line each (for the host's result)."""
        found = []
        if self.odd:
            more = f" and {len(self.odd) - 5} more" if len(self.odd) > 5 else ""
            shown = ", ".join(repr(name) for name in self.odd[:5]) + more
            found.append(f"ignored {len(self.odd)} entr{'y' if len(self.odd) == 1 else 'ies'} under versions/ that deploy "
                         f"did not make (left in place, never pruned): {shown}")
        for version, why in sorted(self.bad_manifests.items()):
            found.append(f"versions/{version} has a manifest this edgemeta refuses: {why}")
        return found

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
    if not is_version_id(base):  # the board would not list it: refuse before uploading
        raise ValueError(f"model_sha256 must be a lowercase hex SHA-256. Received: {model_sha256!r}")
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

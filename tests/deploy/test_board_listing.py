"""A board's `versions/` listing is parsed without trusting names: entries deploy did not make (a newline, a
space, shell characters, someone's backup) are reported and left alone, and deploys keep succeeding."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from edgemeta import deploy as dp
from edgemeta.deploy.ssh import _parse_lines
from edgemeta.deploy.state import BoardState, is_version_id, new_version_id, to_prune
from edgemeta.presets import preset_path

PRESET = Path(preset_path("omniglot"))
SHA = json.loads((PRESET / "manifest.json").read_text())["model_sha256"][:12]  # the names deploy gives the preset
V1, V2, V3 = f"20260101T000000Z-{SHA}", f"20260102T000000Z-{SHA}", f"20260102T000000Z-{SHA}-2"
# Names deploy never makes. The first one, a leading newline, was listed as the version "" and pruned as
# `rm -rf versions/`: the board lost every version, the new one included.
ODD = ["\nx", "odd\nname", "has space", "$(touch pwned)", "`touch pwned`; rm -rf ..", "-rf", "backup.partial",
       f"20260101T000000Z-{SHA.upper()}", f"20260101T000000Z-{SHA}\n", f"version=20260101T000000Z-{SHA}"]


class LocalBoard(dp.Board):
    """A board that is this machine: the scripts run with the local `sh`, exactly as sshd would run them."""

    def __init__(self, root: Path) -> None:
        super().__init__(dp.Target("localhost", str(root)), dp.SSHOptions())

    def run(self, script: str, *args: str, timeout: float | None = 600) -> dict[str, list[str]]:
        result = subprocess.run(["sh", "-c", script, "edgemeta", *args], capture_output=True, timeout=timeout)
        out = _parse_lines(result.stdout.decode(errors="replace"))
        if result.returncode != 0:
            raise dp.DeployError("; ".join(out.get("error", [])) or result.stderr.decode(errors="replace"))
        return out


class ListingBoard(dp.Board):
    """A board whose inspect output is `lines`: a crafted listing."""

    def __init__(self, lines: str) -> None:
        super().__init__(dp.Target("crafted", "/srv/edgemeta"), dp.SSHOptions())
        self.lines = lines

    def run(self, script: str, *args: str, timeout: float | None = 600) -> dict[str, list[str]]:
        return _parse_lines(self.lines)


def board_with_odd_entries(root: Path) -> Path:
    versions = root / "versions"
    for version in (V1, V2):
        (versions / version).mkdir(parents=True)
        for name in ("manifest.json", "model.tflite"):
            (versions / version / name).write_bytes((PRESET / name).read_bytes())
    (versions / f"{V3}.partial").mkdir()  # an upload a cut deploy left: deploy's own, cleaned
    for name in ODD:
        (versions / name).mkdir()
        (versions / name / "keep.txt").write_text("someone's")
    (versions / "README").write_text("a file, not a version")
    os.symlink(versions / V1, versions / f"20260103T000000Z-{SHA}")  # deploy never links a version
    os.symlink(f"versions/{V1}", root / "current")
    return root


def hex_of(name: str) -> str:
    return name.encode().hex()


def test_version_ids_follow_the_scheme_deploy_makes():
    for good in (V1, V3, "20991231T235959Z-0123456789ab-17"):
        assert is_version_id(good), good
    for bad in ODD + ["", f"{V1}.partial", f"{V1}-", f"{V1}-2a", f"{V1}-2-3", V1[:-1], "٢" + V1[1:], None]:
        assert not is_version_id(bad), bad
    assert is_version_id(new_version_id("e82902fc6d6a" + "0" * 52, [V1]))
    assert new_version_id("e82902fc6d6a" + "0" * 52, []).endswith("-e82902fc6d6a")
    with pytest.raises(ValueError, match="model_sha256 must be a lowercase hex SHA-256. Received: 'not hex'"):
        new_version_id("not hex", [])


def test_the_inspect_script_lists_only_names_deploy_made(tmp_path):
    root = board_with_odd_entries(tmp_path / "board")
    state = BoardState.inspect(LocalBoard(root), "deploy")
    assert state.current == V1 and state.versions == [V1, V2]
    assert state.cleaned == [f"{V3}.partial"] and not (root / "versions" / f"{V3}.partial").exists()
    assert sorted(state.odd) == sorted(ODD + ["README", f"20260103T000000Z-{SHA}"])
    assert set(state.manifests) == {V1, V2} and state.manifests[V1]["model_sha256"].startswith(SHA)
    [warning] = state.warnings()
    assert warning.startswith("ignored 12 entries under versions/ that deploy did not make (left in place, never pruned): ")
    assert "\n" not in warning and "and 7 more" in warning
    # Nothing was run, moved or removed: every odd entry is as it was.
    assert not (root / "pwned").exists() and not (root / "versions" / "pwned").exists()
    for name in ODD:
        assert (root / "versions" / name / "keep.txt").read_text() == "someone's"
    assert to_prune(state.versions, V3, state.current, keep=2) == [V2]  # never an odd name


def test_a_current_link_deploy_did_not_make_is_refused(tmp_path):
    root = board_with_odd_entries(tmp_path / "board")
    (root / "current").unlink()
    os.symlink("versions/has space", root / "current")
    for mode in ("status", "deploy"):
        with pytest.raises(dp.DeployError, match=r"current points to 'versions/has space', not to a version deploy made"):
            BoardState.inspect(LocalBoard(root), mode)
    assert (root / "versions" / "has space" / "keep.txt").is_file()


def test_a_crafted_listing_is_not_trusted():
    nan_manifest = json.loads((PRESET / "manifest.json").read_text())
    nan_manifest["open_set"]["threshold"] = float("nan")
    deep = "[" * 5000 + "]" * 5000
    lines = "\n".join([
        "root=/srv/edgemeta", f"current={V2}", f"version={V1}", f"version={V2}", "version=", "version=..",
        "version=../../etc", f"odd={hex_of('a b')}", "odd=zz-not-hex",
        f"manifest={V1} {json.dumps(nan_manifest)}", f"manifest={V2} {deep}", "manifest=.. {}",
        f"saved_store={V1}", "saved_store=..", f"cleaned={V3}.partial", "cleaned=../x.partial",
    ])
    state = BoardState.inspect(ListingBoard(lines), "status")
    assert state.versions == [V1, V2] and state.current == V2 and state.saved_stores == {V1}
    assert state.cleaned == [f"{V3}.partial"] and state.manifests == {}
    assert state.odd == ["a b", "<undecodable 'zz-not-hex'>", "", "..", "../../etc"]
    warnings = state.warnings()
    assert "ignored 5 entries" in warnings[0]
    assert f"versions/{V1} has a manifest this edgemeta refuses: versions/{V1}/manifest.json: open_set.threshold must be" \
           in warnings[1]
    assert "nested deeper than 16 levels" in warnings[2]
    with pytest.raises(dp.DeployError, match="current points to '../x', not to a version deploy made"):
        BoardState.inspect(ListingBoard("root=/srv/edgemeta\ncurrent=../x"), "deploy")


def test_the_switch_script_refuses_to_prune_a_name_it_did_not_make(tmp_path):
    root = board_with_odd_entries(tmp_path / "board")
    board = LocalBoard(root)
    before = sorted(os.listdir(root / "versions"))
    for prune in ("", "..", "has space", "\nx", f"{V1}/../.."):
        with pytest.raises(dp.DeployError, match="refusing to prune an entry deploy did not name; nothing was switched"):
            board.run(dp.script("switch"), str(root), "rollback", V2, V1, "keep", "", "", "", "test", "", "", prune)
        assert os.readlink(root / "current") == f"versions/{V1}" and sorted(os.listdir(root / "versions")) == before
    with pytest.raises(dp.DeployError, match="refusing to switch to a version deploy did not name"):
        board.run(dp.script("switch"), str(root), "rollback", "has space", V1, "keep", "", "", "", "test", "", "")
    out = board.run(dp.script("switch"), str(root), "rollback", V2, V1, "keep", "", "", "", "test", "", "")
    assert out["switched"] == [V2] and os.readlink(root / "current") == f"versions/{V2}"


def test_odd_entries_on_a_real_board_are_ignored_and_deploys_still_succeed(server, tmp_path):
    board = tmp_path / "board"
    ssh = dp.SSHOptions(config=str(server.client_config))
    [first] = dp.deploy(PRESET, [server.url(board)], ssh=ssh, log=None)
    assert first.ok, first.message
    for name in ODD:
        (board / "versions" / name).mkdir()
        (board / "versions" / name / "keep.txt").write_text("someone's")
    said: list[str] = []
    results = [dp.deploy(PRESET, [server.url(board)], keep=2, ssh=ssh, log=said.append)[0] for _ in range(3)]
    for result in results:
        assert result.ok, result.message  # before: FAILED after switching, or every version removed
        assert "ignored 10 entries under versions/ that deploy did not make" in result.message
        assert "\n" not in result.message
    assert any("ignored 10 entries" in line for line in said)
    kept = sorted(v for v in os.listdir(board / "versions") if is_version_id(v))
    assert len(kept) == 2 and os.readlink(board / "current") == f"versions/{results[-1].version}"
    assert results[-1].details["pruned"] and all(is_version_id(v) for v in results[-1].details["pruned"])
    for name in ODD:
        assert (board / "versions" / name / "keep.txt").read_text() == "someone's"
    assert not (board / "pwned").exists() and not (board / "versions" / "pwned").exists()

    [shown] = dp.status([server.url(board)], ssh=ssh, verify=True)
    assert shown.ok and shown.version == results[-1].version and shown.details["versions"] == kept
    assert "ignored 10 entries" in shown.details["warnings"][0] and shown.details["verified"] == 2
    [back] = dp.rollback([server.url(board)], ssh=ssh, log=None)
    assert back.ok and back.version == results[-2].version, back.message
    assert "ignored 10 entries" in back.message


def test_the_switch_script_refuses_to_replace_a_store_a_running_adapter_writes(tmp_path):
    from edgemeta.runtime.lock import StoreLock

    root = board_with_odd_entries(tmp_path / "board")
    (root / "state").mkdir(exist_ok=True)
    store = root / "state" / "taught.store"
    store.write_bytes(b"what the running adapter taught")
    board = LocalBoard(root)
    with StoreLock.acquire(store):  # as a running service holds it
        with pytest.raises(dp.DeployError, match=rf"a running adapter \(PID {os.getpid()}\) still writes"):
            board.run(dp.script("switch"), str(root), "rollback", V2, V1, "replace", "", "", "", "test", "", "")
    assert os.readlink(root / "current") == f"versions/{V1}" and store.read_bytes() == b"what the running adapter taught"

"""`edgemeta deploy | rollback | status` against a real OpenSSH server on loopback, with the real ssh client
and real files: verify, switch, roll back, survive a cut transfer, keep 20 classes across a model upgrade."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from fnmatch import fnmatch
from pathlib import Path

import numpy as np
import pytest

from edgemeta import deploy as dp
from edgemeta.format.bundle import read_bundle
from edgemeta.format.units import parse_rate
from edgemeta.runtime import Embedder, FewShotAdapter, PrototypeStore
from tests.harness import ROOT, free_port


@pytest.fixture(scope="module")
def bundles(digits_run):
    """Two bundles with different models: "old" (int8) and "new" (float32), an upgrade between them."""
    old, new = Path(digits_run["bundles"]["int8"]), Path(digits_run["bundles"]["float32"])
    assert read_bundle(old)[1].model_sha256 != read_bundle(new)[1].model_sha256
    return {"old": old, "new": new}


def cli(server, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m edgemeta.deploy ARGS` as a real process, with the test server's client config."""
    return subprocess.run([sys.executable, "-m", "edgemeta.deploy", *map(str, args), "-F", str(server.client_config)],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def ssh_options(server) -> dp.SSHOptions:
    return dp.SSHOptions(config=str(server.client_config))


def deployed(server, bundle: Path, board: Path) -> str:
    """Deploys `bundle` to the directory `board` in this process; the version now current there."""
    [result] = dp.deploy(bundle, [server.url(board)], ssh=ssh_options(server), log=None)
    assert result.ok, result.message
    return current(board)


def current(board: Path) -> str:
    link = os.readlink(board / "current")
    assert link.startswith("versions/")
    return link.removeprefix("versions/")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_same_files(version_dir: Path, bundle: Path) -> None:
    for name in ("model.tflite", "manifest.json"):
        assert sha(version_dir / name) == sha(bundle / name), name


def test_target_urls():
    t = dp.Target.parse("ssh://pi@raspberrypi.local:2222/var/lib/edgemeta/")
    assert (t.user, t.host, t.port, t.path) == ("pi", "raspberrypi.local", 2222, "/var/lib/edgemeta")
    assert dp.Target.parse("ssh://board/~/edgemeta").path == "edgemeta"  # relative to the home directory
    assert str(dp.Target.parse("ssh://u@h:22/~/x")) == "ssh://u@h:22/~/x"
    for bad in ("http://h/x", "ssh://h", "ssh://h/", "ssh://h:99999/x", "ssh://-oProxyCommand=x/y", "/local/dir"):
        with pytest.raises(ValueError, match="Expected ssh://"):
            dp.Target.parse(bad)
    # A malformed target is refused before any host is touched, with exit status 2.
    assert dp.main(["status", "--to", "ssh://ok/x", "--to", "scp://h/x"]) == 2


def test_board_scripts_parse_and_ship_as_package_data():
    """Every script the board runs parses as POSIX sh, and pyproject's package-data ships it."""
    tomllib = pytest.importorskip("tomllib")
    package = ROOT / "edgemeta" / "deploy"
    scripts = sorted((package / "scripts").glob("*.sh"))
    assert {p.stem for p in scripts} >= {"inspect", "switch", "store_sha", "verify_current"}
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["edgemeta.deploy"]
    for path in scripts:
        parsed = subprocess.run(["sh", "-n", str(path)], capture_output=True, text=True, timeout=30)
        assert parsed.returncode == 0, f"{path.name}: {parsed.stderr}"
        assert any(fnmatch(path.relative_to(package).as_posix(), p) for p in patterns), (path, patterns)
        sent = dp.script(path.stem)  # with the shared functions put in, as the board receives it
        assert "# include" not in sent and (sent == path.read_text()) == ("# include" not in path.read_text())
        parsed = subprocess.run(["sh", "-n", "-c", sent], capture_output=True, text=True, timeout=30)
        assert parsed.returncode == 0, f"{path.name} as sent: {parsed.stderr}"


def test_limit_rate_is_read_by_the_shared_rate_parser(capsys):
    parser = argparse.ArgumentParser()
    dp.add_arguments(parser, "deploy")
    assert parser.parse_args(["b", "--to", "ssh://h/x", "--limit-rate", "2M/s"]).limit_rate == 2 << 20
    with pytest.raises(SystemExit):
        parser.parse_args(["b", "--to", "ssh://h/x", "--limit-rate", "0"])
    with pytest.raises(ValueError) as shared:
        parse_rate("0", "--limit-rate")
    assert f"argument --limit-rate: {shared.value}" in capsys.readouterr().err


def test_deploy_verify_switch_status_rollback(server, bundles, tmp_path):
    board = tmp_path / "board"
    first = cli(server, "deploy", bundles["old"], "--to", server.url(board), "--device", "raspberry-pi-4")
    assert first.returncode == 0, first.stdout + first.stderr
    v1 = current(board)
    assert "fits raspberry-pi-4" in first.stdout and "ok" in first.stdout and v1 in first.stdout
    assert_same_files(board / "versions" / v1, bundles["old"])
    assert (board / "versions" / v1 / "SHA256SUMS").read_text().count("\n") == 2
    assert v1.endswith(read_bundle(bundles["old"])[1].model_sha256[:12])

    second = cli(server, "deploy", bundles["new"], "--to", server.url(board))
    assert second.returncode == 0, second.stdout + second.stderr
    v2 = current(board)
    assert v2 != v1 and "verified 2 file(s) on the board" in second.stdout
    assert_same_files(board / "versions" / v2, bundles["new"])
    assert_same_files(board / "versions" / v1, bundles["old"])  # the previous version is kept, intact

    shown = cli(server, "status", "--to", server.url(board), "--json", "--verify")
    assert shown.returncode == 0, shown.stderr
    [row] = json.loads(shown.stdout)
    assert row["ok"] and row["version"] == v2 and row["previous"] == v1 and row["verified"] == 2
    assert row["model_sha256"] == read_bundle(bundles["new"])[1].model_sha256
    assert row["quantization"] == "none" and row["versions"] == [v1, v2] and row["store"] is None

    back = cli(server, "rollback", "--to", server.url(board))
    assert back.returncode == 0, back.stdout + back.stderr
    assert current(board) == v1 and (board / "versions" / v2).is_dir()
    history = [line.split("\t") for line in (board / "history").read_text().splitlines()]
    assert [h[1:4] for h in history] == [["deploy", v1, "-"], ["deploy", v2, v1], ["rollback", v1, v2]]

    # A third version with --keep 2: the oldest one that is neither current nor previous goes.
    third = dp.deploy(bundles["new"], [server.url(board)], keep=2, ssh=ssh_options(server), log=None)
    assert third[0].ok, third[0].message
    v3 = current(board)
    assert sorted(p.name for p in (board / "versions").iterdir()) == sorted([v1, v3])
    assert third[0].details["pruned"] == [v2]


def test_corrupted_upload_is_not_switched(server, bundles, tmp_path):
    """The board re-hashes every file before the switch: a file damaged after upload stops it."""
    board_dir = tmp_path / "board"
    v1 = deployed(server, bundles["old"], board_dir)
    board = dp.Board(dp.Target.parse(server.url(board_dir)), ssh_options(server))
    partial = f"{board_dir}/versions/X.partial"
    board.run('mkdir -p "$1"', partial)
    sums = tmp_path / "SHA256SUMS"
    sums.write_text("".join(f"{sha(bundles['new'] / n)}  {n}\n" for n in ("manifest.json", "model.tflite")))
    for name, local in (("manifest.json", bundles["new"] / "manifest.json"),
                        ("model.tflite", bundles["new"] / "model.tflite"), ("SHA256SUMS", sums)):
        board.upload(local, f"{partial}/{name}")
    with open(board_dir / "versions" / "X.partial" / "model.tflite", "r+b") as f:  # one flipped byte
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(dp.DeployError, match="verification failed.*model.tflite: FAILED"):
        board.run(dp.script("switch"), str(board_dir), "deploy", "X", v1, "keep", "", "", "", "test", sha(sums), "")
    assert current(board_dir) == v1 and not (board_dir / "versions" / "X.partial").exists()
    assert not (board_dir / "versions" / "X").exists()


def test_transfer_cut_midway_leaves_previous_version(server, bundles, tmp_path):
    board = tmp_path / "board"
    v1 = deployed(server, bundles["old"], board)
    big = tmp_path / "big-bundle"
    big.mkdir()
    for name in ("model.tflite", "manifest.json"):
        (big / name).write_bytes((bundles["new"] / name).read_bytes())
    (big / "extra.bin").write_bytes(np.random.default_rng(0).bytes(12 << 20))  # 12 MB at 2 MB/s: ~6 s

    # The deploy process (and its ssh) killed with SIGKILL while extra.bin is on its way.
    proc = subprocess.Popen([sys.executable, "-m", "edgemeta.deploy", "deploy", str(big), "--to", server.url(board),
                             "--limit-rate", "2M", "-F", str(server.client_config)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    deadline, partial_file = time.monotonic() + 60, None
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            found = list((board / "versions").glob("*.partial/extra.bin"))
            if found and found[0].stat().st_size > (1 << 20):
                partial_file = found[0]
                break
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the group of the process started above: it and its ssh
        proc.wait(timeout=30)
    assert partial_file is not None, proc.stdout.read().decode()
    time.sleep(0.3)  # the board's `cat` sees the end of its input
    assert 0 < partial_file.stat().st_size < 12 << 20  # it really was cut mid-way
    assert current(board) == v1
    assert_same_files(board / "versions" / v1, bundles["old"])

    retry = cli(server, "deploy", big, "--to", server.url(board))
    assert retry.returncode == 0, retry.stdout + retry.stderr
    assert "removed unfinished upload" in retry.stdout
    v2 = current(board)
    assert v2 != v1 and not list((board / "versions").glob("*.partial"))
    assert sha(board / "versions" / v2 / "extra.bin") == sha(big / "extra.bin")


def _twenty_classes(digits_run) -> dict[str, list[np.ndarray]]:
    """20 classes of 5 raw digit images: two disjoint groups of each of the 10 digits."""
    classes = {}
    for ds in (digits_run["train"], digits_run["test"]):
        for c, name in enumerate(ds.class_names):
            idx = np.flatnonzero(ds.labels == c)[:10]
            classes[f"{name}a"] = [ds.raw[i] for i in idx[:5]]
            classes[f"{name}b"] = [ds.raw[i] for i in idx[5:]]
    assert len(classes) == 20
    return classes


def test_model_upgrade_keeps_twenty_classes(server, bundles, digits_run, tmp_path):
    board = tmp_path / "board"
    v1 = deployed(server, bundles["old"], board)
    classes = _twenty_classes(digits_run)
    # What the board's adapter taught under the old model (its --state file), keeping the images.
    taught = FewShotAdapter.from_bundle(board / "current", state=board / "state" / "taught.store", keep_support="images")
    for label, images in classes.items():
        taught.enroll(label, images)
    taught.close()  # the board's adapter stops (--before-switch) and lets go of the state's writer lock
    # The adapter saves its store as it stops (new bytes: the last-use clock moved), so the deploy must
    # read the store after --before-switch, else its "store changed meanwhile" check would refuse.
    at_exit = PrototypeStore.load(board / "state" / "taught.store")
    at_exit.touch(["3a"])
    at_exit.save(board / "store-saved-at-exit")
    old_bytes = (board / "store-saved-at-exit").read_bytes()
    assert old_bytes != (board / "state" / "taught.store").read_bytes()

    result = cli(server, "deploy", bundles["new"], "--to", server.url(board),
                 "--before-switch", f"mv {board}/store-saved-at-exit {board}/state/taught.store",
                 "--after-switch", f"touch {board}/adapter-started")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "re-enrolled 20 class(es) with the new model" in result.stdout
    assert (board / "adapter-started").exists()
    v2 = current(board)
    new_sha = read_bundle(bundles["new"])[1].model_sha256
    store = PrototypeStore.load(board / "state" / "taught.store", model_sha256=new_sha)
    assert sorted(store.labels) == sorted(classes) and store.keep_support == "images"
    assert all(store.count(label) == 5 and len(store.support(label)) == 5 for label in classes)

    # Re-embedded by the new model: the prototypes are what the new model computes from the same images.
    fresh = FewShotAdapter(Embedder.from_bundle(bundles["new"]), unknown_threshold=None)
    for label, images in classes.items():
        fresh.enroll(label, images)
    upgraded = FewShotAdapter.from_bundle(board / "current", state=board / "state" / "taught.store", read_only=True,
                                          unknown_threshold=None)
    labels, protos = upgraded.prototypes()
    fresh_labels, fresh_protos = fresh.prototypes()
    assert labels == fresh_labels
    np.testing.assert_allclose(protos, fresh_protos, rtol=1e-5, atol=1e-5)
    _, old_protos = taught.prototypes()
    assert not np.allclose(old_protos, protos, atol=1e-3)  # and not the old model's prototypes
    # Classifying each class's support images on the board's new adapter answers as the fresh one.
    queries = [image for images in classes.values() for image in images]
    truth = [label for label, images in classes.items() for _ in images]
    board_answers = [p.nearest for p in upgraded.classify(queries)]
    assert board_answers == [p.nearest for p in fresh.classify(queries)]
    # The digits model was meta-trained on 5 digits for 150 steps; the two groups of one digit blend.
    assert np.mean([a[:-1] == t[:-1] for a, t in zip(board_answers, truth)]) > 0.8

    shown = cli(server, "status", "--to", server.url(board), "--verify", "--json")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    [row] = json.loads(shown.stdout)
    assert row["verified"] == 2 and row["store"]["classes"] == 20 and row["store"]["matches_model"]

    # The old store is kept with the old version, and rollback brings back the store matching its model.
    assert (board / "versions" / v1 / "taught.store.saved").read_bytes() == old_bytes
    back = cli(server, "rollback", "--to", server.url(board))
    assert back.returncode == 0, back.stdout + back.stderr
    assert current(board) == v1 and "restored the store" in back.stdout
    assert (board / "state" / "taught.store").read_bytes() == old_bytes
    assert (board / "versions" / v2).is_dir()


def test_upgrade_without_kept_images_needs_drop_classes(server, bundles, digits_run, tmp_path):
    board = tmp_path / "board"
    v1 = deployed(server, bundles["old"], board)
    taught = FewShotAdapter.from_bundle(board / "current", state=board / "state" / "taught.store")  # no images kept
    for label, images in list(_twenty_classes(digits_run).items())[:3]:
        taught.enroll(label, images)
    taught.close()  # the board's adapter is stopped for the deploy
    before = (board / "state" / "taught.store").read_bytes()
    listing = sorted(p.name for p in (board / "versions").iterdir())

    refused = cli(server, "deploy", bundles["new"], "--to", server.url(board))
    assert refused.returncode == 1
    assert "--drop-classes" in refused.stdout and "FAILED" in refused.stdout
    assert current(board) == v1 and (board / "state" / "taught.store").read_bytes() == before
    assert sorted(p.name for p in (board / "versions").iterdir()) == listing  # nothing uploaded

    dropped = cli(server, "deploy", bundles["new"], "--to", server.url(board), "--drop-classes")
    assert dropped.returncode == 0, dropped.stdout + dropped.stderr
    new_sha = read_bundle(bundles["new"])[1].model_sha256
    assert len(PrototypeStore.load(board / "state" / "taught.store", model_sha256=new_sha)) == 0
    assert (board / "versions" / v1 / "taught.store.saved").read_bytes() == before  # kept for rollback


def test_several_hosts_each_get_a_result(server, bundles, tmp_path):
    good = [server.url(tmp_path / "a"), server.url(tmp_path / "b")]
    unreachable = f"ssh://{server.user}@127.0.0.1:{free_port()}/srv/edgemeta"  # nothing listens there
    result = cli(server, "deploy", bundles["old"], "--to", good[0], "--to", unreachable, "--to", good[1],
                 "--connect-timeout", "5", "--json")
    assert result.returncode == 1
    rows = json.loads(result.stdout)
    assert [r["target"] for r in rows] == [good[0], unreachable, good[1]]
    assert [r["ok"] for r in rows] == [True, False, True]
    assert "could not connect" in rows[1]["message"]
    for name, row in (("a", rows[0]), ("b", rows[2])):
        assert current(tmp_path / name) == row["version"]
        assert_same_files(tmp_path / name / "current", bundles["old"])


def test_fit_check_refuses_before_upload(server, bundles, tmp_path):
    profile = json.loads((ROOT / "edgemeta" / "profiles" / "raspberry-pi-zero-2-w.json").read_text())
    profile["memory_budget_mb"] = 4  # less than the runtime itself
    path = tmp_path / "tiny-board.json"
    path.write_text(json.dumps(profile))
    board = tmp_path / "board"
    result = cli(server, "deploy", bundles["old"], "--to", server.url(board), "--device", path)
    assert result.returncode == 1
    assert "does not fit tiny-board" in result.stdout and "Nothing was uploaded" in result.stdout
    assert not (board / "current").exists() and list((board / "versions").iterdir()) == []

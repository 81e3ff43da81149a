"""Bundle files are written readable by all (0o666 & ~umask: 0644 under umask 022), also over an older 0600 copy;
atomic writes elsewhere (the store) keep the mode of the file they replace."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import sys
from pathlib import Path

import pytest

from edgemeta.format.atomic import atomic_write
from edgemeta.format.bundle import MANIFEST_FILE, MODEL_FILE, read_bundle, update_provenance, write_bundle
from edgemeta.presets import preset_path

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def modes(directory: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in sorted(directory.iterdir())}


def a_bundle() -> tuple[bytes, object]:
    model_path, manifest = read_bundle(preset_path("omniglot"))
    return model_path.read_bytes(), manifest


def test_a_new_bundle_is_readable_by_all_under_the_usual_umask(tmp_path):
    model_bytes, manifest = a_bundle()
    with umask(0o022):
        write_bundle(tmp_path / "b", model_bytes, manifest)
    assert modes(tmp_path / "b") == {MANIFEST_FILE: 0o644, MODEL_FILE: 0o644}
    read_bundle(tmp_path / "b")  # and it is still a valid bundle


def test_rewriting_an_older_private_bundle_makes_it_readable(tmp_path):
    model_bytes, manifest = a_bundle()
    bundle = tmp_path / "b"
    with umask(0o022):
        write_bundle(bundle, model_bytes, manifest)
        for name in (MODEL_FILE, MANIFEST_FILE):  # as edgemeta wrote bundles until issue 18
            (bundle / name).chmod(0o600)
        write_bundle(bundle, model_bytes, manifest)
        assert modes(bundle) == {MANIFEST_FILE: 0o644, MODEL_FILE: 0o644}
        (bundle / MANIFEST_FILE).chmod(0o600)
        update_provenance(bundle, {"dataset": "omniglot", "note": "rewritten"})  # the manifest alone
        assert modes(bundle) == {MANIFEST_FILE: 0o644, MODEL_FILE: 0o644}
    assert read_bundle(bundle)[1].provenance["note"] == "rewritten"


def test_a_private_umask_is_respected(tmp_path):
    model_bytes, manifest = a_bundle()
    with umask(0o077):
        write_bundle(tmp_path / "b", model_bytes, manifest)
    assert modes(tmp_path / "b") == {MANIFEST_FILE: 0o600, MODEL_FILE: 0o600}


def test_other_atomic_writes_still_keep_the_mode_they_replace(tmp_path):
    # The store's writer (atomic_writer's default): a state its owner made private stays private.
    state = tmp_path / "taught.store"
    with umask(0o022):
        atomic_write(state, b"one")
        assert modes(tmp_path) == {"taught.store": 0o644}
        state.chmod(0o600)
        atomic_write(state, b"two")
        assert modes(tmp_path) == {"taught.store": 0o600} and state.read_bytes() == b"two"


def test_the_edge_tpu_files_added_to_a_bundle_are_readable_too(tmp_path, monkeypatch):
    from converters.edgetpu import COMPILED_FILE, COMPILER, compile_for_edgetpu

    # A stand-in for Coral's compiler: writes <stem>_edgetpu.tflite and its log where -o says, as the real one does.
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / COMPILER).write_text(f"""#!{sys.executable}
import shutil, sys
from pathlib import Path
if sys.argv[1:] == ["--version"]:
    print("Edge TPU Compiler version 0 (stand-in)")
    sys.exit(0)
out, source = Path(sys.argv[sys.argv.index("-o") + 1]), Path(sys.argv[-1])
shutil.copyfile(source, out / (source.stem + "_edgetpu.tflite"))
(out / (source.stem + "_edgetpu.log")).write_text("stand-in log\\n")
""")
    (tools / COMPILER).chmod(0o755)
    monkeypatch.setenv("PATH", f"{tools}{os.pathsep}{os.environ['PATH']}")
    bundle = tmp_path / "b"
    shutil.copytree(preset_path("omniglot"), bundle)
    with umask(0o022):
        (bundle / MANIFEST_FILE).chmod(0o600)
        for name in (COMPILED_FILE, "model_edgetpu.log"):  # left private by an earlier compile
            (bundle / name).write_bytes(b"old")
            (bundle / name).chmod(0o600)
        assert compile_for_edgetpu(bundle) == bundle / COMPILED_FILE
    assert modes(bundle) == {MANIFEST_FILE: 0o644, MODEL_FILE: 0o644, COMPILED_FILE: 0o644, "model_edgetpu.log": 0o644}
    assert read_bundle(bundle)[1].provenance["edgetpu"]["file"] == COMPILED_FILE

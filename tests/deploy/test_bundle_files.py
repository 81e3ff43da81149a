"""What deploy uploads from a bundle folder: regular files only; a symbolic link is refused, not followed."""

import os

import pytest

from edgemeta.deploy.actions import _bundle_files


def test_a_symlink_in_a_bundle_is_refused_not_followed(tmp_path):
    secret = tmp_path / "id_ed25519"
    secret.write_text("PRIVATE KEY")
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "model.tflite").write_bytes(b"model")
    (bundle / "manifest.json").write_text("{}")
    assert _bundle_files(bundle) == ["manifest.json", "model.tflite"]
    os.symlink(secret, bundle / "notes.txt")
    with pytest.raises(ValueError, match=r"symbolic link, which deploy does not follow: 'notes.txt' -> .*id_ed25519"):
        _bundle_files(bundle)
    (bundle / "notes.txt").unlink()
    os.symlink(tmp_path, bundle / "extra")  # a linked directory, too
    with pytest.raises(ValueError, match="'extra'"):
        _bundle_files(bundle)

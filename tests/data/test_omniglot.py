import shutil
import zipfile

import numpy as np
import pytest

from edgemeta.data import load_omniglot
from edgemeta.data import omniglot as omniglot_module
from edgemeta.data.splits import OMNIGLOT_TEST, OMNIGLOT_TRAIN


def test_shared_small_sets_deduplicated(omniglot):
    # 8 alphabets, 242 characters, 4840 images: Greek and Latin appear in both zips but count once.
    assert len(set(omniglot.groups)) == 8
    assert omniglot.num_classes == 242 and len(omniglot) == 4840
    assert np.all(np.bincount(omniglot.labels) == 20)
    assert omniglot.images.shape[1:] == (28, 28, 1)
    assert omniglot.raw[0].shape == (105, 105) and omniglot.raw[0].dtype == np.uint8
    # Background is 0 and ink is 1 after inversion.
    assert omniglot.images.mean() < 0.2


def test_fixed_split_is_disjoint_and_complete(omniglot):
    train, test = omniglot.subset(groups=OMNIGLOT_TRAIN), omniglot.subset(groups=OMNIGLOT_TEST)
    assert train.num_classes == 177 and test.num_classes == 65
    assert not set(train.class_names) & set(test.class_names)
    rotated = train.with_rotations()
    assert rotated.num_classes == 4 * 177 and rotated.raw is None
    np.testing.assert_array_equal(rotated.images[len(train)], np.rot90(train.images[0], 1))


def test_alphabet_subset_and_unknown_alphabet(omniglot_dir):
    latin = load_omniglot(omniglot_dir, alphabets=["Latin"], download=False)
    assert latin.num_classes == 26 and set(latin.groups) == {"Latin"}
    with pytest.raises(ValueError, match="Alphabet\\(s\\) \\['Klingon'\\] not in"):
        load_omniglot(omniglot_dir, alphabets=["Klingon"], download=False)


def test_missing_files_offline_names_files_and_place(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_omniglot(tmp_path, sets="small", download=False)
    message = str(info.value)
    assert "images_background_small1.zip" in message and str(tmp_path) in message


def test_download_checks_md5(omniglot_dir, tmp_path, monkeypatch):
    # A real fetch through urllib from a file:// "mirror": the good file lands, a bad md5 is refused.
    monkeypatch.setattr(omniglot_module, "BASE_URL", omniglot_dir.as_uri() + "/")
    files = omniglot_module.resolve_files(tmp_path / "cache", sets="small", download=True)
    assert [f.name for f in files] == ["images_background_small1.zip", "images_background_small2.zip"]
    assert zipfile.is_zipfile(files[0])
    monkeypatch.setitem(omniglot_module.MD5, "images_background_small1.zip", "0" * 32)
    shutil.rmtree(tmp_path / "cache")
    with pytest.raises(FileNotFoundError, match="md5 mismatch"):
        omniglot_module.resolve_files(tmp_path / "cache", sets="small", download=True)
    assert not (tmp_path / "cache" / "images_background_small1.zip").exists()

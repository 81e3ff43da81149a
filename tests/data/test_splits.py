"""The data split's one home: edgemeta.data.splits decides the training and held-out classes of a
TrainConfig, of its saved dict or of a DataSplit alike, without TensorFlow; training.py only re-exports it."""

from __future__ import annotations

import json
from dataclasses import asdict, fields

import numpy as np
import pytest

from edgemeta.data.splits import OMNIGLOT_TEST, OMNIGLOT_TRAIN, DataSplit, load_split
from tests.harness import OMNIGLOT_DIR, run_python


def test_a_split_reads_the_same_from_a_config_its_saved_dict_or_itself():
    from edgemeta.train import training
    from edgemeta.train.training import TrainConfig

    # The old import path is the one implementation, not a copy.
    assert training.load_split is load_split
    assert (training.OMNIGLOT_TRAIN, training.OMNIGLOT_TEST) == (OMNIGLOT_TRAIN, OMNIGLOT_TEST)
    # Every field of the split is a TrainConfig field with the same default, so a run's config and its
    # saved copy in run.json (or a bundle's provenance) name the same split.
    defaults = TrainConfig()
    for f in fields(DataSplit):
        assert getattr(defaults, f.name) == f.default, f.name
    config = TrainConfig(dataset="digits", train_classes=[0, 2, 4, 6], image_size=20, invert=True, steps=5)
    saved = json.loads(json.dumps(asdict(config)))
    assert DataSplit.of(config) == DataSplit.of(saved) == DataSplit(dataset="digits", train_classes=[0, 2, 4, 6],
                                                                    image_size=20, invert=True)
    split = DataSplit.of(saved)
    assert DataSplit.of(split) is split
    with pytest.raises(TypeError, match="Received: int"):
        DataSplit.of(3)


def test_digits_split_holds_out_the_other_classes_at_the_requested_size():
    train, test = load_split({"dataset": "digits", "train_classes": [1, 3], "image_size": 16, "rotations": True})
    assert train.num_classes == 2 * 4 and test.num_classes == 8  # rotations: each class 4 times; 10 - 2 held out
    assert set(test.class_names).isdisjoint(train.class_names)
    assert train.images.shape[1:] == test.images.shape[1:] == (16, 16, 1)
    assert train.preprocessing.invert is False and test.preprocessing == DataSplit(image_size=16).preprocessing()
    _, none_left = load_split(DataSplit(train_classes=range(10)))
    assert none_left is None


def test_omniglot_split_defaults_to_the_fixed_alphabets_and_empty_holds_none_out(omniglot_dir):
    train, test = load_split(DataSplit(dataset="omniglot", data_dir=str(omniglot_dir)))
    assert sorted(set(train.groups)) == sorted(OMNIGLOT_TRAIN) and sorted(set(test.groups)) == sorted(OMNIGLOT_TEST)
    assert train.preprocessing.invert is True  # Omniglot's ink is dark: inverted by default
    everything, none = load_split(DataSplit(dataset="omniglot", data_dir=str(omniglot_dir),
                                            train_groups=OMNIGLOT_TRAIN + OMNIGLOT_TEST, test_groups=()))
    assert none is None and everything.num_classes == train.num_classes + test.num_classes
    np.testing.assert_array_equal(everything.subset(groups=OMNIGLOT_TEST).images, test.images)


def test_bad_splits_name_the_problem():
    with pytest.raises(ValueError, match="dataset must be one of 'digits', 'omniglot', 'folder', 'mini-imagenet'. "
                                         "Received: 'mnist'"):
        DataSplit(dataset="mnist")
    with pytest.raises(ValueError, match="needs data_dir.*Received: data_dir=None"):
        load_split({"dataset": "folder"})


def test_the_split_loads_with_tensorflow_and_the_workstation_absent(omniglot_dir):
    code = (f"import sys\nfor m in ('tensorflow', 'tf_keras', 'keras', 'sklearn'): sys.modules[m] = None\n"
            "from edgemeta.data.splits import DataSplit, load_split\n"
            f"_, test = load_split(DataSplit(dataset='omniglot', data_dir={str(omniglot_dir)!r}))\n"
            "print(test.num_classes, sorted(m for m in sys.modules if m.startswith(('edgemeta.train', 'edgemeta.cli'))))")
    result = run_python(code)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["65", "[]"]


BACKGROUND_ZIP = OMNIGLOT_DIR.parent / "omniglot-background" / "images_background.zip"


def test_the_omniglot_preset_recipe_trains_on_the_background_set_and_its_selection_holds_six_alphabets_out():
    from edgemeta.data.splits import OMNIGLOT_BACKGROUND, OMNIGLOT_SELECTION
    from edgemeta.train.recipes import RECIPES

    assert len(OMNIGLOT_BACKGROUND) == len(set(OMNIGLOT_BACKGROUND)) == 30
    preset, select = RECIPES["omniglot"], RECIPES["omniglot-select"]
    assert set(preset.train_groups) == set(OMNIGLOT_BACKGROUND) and not preset.test_groups
    assert set(select.test_groups) == set(OMNIGLOT_SELECTION) and len(OMNIGLOT_SELECTION) == 6
    assert not set(select.train_groups) & set(select.test_groups)
    assert set(select.train_groups) | set(select.test_groups) == set(OMNIGLOT_BACKGROUND)
    # Everything but the held-out alphabets is the same recipe.
    assert {k: v for k, v in asdict(preset).items() if not k.endswith("_groups")} == {
        k: v for k, v in asdict(select).items() if not k.endswith("_groups")}


def test_the_background_alphabets_are_the_zips_and_each_held_out_one_has_twenty_characters():
    if not BACKGROUND_ZIP.is_file():
        pytest.skip(f"Omniglot's full background set is not at {BACKGROUND_ZIP} (../shared/datasets/omniglot-background)")
    import zipfile

    from edgemeta.data.splits import OMNIGLOT_BACKGROUND, OMNIGLOT_SELECTION

    characters: dict[str, set[str]] = {}
    for name in zipfile.ZipFile(BACKGROUND_ZIP).namelist():
        parts = name.split("/")
        if len(parts) == 4 and parts[3]:
            characters.setdefault(parts[1], set()).add(parts[2])
    assert sorted(characters) == sorted(OMNIGLOT_BACKGROUND) and sum(map(len, characters.values())) == 964
    assert all(len(characters[a]) >= 20 for a in OMNIGLOT_SELECTION)  # Lake et al.'s 20-way runs fit in each

"""ImageClassDataset records the raw image size a board will be handed, through subsets and rotations."""

import numpy as np

from edgemeta.data.dataset import from_raw
from edgemeta.format.preprocessing import Preprocessing


def test_raw_shape_covers_every_raw_image_and_survives_subsets_and_rotations(tmp_path):
    raw = [np.zeros((105, 90), np.uint8), np.zeros((100, 105, 3), np.uint8)]
    ds = from_raw(raw, [0, 1], ["a", "b"], ["g", "g"], Preprocessing(height=28, width=28), "toy")
    assert ds.raw_shape == (105, 105, 3)
    assert ds.subset(classes=[0]).raw_shape == (105, 105, 3)
    rotated = ds.with_rotations()
    assert rotated.raw is None and rotated.raw_shape == (105, 105, 3)


def test_raw_shape_is_unknown_for_files_of_any_size(tmp_path):
    from PIL import Image

    path = tmp_path / "a.png"
    Image.fromarray(np.zeros((40, 30), np.uint8)).save(path)
    ds = from_raw([str(path)], [0], ["a"], ["g"], Preprocessing(height=28, width=28), "files")
    assert ds.raw_shape is None

import numpy as np
import pytest
from PIL import Image

from edgemeta.format.preprocessing import Preprocessing

PRE = Preprocessing(28, 28, 1, invert=True)


def test_accepts_every_documented_form(tmp_path):
    gray = np.full((105, 105), 255, np.uint8)
    rgb = np.full((50, 60, 3), 255, np.uint8)
    rgba = np.full((40, 40, 4), 255, np.uint8)
    path = tmp_path / "a.png"
    Image.fromarray(gray).save(path)
    assert PRE(gray).shape == (1, 28, 28, 1)
    assert PRE(np.stack([gray, gray])).shape == (2, 28, 28, 1)
    assert PRE([gray, rgb, rgba, path, str(path)]).shape == (5, 28, 28, 1)
    # All white, inverted: zero everywhere.
    np.testing.assert_allclose(PRE([gray, rgb, rgba, path]), 0.0, atol=1e-6)


def test_uint8_and_float_inputs_agree():
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, (105, 105), dtype=np.uint8)
    np.testing.assert_allclose(PRE(u8), PRE(u8.astype(np.float32) / 255), atol=1e-6)


def test_inversion_maps_ink_to_one():
    image = np.full((28, 28), 255, np.uint8)
    image[10:18, 10:18] = 0
    x = PRE(image)[0, ..., 0]
    assert x[14, 14] == pytest.approx(1.0) and x[0, 0] == pytest.approx(0.0)
    assert Preprocessing(28, 28, 1, invert=False)(image)[0, 14, 14, 0] == pytest.approx(0.0)


def test_round_trip_through_manifest_dict():
    assert Preprocessing.from_dict(PRE.to_dict()) == PRE


@pytest.mark.parametrize(
    "bad, error, fragment",
    [
        (np.zeros((784,), np.uint8), ValueError, "Received: an array of shape (784,)"),
        ([np.zeros((28, 28, 5), np.uint8)], ValueError, "Received: shape (28, 28, 5)"),
        (np.zeros((2, 3, 28, 28, 1), np.uint8), ValueError, "Received: an array of shape"),
        (np.full((28, 28), 2.0, np.float32), ValueError, "Received: values in [2, 2]"),
        (np.zeros((28, 28), np.int64), TypeError, "Received: dtype int64"),
        ([], ValueError, "empty sequence"),
        (np.zeros((0, 28, 28), np.uint8), ValueError, "empty array"),
        ("/no/such/image.png", FileNotFoundError, "/no/such/image.png"),
        (42, TypeError, "Received: int"),
    ],
)
def test_bad_input_says_what_was_received(bad, error, fragment):
    with pytest.raises(error) as info:
        PRE(bad)
    assert fragment in str(info.value)


def test_rejects_invalid_configuration():
    with pytest.raises(ValueError, match="channels must be 1 or 3"):
        Preprocessing(28, 28, 2)
    with pytest.raises(ValueError, match="resample"):
        Preprocessing(resample="cubic-ish")

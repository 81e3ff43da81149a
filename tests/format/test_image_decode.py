"""One decode path for every image source: a file by path, its bytes (the service's base64), a PIL image and an
array give the same pixels in every PIL mode, EXIF rotation applied, within the pixel and PNG-text limits."""

from __future__ import annotations

import base64
import io
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from edgemeta.format import images
from edgemeta.format.images import ImageDecodeError, ImageTooLargeError, decode_image, image_header
from edgemeta.format.preprocessing import Preprocessing
from edgemeta.serve.api import HTTPError, Limits, Service

RNG = np.random.default_rng(0)
RGB = Image.fromarray(RNG.integers(0, 256, (21, 17, 3), np.uint8))
PRE = Preprocessing(28, 28, 1, invert=True)


def service(max_pixels: int = 1_000_000, per_image: int = images.DEFAULT_MAX_PIXELS) -> Service:
    """The service's decoding, with an adapter that only answers what decoding asks (no model)."""
    embedder = SimpleNamespace(preprocessing=Preprocessing(28, 28, 1), max_pixels=per_image)
    return Service(SimpleNamespace(embedder=embedder), limits=Limits(max_pixels=max_pixels))


def encoded(im: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    im.save(out, fmt, **options)
    return out.getvalue()


def palette_with_transparency() -> Image.Image:
    im = RGB.convert("P")
    im.info["transparency"] = 3
    return im


def i32(values: np.ndarray) -> Image.Image:
    return Image.fromarray(values.astype(np.int32), "I")


ROWS = np.arange(21 * 17).reshape(21, 17)
# (name, source image, file format, expected pixels)
MODES = [
    ("1", RGB.convert("1"), "PNG", np.asarray(RGB.convert("1").convert("L"))),
    ("L", RGB.convert("L"), "PNG", np.asarray(RGB.convert("L"))),
    ("LA", RGB.convert("LA"), "PNG", np.asarray(RGB.convert("L"))),
    ("P with transparency", palette_with_transparency(), "PNG",
     np.asarray(palette_with_transparency().convert("RGBA"))[..., :3]),
    ("P", RGB.convert("P"), "PNG", np.asarray(RGB.convert("P").convert("RGB"))),
    ("PA", RGB.convert("PA"), "TIFF", np.asarray(RGB.convert("PA").convert("RGBA"))[..., :3]),
    ("RGBA", RGB.convert("RGBA"), "PNG", np.asarray(RGB)),
    ("CMYK", RGB.convert("CMYK"), "TIFF", np.asarray(RGB.convert("CMYK").convert("RGB"))),
    ("YCbCr", RGB.convert("YCbCr"), "TIFF", np.asarray(RGB.convert("YCbCr").convert("RGB"))),
    ("LAB", RGB.convert("LAB"), "TIFF", np.asarray(RGB.convert("LAB").convert("RGB"))),
    ("I;16", Image.fromarray((ROWS * 150).astype(np.uint16)), "PNG", (ROWS * 150 / 65535).astype(np.float32)),
    ("I;16 TIFF", Image.fromarray((ROWS * 150).astype(np.uint16)), "TIFF", (ROWS * 150 / 65535).astype(np.float32)),
    ("I, 16-bit values", i32(ROWS * 150), "TIFF", (ROWS * 150 / 65535).astype(np.float32)),
    ("I, 32-bit values", i32(ROWS * 5_000_000), "TIFF", (ROWS * 5_000_000 / (2**31 - 1)).astype(np.float32)),
    ("F", Image.fromarray((ROWS / ROWS.max()).astype(np.float32)), "TIFF", (ROWS / ROWS.max()).astype(np.float32)),
]


@pytest.mark.parametrize("name, source, fmt, expected", MODES, ids=[m[0] for m in MODES])
def test_every_mode_gives_the_same_pixels_by_path_bytes_and_pil_image(tmp_path, name, source, fmt, expected):
    path = tmp_path / f"image.{fmt.lower()}"
    source.save(path, fmt)
    data = path.read_bytes()
    by_path = decode_image(path)
    np.testing.assert_allclose(by_path, expected, rtol=1e-6, atol=1e-7 if by_path.dtype == np.float32 else 0)
    assert by_path.dtype == expected.dtype and by_path.shape == expected.shape
    np.testing.assert_array_equal(decode_image(data), by_path)
    np.testing.assert_array_equal(decode_image(source), by_path)  # the PIL image itself, never saved
    with Image.open(path) as opened:  # a PIL image of the file, passed in before it is loaded
        np.testing.assert_array_equal(decode_image(opened), by_path)
        np.testing.assert_array_equal(PRE(opened), PRE(path))
    np.testing.assert_array_equal(PRE(source), PRE(str(path)))
    if fmt == "PNG":  # what the service is sent: the same pixels, the same model input
        (from_request,) = service().decode_images([base64.b64encode(data).decode()])
        np.testing.assert_array_equal(from_request, by_path)
        np.testing.assert_array_equal(PRE(from_request), PRE(path))


def test_modes_without_a_file_format_are_converted_too():
    for mode in ("HSV", "RGBX", "RGBa"):
        np.testing.assert_array_equal(decode_image(RGB.convert(mode)), np.asarray(RGB.convert(mode).convert("RGB")))


def test_cmyk_jpeg_by_path_bytes_request_and_pil_image_agree(tmp_path):
    path = tmp_path / "cmyk.jpg"
    RGB.convert("CMYK").save(path, "JPEG", quality=95)
    by_path = decode_image(path)
    assert by_path.shape == (21, 17, 3) and by_path.dtype == np.uint8
    with Image.open(path) as opened:
        assert opened.mode == "CMYK"
        np.testing.assert_array_equal(decode_image(opened), by_path)
    (from_request,) = service().decode_images([base64.b64encode(path.read_bytes()).decode()])
    np.testing.assert_array_equal(from_request, by_path)
    assert np.abs(by_path.astype(int) - np.asarray(RGB)).mean() < 12  # the colours, not CMYK bytes read as RGBA


def test_exif_orientation_is_applied_to_files_bytes_and_pil_images(tmp_path):
    stored = np.zeros((20, 40), np.uint8)
    stored[:, :20] = 255  # left half white as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise: the white half on top
    upright = np.rot90(stored, k=-1)
    for fmt in ("JPEG", "PNG"):
        path = tmp_path / f"rotated.{fmt.lower()}"
        Image.fromarray(stored).save(path, fmt, exif=exif, **({"quality": 100} if fmt == "JPEG" else {}))
        by_path = decode_image(path)
        assert by_path.shape == (40, 20), fmt
        assert abs(int(by_path[:20].mean()) - 255) < 3 and int(by_path[20:].mean()) < 3, fmt
        np.testing.assert_allclose(by_path, upright, atol=8)
        np.testing.assert_array_equal(decode_image(path.read_bytes()), by_path)
        with Image.open(path) as opened:
            np.testing.assert_array_equal(decode_image(opened), by_path)
            assert opened.size == (40, 20)  # the caller's image is not rotated in place
        (from_request,) = service().decode_images([base64.b64encode(path.read_bytes()).decode()])
        np.testing.assert_array_equal(from_request, by_path)


def test_float_tiff_keeps_its_values_and_out_of_range_or_nan_is_refused(tmp_path):
    values = RNG.random((30, 30)).astype(np.float32)
    good = tmp_path / "unit.tif"
    Image.fromarray(values).save(good)
    np.testing.assert_array_equal(decode_image(good), values)
    np.testing.assert_array_equal(PRE(good), PRE(values))  # 0..1 floats, not rounded to 0 or 1 of 255

    wide = tmp_path / "wide.tif"
    Image.fromarray(values * 255).save(wide)
    with pytest.raises(ValueError, match=r"Float images must be in \[0, 1\].*Received: values in \[.*, 25\d\] in '.*wide.tif'"):
        PRE(wide)
    nan = tmp_path / "nan.tif"
    Image.fromarray(np.full((30, 30), np.nan, np.float32)).save(nan)
    with pytest.raises(ValueError, match=r"NaN or Inf.*Received: 900 non-finite values in '.*nan.tif'"):
        PRE(nan)
    inf = Image.fromarray(np.full((4, 4), np.inf, np.float32))
    with pytest.raises(ValueError, match="Received: 16 non-finite values in a PIL image of mode 'F'"):
        PRE(inf)


def test_negative_32_bit_pixels_are_refused(tmp_path):
    path = tmp_path / "negative.tif"
    i32(ROWS - 5).save(path)
    with pytest.raises(ImageDecodeError, match=r"negative values \(down to -5\).*Received: '.*negative.tif'"):
        decode_image(path)


def test_pixel_limit_is_checked_on_the_header_for_every_source(tmp_path):
    path = tmp_path / "big.png"
    Image.new("L", (3000, 2000)).save(path)
    assert image_header(path).size == (3000, 2000)
    message = r"3000x2000 = 6000000 pixels, more than max_pixels=4194304 .*Received: '.*big.png'"
    with pytest.raises(ImageTooLargeError, match=message):
        decode_image(path)
    with pytest.raises(ImageTooLargeError, match=message):
        PRE(path)
    with Image.open(path) as opened:
        with pytest.raises(ImageTooLargeError, match="Received: a PIL image of mode 'L', 3000x2000 read from"):
            decode_image(opened)
        assert opened.tile  # refused from its size alone: nothing was decoded
    with pytest.raises(ImageTooLargeError, match=r"Received: an array of shape \(2000, 3000\)"):
        PRE(np.zeros((2000, 3000), np.uint8))
    assert decode_image(path, max_pixels=6_000_000).shape == (2000, 3000)
    assert PRE(path, max_pixels=6_000_000).shape == (1, 28, 28, 1)
    with pytest.raises(ValueError, match="max_pixels must be a positive integer. Received: 0"):
        PRE(path, max_pixels=0)


def test_a_large_jpeg_decodes_at_a_reduced_scale_near_the_model_input():
    photo = encoded(Image.fromarray(RNG.integers(0, 256, (1200, 1600, 3), np.uint8)), "JPEG")
    header = image_header(photo, draft=(28, 28))
    assert (header.size, header.scale) == ((200, 150), 8)  # 1/8: still 4x the model's 28x28 on each side
    assert decode_image(photo, draft=(28, 28), max_pixels=100_000).shape == (150, 200, 3)
    with pytest.raises(ImageTooLargeError, match=r"1600x1200 = 1920000 pixels, more than max_pixels=100000"):
        decode_image(photo, max_pixels=100_000)
    assert image_header(photo, draft=(224, 224)).size == (1600, 1200)  # 1/2 would leave less than 4 x 224
    small = encoded(Image.fromarray(RNG.integers(0, 256, (105, 105), np.uint8)), "JPEG")
    assert image_header(small, draft=(28, 28)).scale == 1  # drawings near the model's size decode in full
    with pytest.raises(HTTPError) as info:  # the service counts the reduced size against --max-pixels
        service(max_pixels=20_000).decode_images([base64.b64encode(photo).decode()])
    assert info.value.status == 413 and "Received: 30000 pixels (200x150)" in info.value.message


def png_with_text(chunks: int, size: int, itxt: bool = False) -> bytes:
    info = PngImagePlugin.PngInfo()
    for k in range(chunks):
        (info.add_itxt if itxt else info.add_text)(f"key{k}", "A" * size, zip=True)
    return encoded(Image.fromarray(np.zeros((105, 105), np.uint8)), "PNG", pnginfo=info)


@pytest.mark.parametrize("chunks, size, itxt, fragment", [
    (1, 2**20, False, "Decompressed data too large"),  # one chunk inflating to 1 MiB
    (1, 2**20, True, "Decompressed data too large"),
    (8, 200 * 2**10, False, "Too much memory used in text chunks"),  # each under the chunk limit, 1.6 MiB in all
])
def test_png_text_chunks_that_inflate_too_far_are_refused(tmp_path, chunks, size, itxt, fragment):
    data = png_with_text(chunks, size, itxt)
    assert len(data) < 10_000
    with pytest.raises(ImageTooLargeError, match=f"metadata is too large.*{fragment}.*Received: {len(data)} bytes"):
        decode_image(data)
    path = tmp_path / "text.png"
    path.write_bytes(data)
    with pytest.raises(ImageTooLargeError, match="save it without the metadata"):
        PRE(path)
    with pytest.raises(HTTPError) as info:
        service().decode_images([base64.b64encode(data).decode()])
    assert info.value.status == 413 and "images[0] is too large: its PNG text" in info.value.message
    assert PngImagePlugin.MAX_TEXT_CHUNK <= images.MAX_TEXT_CHUNK
    assert PngImagePlugin.MAX_TEXT_MEMORY <= images.MAX_TEXT_MEMORY


def test_ordinary_png_text_is_read_and_a_lower_pillow_limit_is_kept(monkeypatch):
    data = png_with_text(3, 20_000)  # metadata of a usual size
    assert decode_image(data).shape == (105, 105)
    monkeypatch.setattr(PngImagePlugin, "MAX_TEXT_CHUNK", 1000)  # a caller's own, stricter limit
    with pytest.raises(ImageTooLargeError):
        decode_image(data)
    assert PngImagePlugin.MAX_TEXT_CHUNK == 1000


def test_unreadable_files_say_what_was_received(tmp_path):
    noise = encoded(Image.fromarray(RNG.integers(0, 256, (64, 64), np.uint8)), "PNG")
    with pytest.raises(ImageDecodeError, match=r"Cannot decode the image .*truncated or corrupt. Received: \d+ bytes"):
        decode_image(noise[: len(noise) // 2])  # Pillow's LOAD_TRUNCATED_IMAGES stays off
    eps = tmp_path / "a.eps"
    RGB.save(eps, "EPS")  # Pillow would run Ghostscript to decode it
    with pytest.raises(ImageDecodeError, match=r"not a known image file: expected PNG, JPEG, .*Received: '.*a.eps'"):
        decode_image(eps)
    with pytest.raises(FileNotFoundError, match="Image file not found. Received: '.*missing.png'"):
        decode_image(tmp_path / "missing.png")
    with pytest.raises(TypeError, match="Received: bytes"):
        PRE([noise])  # the Python API takes paths, PIL images and arrays; bytes are the service's

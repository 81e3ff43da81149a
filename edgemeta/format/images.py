"""Decodes one image (a file path, an encoded file's bytes, a PIL image or an array) to pixels, within limits;
encodes a class's small JPEG thumbnail (`thumbnail_jpeg`).

Every way an image reaches edgemeta goes through `decode_image`: the runtime's preprocessing (paths, PIL
images, arrays) and the service's request bodies (bytes), so a file, a request and a PIL image of the same
picture give the same pixels. Each image is opened, checked, decoded, converted and closed before the next.

Limits, against decompression bombs (a small file that decodes to gigabytes):

- **Pixels per image** (`max_pixels`, default `DEFAULT_MAX_PIXELS`), checked on the header's size before any
  pixel is decoded. A JPEG is first set to decode at 1/2, 1/4 or 1/8 scale when that still leaves
  `DRAFT_MARGIN` times the model's input size (`draft=`), or 2x or 1x where only that fits `max_pixels`, and
  the check applies to that size.
- **PNG text and ICC chunks**: Pillow inflates zTXt/iTXt/iCCP chunks while it looks for the pixel data, up
  to `PngImagePlugin.MAX_TEXT_CHUNK` (1 MiB) each and `MAX_TEXT_MEMORY` (64 MiB) in all, by default.
  Pillow reads those two as module globals, so they cannot be set per call: each decode lowers them, for
  the whole process, to at most this module's `MAX_TEXT_CHUNK` (256 KiB) and `MAX_TEXT_MEMORY` (1 MiB),
  keeping a value set lower. A PNG over them is refused (`ImageTooLargeError`). To read larger PNG text
  elsewhere in the same process, raise this module's constants as well as Pillow's.
- `ImageFile.LOAD_TRUNCATED_IMAGES` is left off: a truncated file is an error, not a partial image.

Pixels of a file or PIL image are returned as the preprocessing takes them: uint8 `(H, W)` or `(H, W, 3)`; float32 `(H, W)` for
16- and 32-bit integer images (scaled to [0, 1]) and float images (values as stored: the preprocessing
refuses values outside [0, 1], NaN and Inf). Needs numpy and Pillow only.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import ExifTags, Image

# 4 MiP (2048 x 2048): above any camera frame a few-shot model needs (a JPEG photo of any size is decoded
# at 1/2..1/8 scale first), and its decode and float conversion stay within ~120 MiB (RGB, ~29 B per pixel;
# ~9 B grey) where an unchecked 9000x9000 PNG of 79 KB took 665 MiB. A bundle whose raw images are larger
# raises it (`max_pixels_for`).
DEFAULT_MAX_PIXELS = 2**22
# A JPEG decodes at the smallest 1/2, 1/4 or 1/8 scale that keeps this many times the model's input size
# on each side: libjpeg scales in the DCT (an area average), so the resize that follows loses nothing.
DRAFT_MARGIN = 4
# PNG text/ICC chunks, inflated: real metadata (XMP, an ICC profile) is tens of KB; a bomb is MBs per chunk.
MAX_TEXT_CHUNK = 256 * 2**10
MAX_TEXT_MEMORY = 2**20
# Formats a file path or bytes may be in (the service narrows bytes to PNG and JPEG): the image formats of
# `edgemeta.data.folder`, plus PGM/PPM; JPEG includes MPO (a phone's multi-picture JPEG). Not EPS (Pillow
# runs Ghostscript on it), PSD, FITS and the others Pillow knows.
FILE_FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "GIF", "WEBP", "PPM")

# Errors Pillow raises on a malformed file, at open or at load.
_PILLOW_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error, IndexError, KeyError, TypeError)


class ImageDecodeError(ValueError):
    """An image that cannot be read. `reason` says why without naming the source, for callers (such as
    the service) that say themselves what they received."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class ImageTooLargeError(ImageDecodeError):
    """An image over a decoding limit: more pixels than `max_pixels`, or PNG chunks that inflate too far."""


@dataclass(frozen=True)
class ImageHeader:
    """What an encoded image's header says: its format, mode and size as it will be decoded (`scale` > 1
    when a JPEG decodes at 1/scale)."""

    format: str
    mode: str
    size: tuple[int, int]
    scale: int = 1

    @property
    def pixels(self) -> int:
        return self.size[0] * self.size[1]


def max_pixels_for(manifest: Any) -> int:
    """The pixel limit per image for a bundle: `DEFAULT_MAX_PIXELS`, or 4x the pixels of the raw images the
    model was trained on (`manifest.raw_shape`, else its input size) when that is more."""
    shape = getattr(manifest, "raw_shape", None) or manifest.preprocessing.input_shape
    return max(DEFAULT_MAX_PIXELS, 4 * int(shape[0]) * int(shape[1]))


def decode_image(image: Any, *, max_pixels: int | None = DEFAULT_MAX_PIXELS, draft: tuple[int, int] | None = None,
                 formats: tuple[str, ...] | None = FILE_FORMATS) -> np.ndarray:
    """One image's pixels (see the module's docstring), from a file path, an encoded file's bytes, a PIL
    image or an array. `max_pixels`: at most this many pixels (None: no limit); `draft`: the (width, height)
    the pixels will be resized to, which lets a large JPEG decode at a reduced scale; `formats`: the file
    formats a path or bytes may be in. Raises `ImageTooLargeError` over a limit, `ImageDecodeError` (a
    ValueError) for a file that cannot be read, FileNotFoundError for a missing path."""
    if isinstance(image, Image.Image):
        return _decode_pil(image, max_pixels)
    if isinstance(image, (str, os.PathLike, bytes, bytearray, memoryview)):
        with _Opened(image, formats) as (im, what):
            header = _header(im, draft, max_pixels)
            _check_pixels(header.size, max_pixels, what, header.scale)
            _load(im, what)
            return _pixels(_oriented(im, in_place=True), what)
    return _array(image, max_pixels)


def image_header(image: str | os.PathLike | bytes, *, draft: tuple[int, int] | None = None,
                 formats: tuple[str, ...] | None = FILE_FORMATS) -> ImageHeader:
    """An encoded image's format, mode and decoded size, read from its header without decoding a pixel
    (`draft` as for `decode_image`). Opening a PNG reads its chunks up to the pixel data, within the text
    limits."""
    with _Opened(image, formats) as (im, _):
        return _header(im, draft)


def thumbnail_jpeg(pixels: np.ndarray, max_side: int = 64, max_bytes: int = 6144) -> bytes:
    """A small JPEG of uint8 pixels, `(H, W)` or `(H, W, C)` with C 1, 3 or 4 (alpha dropped): grey (L) or RGB,
    at most `max_side` pixels on its longer side (never enlarged), at most `max_bytes` bytes. The quality is
    lowered from 85 until it fits, then the side (3/4, then 1/2) for an image that no quality fits (noise).

    A large image is first subsampled by rows and columns to about four times `max_side` (no copy of the
    whole image beside it), then reduced with Lanczos: what a 64-pixel thumbnail needs."""
    array = np.asarray(pixels)
    if (array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4))
            or 0 in array.shape):
        raise ValueError(f"A thumbnail is made from uint8 pixels of shape (H, W) or (H, W, C) with C in 1, 3, 4. "
                         f"Received: {array.dtype} of shape {array.shape}")
    for name, value in (("max_side", max_side), ("max_bytes", max_bytes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 8:
            raise ValueError(f"{name} must be an integer >= 8. Received: {value!r}")
    if array.ndim == 3:
        array = array[:, :, 0] if array.shape[2] == 1 else array[:, :, :3]
    step = max(1, max(array.shape[:2]) // (4 * max_side))
    image = Image.fromarray(np.ascontiguousarray(array[::step, ::step]))
    for side in (max_side, max_side * 3 // 4, max_side // 2):
        small = image.copy()
        small.thumbnail((side, side), Image.Resampling.LANCZOS)
        for quality in (85, 70, 55, 40, 25, 10):
            out = io.BytesIO()
            small.save(out, "JPEG", quality=quality, optimize=True)
            if out.tell() <= max_bytes:
                return out.getvalue()
    raise ValueError(f"No JPEG of at most {max_side} pixels a side fits {max_bytes} bytes. Received: pixels of shape "
                     f"{np.shape(pixels)}; raise max_bytes")


def pil_pixels(im: Image.Image) -> np.ndarray:
    """A loaded PIL image's pixels in the module's forms: L and RGB as they are; 1 and LA as L; P, PA
    (palette, transparency dropped), RGBA, RGBX, CMYK, YCbCr, LAB and HSV as RGB (alpha dropped);
    16-bit images / 65535 and 32-bit integer images / 65535 when their values fit 16 bits (else / 2**31 - 1)
    as float32; F (float) as stored, float32. No EXIF rotation here: `decode_image` does that."""
    return _pixels(im, _describe(im))


# -- internals ---------------------------------------------------------------------------------------
class _Opened:
    """Image.open of a path or bytes, with Pillow's errors said plainly; closes the image (and file) on exit."""

    def __init__(self, source: Any, formats: tuple[str, ...] | None) -> None:
        self.source, self.formats = source, formats

    def __enter__(self) -> tuple[Image.Image, str]:
        source = self.source
        _bound_png_text()
        if isinstance(source, (str, os.PathLike)):
            what = repr(os.fspath(source))
            if not os.path.isfile(source):
                raise FileNotFoundError(f"Image file not found. Received: {what}")
            fp: Any = source
        else:
            data = bytes(source)
            what = f"{len(data)} bytes starting {data[:8]!r}"
            fp = io.BytesIO(data)
        try:
            self.im = Image.open(fp, formats=self.formats)
        except Image.UnidentifiedImageError as e:  # its text is only the file's repr
            expected = ", ".join(self.formats) if self.formats else "an image format Pillow reads"
            reason = f"not a known image file: expected {expected}"
            raise ImageDecodeError(f"Cannot read an image from the file ({reason}). Received: {what}", reason) from e
        except Image.DecompressionBombError as e:
            raise ImageTooLargeError(f"The image is too large ({e}). Received: {what}", str(e)) from e
        except _PILLOW_ERRORS as e:
            raise _pillow_error(e, what) from e
        return self.im, what

    def __exit__(self, *exc: object) -> None:
        self.im.close()


def _header(im: Image.Image, draft: tuple[int, int] | None, max_pixels: int | None = None) -> ImageHeader:
    """The image's header; a JPEG set to decode at a reduced scale when `draft` allows it. The scale keeps
    `DRAFT_MARGIN` times the model's input, or less margin (2x, then 1x) where that alone keeps the decoded image
    within `max_pixels`: a camera's 6-8 MP JPEG at 1/2 scale would be refused by a board's 1 MiP limit, at 1/4 it
    still has twice a 224x224 model's input."""
    full, scale = im.size, 1
    if draft is not None and im.format in ("JPEG", "MPO"):  # by name: JpegImagePlugin loads with Pillow's first open
        for margin in (DRAFT_MARGIN, 2, 1):
            target = (max(1, margin * int(draft[0])), max(1, margin * int(draft[1])))
            # Pillow's choice: the largest of 1/2, 1/4, 1/8 that leaves at least `target` on both sides.
            reduce = next((r for r in (8, 4, 2) if full[0] // target[0] >= r and full[1] // target[1] >= r), 1)
            if max_pixels is None or -(-full[0] // reduce) * -(-full[1] // reduce) <= max_pixels:
                break
        if full[0] >= 2 * target[0] and full[1] >= 2 * target[1]:  # else 1:1, and no draft call at all
            im.draft(im.mode, target)
            scale = max(1, round(full[0] / im.size[0]))
    return ImageHeader(im.format or "", im.mode, im.size, scale)


def _check_pixels(size: tuple[int, int], max_pixels: int | None, what: str, scale: int = 1) -> None:
    w, h = size
    if max_pixels is not None and w * h > max_pixels:
        at = f" (decoded at 1/{scale} scale)" if scale > 1 else ""
        reason = f"{w}x{h} = {w * h} pixels{at}, more than max_pixels={max_pixels}"
        raise ImageTooLargeError(
            f"The image is too large: {reason} (a limit per image against decompression bombs; send a smaller "
            f"image, or pass a larger max_pixels). Received: {what}", reason)


def _load(im: Image.Image, what: str) -> None:
    try:
        im.load()
    except Image.DecompressionBombError as e:
        raise ImageTooLargeError(f"The image is too large ({e}). Received: {what}", str(e)) from e
    except _PILLOW_ERRORS as e:
        raise _pillow_error(e, what, decoding=True) from e


def _pillow_error(e: BaseException, what: str, decoding: bool = False) -> ImageDecodeError:
    text = str(e) or type(e).__name__
    if isinstance(e, ValueError) and "MAX_TEXT" in text:  # PngImagePlugin's text and ICC limits
        from PIL import PngImagePlugin

        reason = (f"its PNG text or ICC chunks inflate past {PngImagePlugin.MAX_TEXT_CHUNK} bytes each or "
                  f"{PngImagePlugin.MAX_TEXT_MEMORY} in all ({text}); save it without the metadata")
        return ImageTooLargeError(f"The image's metadata is too large: {reason}. Received: {what}", reason)
    if decoding:
        return ImageDecodeError(f"Cannot decode the image ({text}): truncated or corrupt. Received: {what}", text)
    return ImageDecodeError(f"Cannot read an image from the file ({text}). Received: {what}", text)


def _bound_png_text() -> None:
    """Lowers Pillow's PNG text limits to this module's (see the module's docstring)."""
    from PIL import PngImagePlugin  # here, not at import: Pillow loads it with its first Image.open anyway

    if PngImagePlugin.MAX_TEXT_CHUNK > MAX_TEXT_CHUNK:
        PngImagePlugin.MAX_TEXT_CHUNK = MAX_TEXT_CHUNK
    if PngImagePlugin.MAX_TEXT_MEMORY > MAX_TEXT_MEMORY:
        PngImagePlugin.MAX_TEXT_MEMORY = MAX_TEXT_MEMORY


def _decode_pil(image: Image.Image, max_pixels: int | None) -> np.ndarray:
    """A caller's PIL image: checked on its size (before a lazily opened file is decoded), then rotated
    and converted as a file is. It is neither changed nor closed: a rotation is a copy."""
    what = _describe(image)
    _check_pixels(image.size, max_pixels, what)
    _bound_png_text()  # a PNG opened but not loaded reads its last chunks now
    _load(image, what)
    return _pixels(_oriented(image, in_place=False), what)


def _oriented(im: Image.Image, in_place: bool) -> Image.Image:
    """The image as its EXIF orientation says it is shown (a phone's portrait photo upright)."""
    try:
        orientation = im.getexif().get(ExifTags.Base.Orientation, 1)
    except _PILLOW_ERRORS:  # unreadable EXIF: the pixels as stored, as a viewer shows them
        return im
    if orientation not in range(2, 9):  # 1: as stored; 2..8: a flip and/or a rotation
        return im
    from PIL import ImageOps  # only for a rotated image: the service starts without it

    if in_place:
        ImageOps.exif_transpose(im, in_place=True)
        return im
    return ImageOps.exif_transpose(im)


_AS_RGB = ("P", "PA", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "LAB", "HSV")


def _pixels(im: Image.Image, what: str) -> np.ndarray:
    mode = im.mode
    try:
        if mode in ("L", "RGB"):
            return np.asarray(im)
        if mode in ("1", "LA"):
            return np.asarray(im.convert("L"))
        if mode in ("P", "PA") and (mode == "PA" or "transparency" in im.info):
            # Through RGBA: Pillow refuses (or warns) to drop a palette's transparency straight to RGB.
            with im.convert("RGBA") as rgba:
                return np.asarray(rgba.convert("RGB"))
        if mode in _AS_RGB:
            return np.asarray(im.convert("RGB"))
        if mode.startswith("I;16") and mode != "I;16S":  # unsigned 16-bit, either byte order
            return np.divide(np.asarray(im), 65535.0, dtype=np.float32)
        if mode == "I":
            return _int32_to_unit(np.asarray(im), what)
        if mode == "F":
            return np.asarray(im, dtype=np.float32)
    except ValueError as e:  # a conversion Pillow does not have
        raise ImageDecodeError(f"Cannot convert the image's pixels ({e}). Received: {what}", str(e)) from e
    reason = f"pixels of mode {mode!r}, which edgemeta does not convert"
    raise ImageDecodeError(f"Cannot use the image: {reason} (expected 1, L, LA, P, PA, RGB, RGBA, CMYK, YCbCr, LAB, "
                           f"HSV, I;16, I or F). Received: {what}", reason)


def _int32_to_unit(array: np.ndarray, what: str) -> np.ndarray:
    """A 32-bit integer image in [0, 1]: / 65535 when every value fits 16 bits (a 16-bit image held as 32-bit,
    as Pillow's own convert("I") gives it), else / 2**31 - 1. Negative values are refused."""
    lo, hi = (int(array.min()), int(array.max())) if array.size else (0, 0)
    if lo < 0:
        reason = f"a 32-bit integer image with negative values (down to {lo})"
        raise ImageDecodeError(f"Cannot use the image: {reason}; integer pixels must be >= 0. Received: {what}", reason)
    return np.divide(array, 65535.0 if hi <= 65535 else 2147483647.0, dtype=np.float32)


def _array(image: Any, max_pixels: int | None) -> np.ndarray:
    try:
        array = np.asarray(image)
    except (ValueError, TypeError) as e:  # e.g. a ragged nested list
        raise ValueError(
            f"Expected an image array of shape (H, W) or (H, W, C). Received: a {type(image).__name__} "
            f"that is not a rectangular array ({e})"
        ) from e
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (1, 3, 4)):
        raise ValueError(
            "Expected an image of shape (H, W) or (H, W, C) with C in 1, 3, 4. "
            f"Received: shape {array.shape} (from a {type(image).__name__})"
        )
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise ValueError(f"Expected a non-empty image. Received: shape {array.shape}")
    if max_pixels is not None and array.shape[0] * array.shape[1] > max_pixels:  # the message only when needed: a hot path
        _check_pixels((array.shape[1], array.shape[0]), max_pixels, f"an array of shape {array.shape}")
    return array


def _describe(image: Image.Image) -> str:
    source = f" read from {image.filename!r}" if getattr(image, "filename", "") else ""
    return f"a PIL image of mode {image.mode!r}, {image.size[0]}x{image.size[1]}{source}"

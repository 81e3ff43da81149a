"""Turns raw images (arrays or files) into model input, exactly as a bundle's manifest describes.

Training and the on-device runtime share this one function, so what the learner saw during
meta-training and what the board feeds the model cannot drift apart. Images are read and checked by
`edgemeta.format.images.decode_image` (pixel limit, EXIF rotation, every PIL mode). Needs numpy and Pillow only.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from edgemeta.format.images import DEFAULT_MAX_PIXELS, decode_image
from edgemeta.format.images import pil_pixels as pil_pixels  # re-exported: its home before format.images

_RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "lanczos": Image.Resampling.LANCZOS,
    "nearest": Image.Resampling.NEAREST,
}
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601: RGB to gray
_GREY_BAND_ROWS = 64
# "squash": the whole image to height x width (aspect not kept); "shorter": the shorter side to `resize_to`,
# aspect kept, then the centre height x width.
RESIZES = ("squash", "shorter")
# Named per-channel (mean, std) for `Preprocessing(mean=, std=)`, applied to pixels in [0, 1]: (x - mean) / std.
NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]] | None] = {
    "none": None,
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # torchvision's and Keras' ImageNet statistics
    "unit": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # (p - 127.5) / 127.5: [-1, 1]
    "efficientnet-lite": ((127 / 255,) * 3, (128 / 255,) * 3),  # (p - 127) / 128, as EfficientNet-Lite expects
}


def normalization(name: str, channels: int = 3) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    """`(mean, std)` of a name in `NORMALIZATIONS` for `channels` channels; `(None, None)` for "none".
    ImageNet's statistics are per RGB channel: a grayscale model (1 channel) has none."""
    if name not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {', '.join(NORMALIZATIONS)}. Received: {name!r}")
    pair = NORMALIZATIONS[name]
    if pair is None:
        return None, None
    mean, std = pair
    if channels == 1:
        if len(set(mean)) > 1 or len(set(std)) > 1:
            raise ValueError(f"The {name!r} normalization is per RGB channel; a grayscale model has no such statistics "
                             "(take 3 channels: a gray image is replicated to RGB). Received: channels=1")
        return mean[:1], std[:1]
    return mean, std


@dataclass(frozen=True)
class Preprocessing:
    """How a raw image becomes a model input of shape `(height, width, channels)`.

    Steps, in order: the file decoded (`decode_image`: EXIF rotation, any mode to L or RGB, 16-bit to float);
    to float in [0, 1] (uint8 / 255; floats must already be in [0, 1]); alpha dropped; to grayscale
    (ITU-R 601 luma) when `channels == 1`, a gray image replicated when `channels == 3`; resized with Pillow
    (`resample`): `resize="squash"` takes the whole image to height x width, `resize="shorter"` scales the
    shorter side to `resize_to` (default max(height, width)), keeping the aspect, and takes the centre
    height x width; clipped to [0, 1]; inverted (`1 - x`) when `invert`, e.g. so that Omniglot's black ink on
    white becomes 1 on 0; normalized per channel, `(x - mean) / std` in float32, when `mean` and `std` are
    given (e.g. `normalization("imagenet")`). The defaults (squash, no normalization) are the preprocessing
    of every bundle written before `resize`, `mean` and `std` existed, bit for bit.
    """

    height: int = 28
    width: int = 28
    channels: int = 1
    invert: bool = False
    resample: str = "bilinear"
    resize: str = "squash"
    resize_to: int | None = None  # "shorter": the shorter side's length before the crop (None: max(height, width))
    mean: tuple[float, ...] | None = None  # per channel, subtracted from pixels in [0, 1]; None: no normalization
    std: tuple[float, ...] | None = None  # per channel, > 0, divides after the mean
    # At most this many images per call (override per call with `max_images=`): a bound on the memory
    # one request can take on a small board. Not part of the manifest.
    max_images: ClassVar[int] = 1024
    # At most this many pixels per image (override per call with `max_pixels=`; the Embedder passes its
    # bundle's, `edgemeta.format.images.max_pixels_for`), checked before a file is decoded. Not part of the manifest.
    max_pixels: ClassVar[int] = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3. Received: {self.channels}")
        if self.resample not in _RESAMPLE:
            raise ValueError(f"resample must be one of {sorted(_RESAMPLE)}. Received: {self.resample!r}")
        if self.height < 1 or self.width < 1:
            raise ValueError(f"height and width must be positive. Received: {self.height}x{self.width}")
        if self.resize not in RESIZES:
            raise ValueError(f"resize must be one of {', '.join(RESIZES)}. Received: {self.resize!r}")
        if self.resize == "squash":
            if self.resize_to is not None:
                raise ValueError(f"resize_to applies to resize='shorter' only. Received: resize_to={self.resize_to!r} "
                                 "with resize='squash'")
        else:
            side = max(self.height, self.width) if self.resize_to is None else self.resize_to
            if isinstance(side, bool) or not isinstance(side, (int, np.integer)) or side < max(self.height, self.width):
                raise ValueError(f"resize_to must be an integer >= max(height, width) = {max(self.height, self.width)} "
                                 f"(the crop is taken from the resized image). Received: {self.resize_to!r}")
            object.__setattr__(self, "resize_to", int(side))  # resolved: a manifest states what the board does
        if (self.mean is None) != (self.std is None):
            raise ValueError(f"mean and std are given together (or neither). Received: mean={self.mean!r}, std={self.std!r}")
        if self.mean is not None:
            object.__setattr__(self, "mean", self._per_channel("mean", self.mean, low=-math.inf))
            object.__setattr__(self, "std", self._per_channel("std", self.std, low=0.0))

    def _per_channel(self, name: str, values: Any, low: float) -> tuple[float, ...]:
        """`values` as a tuple of `channels` finite floats > `low`, or a ValueError naming `name`."""
        plural = "s" if self.channels > 1 else ""
        expected = f"{self.channels} finite number{plural}{' > 0' if low == 0 else ''} (one per channel)"
        try:
            numbers = tuple(float(v) for v in values if not isinstance(v, (bool, str)))
            ok = len(numbers) == len(values) == self.channels and all(math.isfinite(v) and v > low for v in numbers)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"{name} must be {expected}. Received: {values!r}")
        return numbers

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, self.channels)

    def to_dict(self) -> dict[str, Any]:
        """The manifest's `preprocessing` object. The fields added after format version 2 (`resize`, `resize_to`,
        `mean`, `std`) are written only when they differ from the defaults, so a bundle that needs none of
        them reads as before, and one that does is refused by readers that would ignore them."""
        d = {"grayscale": self.channels == 1, "scale": "0..1",
             **{k: v for k, v in asdict(self).items() if k in _V1_FIELDS}}
        if self.resize != "squash":
            d.update(resize=self.resize, resize_to=self.resize_to)
        if self.mean is not None:
            d.update(mean=list(self.mean), std=list(self.std))
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        """The inverse of `to_dict` (unchecked: a manifest's fields are checked by `edgemeta.format.bundle`)."""
        return cls(**{k: d[k] for k in _V1_FIELDS}, **{k: d[k] for k in _LATER_FIELDS if k in d})

    @property
    def needs_format_version(self) -> int:
        """The oldest bundle format whose readers apply this preprocessing: 3 with `resize="shorter"` or a
        normalization, else 1."""
        return 3 if self.resize != "squash" or self.mean is not None else 1

    def __call__(self, images: Any, max_images: int | None = None, max_pixels: int | None = None) -> np.ndarray:
        """Preprocesses one image or many; returns float32 `(n, height, width, channels)`.

        Accepts a file path, a PIL image, a `(H, W)` or `(H, W, C)` array, a stacked `(N, H, W[, C])`
        array, or a list of any of these (sizes may differ); pixels uint8 (0..255), bool, or finite
        floats in [0, 1] (files and PIL images of any mode are converted: `edgemeta.format.images`).
        At most `max_images` (default `Preprocessing.max_images`) per call and `max_pixels` (default
        `Preprocessing.max_pixels`) per image. Example:

        >>> Preprocessing(28, 28, 1, invert=True)(np.full((105, 105), 255, np.uint8)).shape
        (1, 28, 28, 1)
        """
        items, pixels = self._checked(images, max_images, max_pixels)
        if len(items) == 1:
            return self.one(items[0], pixels)[None]
        # Image by image: one Pillow resize each. (Resizing a whole stack in two large one-axis Pillow
        # calls gives the same bits and was 35 % faster in a fresh process, but no faster in a
        # long-running one, where its large temporaries went to mmap and back on every call.)
        return np.stack([self.one(image, pixels) for image in items])

    def batches(self, images: Any, size: int, max_images: int | None = None,
                max_pixels: int | None = None) -> Iterator[np.ndarray]:
        """`__call__`'s output `size` images at a time: the call is checked once, as a whole (its limits, every
        NaN/Inf counted), then each batch is preprocessed only when it is asked for, so a caller that
        consumes one batch before the next holds one batch's float copies, not the call's."""
        items, pixels = self._checked(images, max_images, max_pixels)
        for start in range(0, len(items), size):
            batch = items[start : start + size]
            yield self.one(batch[0], pixels)[None] if len(batch) == 1 else np.stack([self.one(i, pixels) for i in batch])

    def _checked(self, images: Any, max_images: int | None, max_pixels: int | None) -> tuple[list[Any], int]:
        """The call's images as a list and its pixel limit, after its limits and every NaN/Inf are checked."""
        limit = self.max_images if max_images is None else max_images
        if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1:
            raise ValueError(f"max_images must be a positive integer. Received: {limit!r}")
        pixels = self.max_pixels if max_pixels is None else max_pixels
        if isinstance(pixels, bool) or not isinstance(pixels, (int, np.integer)) or pixels < 1:
            raise ValueError(f"max_pixels must be a positive integer. Received: {pixels!r}")
        items = as_image_list(images, limit=int(limit))
        # Every NaN/Inf of the batch is counted before any work, so the error says how bad it is.
        if isinstance(images, np.ndarray):
            bad = _count_non_finite(images)  # one pass over the stack, the same count as per image
        else:
            bad = sum(_count_non_finite(item) for item in items if isinstance(item, np.ndarray))
        if bad:
            raise ValueError(_non_finite_message(bad))
        return items, int(pixels)

    def one(self, image: Any, max_pixels: int | None = None) -> np.ndarray:
        """Preprocesses a single image (array, path or PIL image) to float32 `(height, width, channels)`."""
        limit = self.max_pixels if max_pixels is None else max_pixels
        # A JPEG may decode at a reduced scale that still leaves a margin over (width, height): see format.images.
        pixels = _load(image, limit, draft=(self.width, self.height))
        try:
            _check_unit_range(pixels)
        except ValueError as e:  # a float file's NaN or range: say which file
            if not isinstance(image, (str, os.PathLike, Image.Image)):
                raise
            where = repr(os.fspath(image)) if isinstance(image, (str, os.PathLike)) else f"a PIL image of mode {image.mode!r}"
            raise ValueError(f"{e} in {where}") from e
        size, resample = (self.width, self.height), _RESAMPLE[self.resample]
        box = self._centre_box(*pixels.shape[:2]) if self.resize == "shorter" else None
        resized = self.resize == "shorter" and box is not None or self.resize == "squash" and pixels.shape[:2] != (
            self.height, self.width)
        # Plane by plane, each resized as soon as it is made: a large photo costs one full-size float32 channel
        # beside its uint8 pixels, not a float32 copy of all its channels (edgemeta.runtime.budget.PIXEL_BYTES).
        planes = [np.asarray(_float_image(p).resize(size, resample, box=box)) if resized else p
                  for p in self._unit_planes(pixels)]
        if len(planes) == 1:
            out = planes[0][..., None]
            if self.channels > 1:
                out = np.repeat(out, self.channels, axis=-1)
        else:
            out = np.stack(planes, axis=-1)
        out = np.clip(out, 0.0, 1.0)  # a new float32 array: the steps below may work in place
        if self.invert:
            np.subtract(1.0, out, out=out)
        if self.mean is not None:
            # float32 operands, so the arithmetic (correctly rounded subtract and divide) is the same on every machine.
            np.subtract(out, np.asarray(self.mean, np.float32), out=out)
            np.divide(out, np.asarray(self.std, np.float32), out=out)
        return out

    def _unit_planes(self, pixels: np.ndarray) -> Iterator[np.ndarray]:
        """The channels the model takes, as float32 planes in [0, 1], one at a time: alpha dropped, RGB to ITU-R 601
        luma when `channels == 1` (a band of rows at a time), a gray image as its one plane (replicated later)."""
        if pixels.ndim == 2:
            yield _to_unit_float(pixels)
            return
        colours = min(pixels.shape[-1], 3)  # RGBA: alpha dropped
        if colours == 1:
            yield _to_unit_float(pixels[..., 0])
        elif self.channels == 1:
            # A band of rows at a time: the same products and sums as over the whole image (a 3-term dot per pixel),
            # so the bits of every bundle written before stay; the float copy is one band's.
            grey = np.empty(pixels.shape[:2], np.float32)
            luma = np.array(_LUMA, np.float32)
            for r in range(0, len(grey), _GREY_BAND_ROWS):
                grey[r : r + _GREY_BAND_ROWS] = _to_unit_float(pixels[r : r + _GREY_BAND_ROWS, :, :3]) @ luma
            yield grey
        else:
            for c in range(colours):
                yield _to_unit_float(pixels[..., c])

    def _centre_box(self, rows: int, cols: int) -> tuple[float, float, float, float] | None:
        """`resize="shorter"`: the region of a rows x cols image that becomes the output, in its own pixel
        coordinates: the image scaled so its shorter side is `resize_to`, then its centre height x width
        (one Pillow resize of that region, which is what scaling the whole image and cropping it gives without
        resampling the margins). None when that region is the whole image at the output size."""
        shorter = min(rows, cols)
        crop_w, crop_h = self.width * shorter / self.resize_to, self.height * shorter / self.resize_to
        left, top = (cols - crop_w) / 2, (rows - crop_h) / 2
        if (rows, cols) == (self.height, self.width) and left == 0 and top == 0:
            return None
        return (left, top, left + crop_w, top + crop_h)


# The manifest's fields of format version 1, and those added with version 3 (written only when not the defaults).
_V1_FIELDS = ("height", "width", "channels", "invert", "resample")
_LATER_FIELDS = ("resize", "resize_to", "mean", "std")


def as_image_list(images: Any, limit: int | None = None) -> list[Any]:
    """Normalises the accepted input forms to a list of single images, with clear errors; more than
    `limit` images (when given) is an error, found without materialising a long iterable."""
    if isinstance(images, (str, os.PathLike, Image.Image)):
        return [images]
    if isinstance(images, np.ndarray):
        if images.ndim == 2 or (images.ndim == 3 and images.shape[-1] in (1, 3, 4)):
            return [images]
        if images.ndim in (3, 4):
            if len(images) == 0:
                raise ValueError(f"Expected at least one image. Received: an empty array of shape {images.shape}")
            _check_count(len(images), limit)
            return list(images)
        raise ValueError(
            "Expected an image of shape (H, W) or (H, W, C), or a stack (N, H, W[, C]). "
            f"Received: an array of shape {images.shape} (dtype {images.dtype})"
        )
    if isinstance(images, Iterable) and not isinstance(images, (bytes, bytearray, dict)):
        if limit is not None and hasattr(images, "__len__"):
            _check_count(len(images), limit)
        items = list(images if limit is None else itertools.islice(images, limit + 1))
        if not items:
            raise ValueError("Expected at least one image. Received: an empty sequence")
        if limit is not None and len(items) > limit:
            _check_count(None, limit)
        return items
    raise TypeError(
        "Expected a file path, a PIL image, a numpy array or a list of them. "
        f"Received: {type(images).__name__}"
    )


def _check_count(count: int | None, limit: int | None) -> None:
    if limit is not None and (count is None or count > limit):
        received = f"more than {limit} images" if count is None else f"{count} images"
        raise ValueError(
            f"Too many images in one call: at most {limit} (Preprocessing.max_images, or pass max_images=); "
            f"split the batch. Received: {received}"
        )


def _count_non_finite(array: np.ndarray) -> int:
    return int(array.size - np.count_nonzero(np.isfinite(array))) if array.dtype.kind == "f" else 0


def _non_finite_message(count: int) -> str:
    return (f"images contain NaN or Inf (float pixels must be finite, in [0, 1]). "
            f"Received: {count} non-finite values")


def _load(image: Any, max_pixels: int | None = DEFAULT_MAX_PIXELS, draft: tuple[int, int] | None = None) -> np.ndarray:
    """One image (path, PIL image or array) as pixels: `edgemeta.format.images.decode_image`."""
    if isinstance(image, (bytes, bytearray, memoryview)):  # decode_image's form for the service, not this API's
        raise TypeError("Expected a file path, a PIL image or a numpy array. Received: bytes (for a file's "
                        "contents, pass PIL.Image.open(io.BytesIO(data)))")
    return decode_image(image, max_pixels=max_pixels, draft=draft)


def _float_image(plane: np.ndarray) -> Image.Image:
    """A contiguous float32 plane as a Pillow "F" image on the same memory (`Image.fromarray` copies it)."""
    return Image.frombuffer("F", (plane.shape[1], plane.shape[0]), plane, "raw", "F", 0, 1)


def _check_unit_range(array: np.ndarray) -> None:
    """Raises unless `array` holds pixels `_to_unit_float` takes: bool, uint8, or finite floats in [0, 1]."""
    if array.dtype in (np.bool_, np.uint8):
        return
    if not np.issubdtype(array.dtype, np.floating):
        raise TypeError(
            "Expected pixels of dtype uint8 (0..255), bool, or float (finite, in [0, 1]). "
            f"Received: dtype {array.dtype}"
        )
    bad = _count_non_finite(array)
    if bad:
        raise ValueError(_non_finite_message(bad))
    lo, hi = float(array.min()), float(array.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"Float images must be in [0, 1] (or pass uint8 in 0..255). Received: values in [{lo:.3g}, {hi:.3g}]")


def _to_unit_float(array: np.ndarray) -> np.ndarray:
    """Checked pixels (`_check_unit_range`) as a new contiguous float32 array in [0, 1]."""
    if array.dtype == np.uint8:
        return np.divide(array, 255.0, dtype=np.float32)  # float32(array) / 255 in one pass
    return np.ascontiguousarray(array, dtype=np.float32) if array.dtype != np.float32 else array.copy()


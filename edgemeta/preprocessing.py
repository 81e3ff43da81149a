"""Turns raw images (arrays or files) into model input, exactly as a bundle's manifest describes.

Training and the on-device runtime share this one function, so what the learner saw during
meta-training and what the board feeds the model cannot drift apart. Needs numpy and Pillow only.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Iterable

import numpy as np
from PIL import Image

_RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "lanczos": Image.Resampling.LANCZOS,
    "nearest": Image.Resampling.NEAREST,
}


@dataclass(frozen=True)
class Preprocessing:
    """How a raw image becomes a model input of shape `(height, width, channels)` in [0, 1].

    Steps, in order: to float in [0, 1] (uint8 / 255; floats must already be in [0, 1]);
    to grayscale (ITU-R 601 luma) when `channels == 1`; resize with Pillow (`resample`);
    invert (`1 - x`) when `invert`, e.g. so that Omniglot's black ink on white becomes 1 on 0.
    """

    height: int = 28
    width: int = 28
    channels: int = 1
    invert: bool = False
    resample: str = "bilinear"
    # At most this many images per call (override per call with `max_images=`): a bound on the memory
    # one request can take on a small board. Not part of the manifest.
    max_images: ClassVar[int] = 1024

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3. Received: {self.channels}")
        if self.resample not in _RESAMPLE:
            raise ValueError(f"resample must be one of {sorted(_RESAMPLE)}. Received: {self.resample!r}")
        if self.height < 1 or self.width < 1:
            raise ValueError(f"height and width must be positive. Received: {self.height}x{self.width}")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, self.channels)

    def to_dict(self) -> dict[str, Any]:
        return {"grayscale": self.channels == 1, "scale": "0..1", **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preprocessing":
        return cls(**{k: d[k] for k in ("height", "width", "channels", "invert", "resample")})

    def __call__(self, images: Any, max_images: int | None = None) -> np.ndarray:
        """Preprocesses one image or many; returns float32 `(n, height, width, channels)`.

        Accepts a file path, a PIL image, a `(H, W)` or `(H, W, C)` array, a stacked `(N, H, W[, C])`
        array, or a list of any of these (sizes may differ); pixels uint8 (0..255), bool, or finite
        floats in [0, 1]. At most `max_images` (default `Preprocessing.max_images`) per call. Example:

        >>> Preprocessing(28, 28, 1, invert=True)(np.full((105, 105), 255, np.uint8)).shape
        (1, 28, 28, 1)
        """
        limit = self.max_images if max_images is None else max_images
        if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1:
            raise ValueError(f"max_images must be a positive integer. Received: {limit!r}")
        items = as_image_list(images, limit=int(limit))
        # Every NaN/Inf of the batch is counted before any work, so the error says how bad it is.
        if isinstance(images, np.ndarray):
            bad = _count_non_finite(images)  # one pass over the stack, the same count as per image
        else:
            bad = sum(_count_non_finite(item) for item in items if isinstance(item, np.ndarray))
        if bad:
            raise ValueError(_non_finite_message(bad))
        if len(items) == 1:
            return self.one(items[0])[None]
        stack = _grayscale_stack(images, items)
        if stack is not None:
            out = self._stack(stack)
            if out is not None:
                return out
        return np.stack([self.one(image) for image in items])

    def one(self, image: Any) -> np.ndarray:
        """Preprocesses a single image (array or path) to float32 `(height, width, channels)`."""
        x = _to_unit_float(_load(image))
        if x.ndim == 3:
            if x.shape[-1] == 4:  # RGBA: drop alpha
                x = x[..., :3]
            if self.channels == 1 and x.shape[-1] == 3:
                x = x @ np.array([0.299, 0.587, 0.114], np.float32)
            elif x.shape[-1] == 1:
                x = x[..., 0]
        # A grayscale image is one plane, resized once however many channels the model takes.
        planes = [x] if x.ndim == 2 else [x[..., c] for c in range(x.shape[-1])]
        if x.shape[:2] != (self.height, self.width):
            size, resample = (self.width, self.height), _RESAMPLE[self.resample]
            planes = [np.asarray(Image.fromarray(p.astype(np.float32, copy=False)).resize(size, resample)) for p in planes]
        if len(planes) == 1:
            out = planes[0][..., None]
            if self.channels > 1:
                out = np.repeat(out, self.channels, axis=-1)
        else:
            out = np.stack(planes, axis=-1)
        out = np.clip(out, 0.0, 1.0)  # a new float32 array: the steps below may work in place
        return np.subtract(1.0, out, out=out) if self.invert else out

    def _stack(self, x: np.ndarray) -> np.ndarray | None:
        """`(N, H, W)` grayscale images of one size -> `(N, height, width, channels)`: the same values as
        `one` per image, from a few large Pillow calls instead of N small ones. None when this path
        cannot promise the same values (an unsupported dtype, a float out of range: `one` says which
        image; a resize Pillow does not split into two passes here), so the caller takes `one`."""
        out = np.empty((len(x), self.height, self.width, self.channels), np.float32)
        for i in range(0, len(x), _STACK_CHUNK):  # bounded temporaries: ~9 bytes per raw pixel in a chunk
            chunk = x[i : i + _STACK_CHUNK]
            if chunk.dtype == np.uint8:
                chunk = np.divide(chunk, 255.0, dtype=np.float32)  # as _to_unit_float
            elif chunk.dtype == np.bool_:
                chunk = chunk.astype(np.float32)
            elif np.issubdtype(chunk.dtype, np.floating) and chunk.size and float(chunk.min()) >= 0.0 and float(chunk.max()) <= 1.0:
                chunk = chunk.astype(np.float32)
            else:
                return None
            if chunk.shape[1:] != (self.height, self.width):
                chunk = _resize_stack(chunk, self.height, self.width, self.resample)
                if chunk is None:
                    return None
            np.clip(chunk[..., None], 0.0, 1.0, out=out[i : i + len(chunk), :, :, :1])
        if self.channels > 1:
            out[..., 1:] = out[..., :1]
        return np.subtract(1.0, out, out=out) if self.invert else out


_STACK_CHUNK = 8  # images per Pillow call in Preprocessing._stack


def _grayscale_stack(images: Any, items: list[Any]) -> np.ndarray | None:
    """The images as one `(N, H, W)` array when they are grayscale arrays of one size and dtype (a
    stacked array, or a list of such arrays), else None."""
    if isinstance(images, np.ndarray):
        stack = images
    elif all(isinstance(item, np.ndarray) for item in items) and len({(i.shape, i.dtype) for i in items}) == 1:
        stack = np.stack(items)
    else:
        return None
    if stack.ndim == 4 and stack.shape[-1] == 1:
        stack = stack[..., 0]
    return stack if stack.ndim == 3 and stack.shape[1] > 0 and stack.shape[2] > 0 else None


# (H, W, height, width, resample) -> the order of the one-axis resizes that gives exactly Pillow's 2-D
# resize of that size, or None. Pillow picks which axis it resamples first by the sizes involved, and
# the intermediate image is float32, so the order changes the last bits; it is found, once per size, by
# comparing both orders with Pillow's own 2-D resize of a probe image, not assumed.
_PASS_ORDERS: dict[tuple[int, int, int, int, str], tuple[str, ...] | None] = {}


def _resize_stack(x: np.ndarray, height: int, width: int, resample: str) -> np.ndarray | None:
    """`(N, H, W)` float32 -> `(N, height, width)` float32, equal to Pillow resizing each image: a
    one-axis resize of all rows of the stack at once (the images stacked vertically), then of all
    columns (the images side by side); each output pixel of a one-axis pass depends on its row (or
    column) alone, so stacking changes nothing."""
    order = _pass_order(x.shape[1], x.shape[2], height, width, resample)
    if order is None:
        return None
    for axis in order:
        x = _resize_axis(x, height if axis == "height" else width, axis, resample)
    return x


def _pass_order(h: int, w: int, height: int, width: int, resample: str) -> tuple[str, ...] | None:
    key = (h, w, height, width, resample)
    found = _PASS_ORDERS.get(key, ())
    if found == ():
        axes = [a for a, changed in (("width", w != width), ("height", h != height)) if changed]
        # A probe with no structure for two orders to agree on by chance (float32, in [0, 1]).
        k = np.arange(h * w, dtype=np.float64)
        probe = (np.sin(k * 12.9898 + 0.5) * 43758.5453 % 1.0).astype(np.float32).reshape(1, h, w)
        expected = np.asarray(Image.fromarray(probe[0]).resize((width, height), _RESAMPLE[resample]))
        found = None
        for order in (tuple(axes), tuple(axes[::-1])):
            y = probe
            for axis in order:
                y = _resize_axis(y, height if axis == "height" else width, axis, resample)
            if np.array_equal(y[0].view(np.uint32), expected.view(np.uint32)):  # bit for bit, signed zeros too
                found = order
                break
        if len(_PASS_ORDERS) >= 256:  # photos come in many sizes: keep the table small
            _PASS_ORDERS.clear()
        _PASS_ORDERS[key] = found
    return found


def _resize_axis(x: np.ndarray, size: int, axis: str, resample: str) -> np.ndarray:
    n, h, w = x.shape
    if axis == "width":  # the images one below the other: one tall image, resized in width only
        tall = Image.fromarray(np.ascontiguousarray(x).reshape(n * h, w))
        return np.asarray(tall.resize((size, n * h), _RESAMPLE[resample])).reshape(n, h, size)
    wide = np.ascontiguousarray(x.transpose(1, 0, 2)).reshape(h, n * w)  # side by side: one wide image
    out = np.asarray(Image.fromarray(wide).resize((n * w, size), _RESAMPLE[resample]))
    return out.reshape(size, n, w).transpose(1, 0, 2)


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


def _load(image: Any) -> np.ndarray:
    if isinstance(image, (str, os.PathLike)):
        if not os.path.isfile(image):
            raise FileNotFoundError(f"Image file not found. Received: {os.fspath(image)!r}")
        try:
            with Image.open(image) as im:
                return np.asarray(im.convert("RGB") if im.mode not in ("L", "RGB", "RGBA", "1") else im)
        except (OSError, Image.DecompressionBombError) as e:  # not an image, unreadable, or a decompression bomb
            raise ValueError(f"Cannot read an image from the file ({e}). Received: {os.fspath(image)!r}") from e
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
    return array


def _to_unit_float(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.bool_:
        return array.astype(np.float32)
    if array.dtype == np.uint8:
        return np.divide(array, 255.0, dtype=np.float32)  # float32(array) / 255 in one pass
    if np.issubdtype(array.dtype, np.floating):
        bad = _count_non_finite(array)
        if bad:
            raise ValueError(_non_finite_message(bad))
        lo, hi = float(array.min()), float(array.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(
                "Float images must be in [0, 1] (or pass uint8 in 0..255). "
                f"Received: values in [{lo:.3g}, {hi:.3g}]"
            )
        return array.astype(np.float32)
    raise TypeError(
        "Expected pixels of dtype uint8 (0..255), bool, or float (finite, in [0, 1]). "
        f"Received: dtype {array.dtype}"
    )


"""Each pixel's k x k neighbourhood as channels: the model input of bundles whose first convolution runs as a 1x1 one.

A k x k 'same' convolution over C channels is the same function as a 1x1 convolution over the image's
patches: k*k*C channels per pixel, in (row offset, column offset, channel) order, zero beyond the border.
On one channel (a grayscale image) the second is what int8 kernels run fast: XNNPACK's int8 convolution
pays per pixel and kernel tap, and a tap of one channel does almost no work for that price. The
converter exports such models (`converters.tflite.patch_input`) and the runtime builds the patches
(`PatchBuffer`). numpy only: the board uses it.

Example:
    >>> x = np.arange(4, dtype=np.float32).reshape(1, 2, 2, 1)
    >>> image_patches(x, 3)[0, 0, 0].tolist()  # pixel (0, 0): its 3x3 neighbourhood, zero outside
    [0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 2.0, 3.0]
"""

from __future__ import annotations

import numpy as np


def patches_shape(image_shape: tuple[int, int, int], k: int) -> tuple[int, int, int]:
    """(H, W, C) -> (H, W, k*k*C): the model input shape for patches of size `k` (1: the image itself)."""
    h, w, c = image_shape
    return (h, w, k * k * c)


def image_patches(images: np.ndarray, k: int, pad_value: float | int = 0) -> np.ndarray:
    """(n, H, W, C) -> (n, H, W, k*k*C), beyond the border `pad_value` (a plain copy, e.g. for calibration)."""
    buffer = PatchBuffer(images.shape, k, images.dtype, pad_value)
    buffer.interior[...] = images
    return buffer.fill()


class PatchBuffer:
    """Buffers kept for one batch shape: write the images into `interior`, then `fill()` returns the
    patches. One gather per call through an index kept for one image (8 bytes per patch value of one
    image), no allocation: about 12 us for a 28x28 int8 image here (a copy of the strided window view
    took 13.5), however many images the batch holds."""

    def __init__(self, shape: tuple[int, int, int, int], k: int, dtype, pad_value: float | int = 0) -> None:
        if not isinstance(k, int) or k < 1 or k % 2 == 0:
            raise ValueError(f"patch size must be a positive odd integer. Received: {k!r}")
        n, h, w, c = shape
        p = k // 2
        self.shape = tuple(shape)
        self.padded = np.full((n, h + 2 * p, w + 2 * p, c), pad_value, dtype)  # the border stays pad_value
        self.interior = self.padded[:, p : p + h, p : p + w, :]
        # Where each patch value of one image is in its padded copy: the window view of the positions.
        positions = np.arange(self.padded[0].size).reshape(self.padded.shape[1:])
        sh, sw, sc = positions.strides
        windows = np.lib.stride_tricks.as_strided(positions, (h, w, k, k, c), (sh, sw, sh, sw, sc), writeable=False)
        self._index = windows.reshape(-1).astype(np.intp)
        self._padded_rows = self.padded.reshape(n, -1)
        self.patches = np.empty((n, h, w, k * k * c), dtype)
        self._patch_rows = self.patches.reshape(n, -1)

    def fill(self) -> np.ndarray:
        np.take(self._padded_rows, self._index, axis=1, out=self._patch_rows, mode="clip")  # indices are in range
        return self.patches

"""edgemeta.format.patches: each pixel's k x k neighbourhood as channels, as a 'same' convolution sees it."""

import numpy as np
import pytest

from edgemeta.format.patches import PatchBuffer, image_patches, patches_shape


def naive_patches(x: np.ndarray, k: int, pad_value) -> np.ndarray:
    n, h, w, c = x.shape
    p = k // 2
    out = np.full((n, h, w, k, k, c), pad_value, x.dtype)
    for i in range(h):
        for j in range(w):
            for dy in range(k):
                for dx in range(k):
                    y, xx = i + dy - p, j + dx - p
                    if 0 <= y < h and 0 <= xx < w:
                        out[:, i, j, dy, dx] = x[:, y, xx]
    return out.reshape(n, h, w, k * k * c)


@pytest.mark.parametrize("k,shape,dtype,pad", [(3, (2, 5, 7, 1), np.float32, 0.0), (3, (1, 4, 4, 2), np.int8, -128),
                                               (5, (3, 6, 5, 1), np.float32, 0.0), (1, (2, 3, 3, 1), np.float32, 0.0)])
def test_patches_are_each_pixels_neighbourhood(k, shape, dtype, pad):
    x = np.random.default_rng(0).integers(-100, 100, shape).astype(dtype)
    assert np.array_equal(image_patches(x, k, pad), naive_patches(x, k, pad))
    assert image_patches(x, k, pad).shape[1:] == patches_shape(shape[1:], k)


def test_a_kept_buffer_gives_each_batch_its_own_patches():
    rng = np.random.default_rng(1)
    buffer = PatchBuffer((2, 6, 6, 1), 3, np.int8, -128)
    for _ in range(3):  # the border stays the pad value; nothing of the previous batch leaks through
        x = rng.integers(-128, 128, (2, 6, 6, 1)).astype(np.int8)
        buffer.interior[...] = x
        assert np.array_equal(buffer.fill(), naive_patches(x, 3, -128))


def test_even_or_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="patch size must be a positive odd integer. Received: 2"):
        PatchBuffer((1, 4, 4, 1), 2, np.float32)
    with pytest.raises(ValueError, match="Received: 0"):
        image_patches(np.zeros((1, 4, 4, 1), np.float32), 0)

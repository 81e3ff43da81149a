"""Loads a user's images from a folder with one sub-folder per class."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edgemeta.data.dataset import ImageClassDataset, from_raw
from edgemeta.format.images import decode_image
from edgemeta.format.preprocessing import Preprocessing

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
# A pixel whose channels differ by more than this (of 255) is colour; a gray picture stored as RGB (a scan, a
# JPEG's chroma rounding) differs by a few levels at most.
COLOUR_SPREAD = 8
# Images `detect_channels` decodes: the first of each class, then the second, ... (a large JPEG at a reduced scale).
COLOUR_SAMPLE = 32


def list_image_folder(root: str | os.PathLike) -> dict[str, list[Path]]:
    """Maps each sub-folder name of `root` to its sorted image files; errors when there are none."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Image folder not found. Received: {str(root)!r}")
    classes = {
        d.name: sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        for d in sorted(root.iterdir())
        if d.is_dir() and not d.name.startswith(".")
    }
    empty = [name for name, files in classes.items() if not files]
    if not classes or empty:
        raise ValueError(
            f"Expected {str(root)!r} to hold one sub-folder per class, each with images "
            f"({', '.join(sorted(IMAGE_SUFFIXES))}). Received: "
            + (f"empty class folder(s) {empty}" if empty else "no sub-folders")
        )
    return classes


def load_image_folder(root: str | os.PathLike, preprocessing: Preprocessing) -> ImageClassDataset:
    """Loads `root/<class>/<image>` files; `raw` keeps the file paths."""
    classes = list_image_folder(root)
    raw, labels = [], []
    for c, files in enumerate(classes.values()):
        raw += files
        labels += [c] * len(files)
    names = list(classes)
    return from_raw(raw, labels, names, [Path(root).name] * len(names), preprocessing, f"folder:{Path(root).name}")


def detect_channels(root: str | os.PathLike, sample: int = COLOUR_SAMPLE) -> int:
    """3 when any of `sample` images of `root` (the first of each class, then the second, ...) is in colour (a
    pixel whose channels differ by more than `COLOUR_SPREAD` of 255), else 1: a folder of photos keeps its
    colour and one of scans or drawings stays grayscale."""
    classes = list(list_image_folder(root).values())
    picked: list[Path] = []
    for rank in range(max(len(files) for files in classes)):
        picked += [files[rank] for files in classes if rank < len(files)][: sample - len(picked)]
        if len(picked) >= sample:
            break
    return 3 if any(is_colour(decode_image(path, draft=(64, 64))) for path in picked) else 1


def is_colour(pixels: np.ndarray) -> bool:
    """Whether decoded pixels (`decode_image`'s forms) hold colour: RGB whose channels differ by more than
    `COLOUR_SPREAD` of 255 somewhere."""
    if pixels.ndim != 3 or pixels.shape[-1] < 3:
        return False
    rgb = pixels[..., :3].astype(np.float32)
    spread = float((rgb.max(axis=-1) - rgb.min(axis=-1)).max())
    return spread > (COLOUR_SPREAD if pixels.dtype == np.uint8 else COLOUR_SPREAD / 255)

"""Loads a user's images from a folder with one sub-folder per class."""

from __future__ import annotations

import os
from pathlib import Path

from edgemeta.data.dataset import ImageClassDataset, from_raw
from edgemeta.format.preprocessing import Preprocessing

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


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

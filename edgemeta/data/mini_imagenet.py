"""Loads mini-ImageNet (Vinyals et al. 2016; the split of Ravi & Larochelle 2017) from its zip files, in place.

The zips (`train.zip`: 64 classes x 300 images, `val.zip`: 16 x 100; 84x84 RGB JPEGs laid out as
`<split>/<wnid>/<file>.jpg`) are read where `$EDGEMETA_MINI_IMAGENET_DIR` says, else from
`../shared/datasets/mini-imagenet` beside the repository; they are never copied. Every JPEG is decoded by
`edgemeta.format.images.decode_image`, the runtime's own decoder, and the decoded pixels (uint8, 406 MB for
`train`) are cached as a `.npy` under `$XDG_CACHE_HOME/edgemeta/mini-imagenet` (default `~/.cache`), keyed by
the zip's name, size and modification time, so a second load skips the decoding. TensorFlow-free.
"""

from __future__ import annotations

import json
import os
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgemeta.data.dataset import ImageClassDataset, from_raw
from edgemeta.format.atomic import atomic_writer
from edgemeta.format.images import decode_image
from edgemeta.format.preprocessing import Preprocessing

ENV_DIR = "EDGEMETA_MINI_IMAGENET_DIR"
SPLITS = ("train", "val")  # the 20 test classes of the split are not distributed here: select models on val
SIDE = 84  # every image is SIDE x SIDE RGB
# The images as they are: 84x84 colour, no resize, no normalization (a run chooses those: edgemeta.data.splits).
PREPROCESSING = Preprocessing(height=SIDE, width=SIDE, channels=3)
_CACHE_VERSION = 1  # bumped when what the cache holds changes, so an old file is not read as the new kind


def default_data_dir() -> Path:
    """`$EDGEMETA_MINI_IMAGENET_DIR`, else `../shared/datasets/mini-imagenet` beside the repository."""
    env = os.environ.get(ENV_DIR)
    return Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "mini-imagenet"


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgemeta" / "mini-imagenet"


def zip_path(split: str, data_dir: str | os.PathLike | None = None) -> Path:
    """The zip file of `split` ("train" or "val"), or FileNotFoundError saying where it was looked for."""
    if split not in SPLITS:
        raise ValueError(f"mini-ImageNet split must be one of {', '.join(SPLITS)}. Received: {split!r}")
    directory = Path(data_dir) if data_dir is not None else default_data_dir()
    path = directory / f"{split}.zip"
    if not path.is_file():
        raise FileNotFoundError(f"mini-ImageNet's {split}.zip not found in {str(directory)!r}: set ${ENV_DIR} (or pass "
                                f"data_dir / --data-dir) to the directory holding train.zip and val.zip. Received: "
                                f"{str(path)!r} does not exist")
    return path


def load_pixels(split: str, data_dir: str | os.PathLike | None = None, classes: int | Sequence[str] | None = None,
                cache: bool = True, cache_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """`(pixels, labels, wnids)` of a split: uint8 `(n, 84, 84, 3)` as `decode_image` gives them, int32 labels
    indexing `wnids` (class folder names, sorted), images sorted by file name within each class.

    `classes`: the first `classes` classes, or these wnids (in this order); None: all. With `cache`, the
    whole split's pixels are read from (or written to) `cache_dir` (default `default_cache_dir()`); a subset
    of classes without a cache decodes only its own images and writes no cache."""
    path = zip_path(split, data_dir)
    cache_file = _cache_file(path, split, cache_dir) if cache else None
    loaded = _read_cache(cache_file) if cache_file is not None and cache_file.is_file() else None
    if loaded is None:
        with zipfile.ZipFile(path) as z:
            members = _members(z, split)
            all_wnids = sorted(members)
            wanted = all_wnids if cache_file is not None else _select(all_wnids, classes, split)
            pixels, labels = _decode(z, [members[w] for w in wanted], split)
        if cache_file is not None:
            _write_cache(cache_file, pixels, labels, wanted)
            loaded = pixels, labels, wanted
        else:
            return pixels, labels, wanted
    pixels, labels, wnids = loaded
    chosen = _select(wnids, classes, split)
    if chosen == wnids:
        return pixels, labels, wnids
    index = {w: i for i, w in enumerate(wnids)}
    keep = np.concatenate([np.flatnonzero(labels == index[w]) for w in chosen])
    remap = np.full(len(wnids), -1, np.int32)
    remap[[index[w] for w in chosen]] = np.arange(len(chosen), dtype=np.int32)
    return pixels[keep], remap[labels[keep]], chosen


def load_mini_imagenet(split: str = "train", data_dir: str | os.PathLike | None = None,
                       preprocessing: Preprocessing = PREPROCESSING, classes: int | Sequence[str] | None = None,
                       keep_raw: bool = True, cache: bool = True, cache_dir: str | os.PathLike | None = None
                       ) -> ImageClassDataset:
    """One split of mini-ImageNet as classes (wnids), all in the group `split`, preprocessed by `preprocessing`.
    `raw` holds each image's decoded uint8 pixels `(84, 84, 3)`, as the runtime decodes the JPEG file (for
    inputs of at least 11 x 11; below that the runtime would decode a JPEG at a reduced scale).
    `classes`, `cache`, `cache_dir`: as for `load_pixels`.

    Example:
        >>> ds = load_mini_imagenet("val")  # doctest: +SKIP
        >>> ds.num_classes, len(ds), ds.images.shape[1:]  # doctest: +SKIP
        (16, 1600, (84, 84, 3))
    """
    pixels, labels, wnids = load_pixels(split, data_dir, classes, cache, cache_dir)
    # Views into the one array (no copy per image), which the dataset keeps alive.
    raw = list(pixels)
    return from_raw(raw, labels, wnids, [split] * len(wnids), preprocessing, f"mini-imagenet:{split}", keep_raw)


# -- internals ---------------------------------------------------------------------------------------
def _members(z: zipfile.ZipFile, split: str) -> dict[str, list[str]]:
    """The JPEG members of each class folder, sorted by name."""
    members: dict[str, list[str]] = {}
    for name in z.namelist():
        parts = name.split("/")
        if len(parts) == 3 and parts[0] == split and parts[2].lower().endswith((".jpg", ".jpeg")):
            members.setdefault(parts[1], []).append(name)
    if not members:
        raise ValueError(f"Expected {z.filename!r} to hold {split}/<wnid>/<file>.jpg. Received: no such member among "
                         f"{len(z.namelist())} (first: {z.namelist()[:3]})")
    return {wnid: sorted(files) for wnid, files in members.items()}


def _select(wnids: list[str], classes: int | Sequence[str] | None, split: str) -> list[str]:
    if classes is None:
        return list(wnids)
    if isinstance(classes, (int, np.integer)) and not isinstance(classes, bool):
        if not 1 <= classes <= len(wnids):
            raise ValueError(f"classes must be in [1, {len(wnids)}] for mini-ImageNet's {split}. Received: {classes}")
        return list(wnids[: int(classes)])
    chosen = list(classes)
    unknown = [w for w in chosen if w not in set(wnids)]
    if unknown or not chosen or len(set(chosen)) != len(chosen):
        raise ValueError(f"classes must be distinct wnids of mini-ImageNet's {split} (e.g. {wnids[0]!r}). "
                         f"Received: {chosen[:5]}{' (unknown: ' + repr(unknown[:5]) + ')' if unknown else ''}")
    return chosen


def _decode(z: zipfile.ZipFile, files_per_class: list[list[str]], split: str) -> tuple[np.ndarray, np.ndarray]:
    total = sum(len(files) for files in files_per_class)
    pixels = np.empty((total, SIDE, SIDE, 3), np.uint8)
    labels = np.empty(total, np.int32)
    i = 0
    for label, files in enumerate(files_per_class):
        for name in files:
            # No pixel limit and no draft: an 84x84 JPEG, decoded as the runtime decodes a file of it.
            image = decode_image(z.read(name), max_pixels=None)
            if image.shape != (SIDE, SIDE, 3) or image.dtype != np.uint8:
                raise ValueError(f"Expected mini-ImageNet's images to be {SIDE}x{SIDE} RGB JPEGs. Received: {name!r} in "
                                 f"{z.filename!r} decodes to {image.dtype} {image.shape}")
            pixels[i], labels[i] = image, label
            i += 1
    return pixels, labels


def _cache_file(path: Path, split: str, cache_dir: str | os.PathLike | None) -> Path:
    stat = path.stat()
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return directory / f"{split}-v{_CACHE_VERSION}-{stat.st_size}-{stat.st_mtime_ns}.npy"


def _read_cache(file: Path) -> tuple[np.ndarray, np.ndarray, list[str]] | None:
    """The cached `(pixels, labels, wnids)`, or None (with a warning) when the files are unreadable or disagree."""
    try:
        meta = json.loads(file.with_suffix(".json").read_text())
        pixels = np.load(file, allow_pickle=False)
        labels = np.asarray(meta["labels"], np.int32)
        wnids = [str(w) for w in meta["wnids"]]
        if (pixels.dtype != np.uint8 or pixels.shape[1:] != (SIDE, SIDE, 3) or len(pixels) != len(labels)
                or (len(labels) and not 0 <= labels.min() <= labels.max() < len(wnids))):
            raise ValueError(f"{pixels.dtype} {pixels.shape} for {len(labels)} labels of {len(wnids)} classes")
    except (OSError, ValueError, KeyError, TypeError) as e:
        warnings.warn(f"Ignoring the mini-ImageNet cache {str(file)!r} (decoding the zip again): {e}", stacklevel=3)
        return None
    return pixels, labels, wnids


def _write_cache(file: Path, pixels: np.ndarray, labels: np.ndarray, wnids: list[str]) -> None:
    """Writes the pixels, then their labels (the file a reader checks first is complete when it exists), and
    removes the split's older caches. A cache that cannot be written is a warning: the data is loaded."""
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        with atomic_writer(file) as f:
            np.save(f, pixels, allow_pickle=False)
        with atomic_writer(file.with_suffix(".json")) as f:
            f.write(json.dumps({"wnids": wnids, "labels": labels.tolist()}).encode())
        split = file.name.split("-", 1)[0]
        for old in file.parent.glob(f"{split}-v*"):
            if old.stem != file.stem:
                old.unlink(missing_ok=True)
    except OSError as e:
        warnings.warn(f"Could not cache mini-ImageNet's decoded pixels in {str(file.parent)!r}: {e}", stacklevel=3)

"""Loads Omniglot (Lake et al. 2015) from the official zip files, downloading missing ones with md5 checks."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import urllib.request
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from edgemeta.data.dataset import ImageClassDataset, from_raw
from edgemeta.format.preprocessing import Preprocessing

BASE_URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/"
# md5s of the official files (github.com/brendenlake/omniglot, python/).
MD5 = {
    "images_background.zip": "68d2efa1b9178cc56df9314c21c6e718",
    "images_evaluation.zip": "6b91aef0f799c5bb55b94e3f2daec811",
    "images_background_small1.zip": "e704a628b5459e08445c13499850abc4",
    "images_background_small2.zip": "b75a71a51d3b13f821f212756fe481fd",
}
SETS = {
    "full": ("images_background.zip", "images_evaluation.zip"),
    "background": ("images_background.zip",),
    "evaluation": ("images_evaluation.zip",),
    "small": ("images_background_small1.zip", "images_background_small2.zip"),
}
# Omniglot is black ink (0) on white (255); inverting makes ink the signal, background zero.
PREPROCESSING = Preprocessing(height=28, width=28, channels=1, invert=True, resample="bilinear")
ENV_DIR = "EDGEMETA_OMNIGLOT_DIR"


def default_data_dir() -> Path:
    """`$EDGEMETA_OMNIGLOT_DIR`, else `~/.cache/edgemeta/omniglot`."""
    return Path(os.environ.get(ENV_DIR) or Path.home() / ".cache" / "edgemeta" / "omniglot")


def resolve_files(data_dir: str | os.PathLike | None = None, sets: str = "auto", download: bool = True) -> list[Path]:
    """Finds (or downloads, md5-checked) the zip files of `sets` in `data_dir`.

    `sets="auto"` uses the full background+evaluation files when either is present, else the small
    files when present, else downloads the full ones.
    """
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    if sets == "auto":
        present = {p.name for p in data_dir.glob("images_*.zip")} if data_dir.is_dir() else set()
        if present & set(SETS["full"]):
            names = [n for n in SETS["full"] if n in present]
        elif present & set(SETS["small"]):
            names = [n for n in SETS["small"] if n in present]
        else:
            names = list(SETS["full"])
    elif sets in SETS:
        names = list(SETS[sets])
    else:
        raise ValueError(f"Unknown Omniglot set {sets!r}. Expected 'auto' or one of {sorted(SETS)}.")
    missing = [n for n in names if not (data_dir / n).is_file()]
    if missing and download:
        for name in missing:
            try:
                _download(BASE_URL + name, data_dir / name, MD5[name])
            except OSError as e:
                raise FileNotFoundError(_missing_message(data_dir, missing, f"download failed: {e}")) from e
    elif missing:
        raise FileNotFoundError(_missing_message(data_dir, missing, "download=False"))
    return [data_dir / n for n in names]


def _missing_message(data_dir: Path, missing: Sequence[str], why: str) -> str:
    return (
        f"Omniglot files not found ({why}): {', '.join(missing)}. "
        f"Put them in {str(data_dir)!r} (or set ${ENV_DIR} / pass data_dir). "
        f"They are at {BASE_URL}<name> (md5s in edgemeta.data.omniglot.MD5)."
    )


def _download(url: str, dest: Path, md5: str) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as f:
        shutil.copyfileobj(response, f)
    actual = hashlib.md5(tmp.read_bytes()).hexdigest()
    if actual != md5:
        tmp.unlink()
        raise OSError(f"md5 mismatch for {url}: received {actual}, expected {md5}")
    os.replace(tmp, dest)


def load_omniglot(
    data_dir: str | os.PathLike | None = None,
    alphabets: Sequence[str] | None = None,
    sets: str = "auto",
    preprocessing: Preprocessing = PREPROCESSING,
    download: bool = True,
    keep_raw: bool = True,
) -> ImageClassDataset:
    """Loads Omniglot characters as classes, grouped by alphabet.

    Characters present in several zips (Greek and Latin are in both small files) are loaded once.
    `raw` holds the original 105x105 uint8 images (ink 0, background 255), as a board would see them.

    Example:
        >>> ds = load_omniglot("../shared/datasets/omniglot", alphabets=["Latin"])  # doctest: +SKIP
        >>> ds.num_classes, ds.images.shape[1:]  # doctest: +SKIP
        (26, (28, 28, 1))
    """
    files = resolve_files(data_dir, sets, download)
    wanted = set(alphabets) if alphabets is not None else None
    by_char: dict[tuple[str, str], list[np.ndarray]] = {}
    seen_alphabets: set[str] = set()
    for path in files:
        with zipfile.ZipFile(path) as z:
            members = sorted(n for n in z.namelist() if n.endswith(".png"))
            chars_here: set[tuple[str, str]] = set()
            for member in members:
                parts = member.split("/")
                if len(parts) < 4:
                    continue
                alphabet, character = parts[-3], parts[-2]
                seen_alphabets.add(alphabet)
                key = (alphabet, character)
                if (wanted is not None and alphabet not in wanted) or (key in by_char and key not in chars_here):
                    continue  # not asked for, or already loaded from an earlier file
                chars_here.add(key)
                with Image.open(io.BytesIO(z.read(member))) as im:
                    by_char.setdefault(key, []).append(np.asarray(im.convert("L"), np.uint8))
    if wanted is not None and wanted - seen_alphabets:
        raise ValueError(
            f"Alphabet(s) {sorted(wanted - seen_alphabets)} not in {[p.name for p in files]}. "
            f"Available: {sorted(seen_alphabets)}"
        )
    keys = sorted(by_char)
    raw, labels = [], []
    for c, key in enumerate(keys):
        raw += by_char[key]
        labels += [c] * len(by_char[key])
    return from_raw(
        raw, labels, [f"{a}/{ch}" for a, ch in keys], [a for a, _ in keys], preprocessing, "omniglot", keep_raw
    )

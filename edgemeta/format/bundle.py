"""The bundle: one directory holding `model.tflite` and `manifest.json`, written by the converters and
read by the runtime. The manifest is versioned; a reader refuses formats it does not know.

Needs only the standard library and numpy (its names, such as QUANTIZATIONS and METRICS, only the standard
library), so the board can read it without TensorFlow.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgemeta.format.atomic import atomic_write
from edgemeta.format.checksum import sha256_file, sha256_hex

if TYPE_CHECKING:  # imported where a manifest is read: the names below need only the standard library
    from edgemeta.format.preprocessing import Preprocessing

FORMAT = "edgemeta.bundle"
# A manifest is written with the oldest version that describes it, so older readers keep reading what
# they can use and refuse what they would feed wrongly: version 2 adds `input.patches` (edgemeta.format.patches).
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
MODEL_FILE = "model.tflite"
MANIFEST_FILE = "manifest.json"
# The names a manifest may carry; the converters, the compressor, board profiles and the CLI all take these.
# Each export mode, and the `quantization.scheme` it writes into the manifest.
QUANTIZATION_SCHEMES = {"int8": "full_integer", "int16x8": "int16_activations", "float16": "float16_weights",
                        "dynamic": "dynamic_range", "float32": "none"}
QUANTIZATIONS = tuple(QUANTIZATION_SCHEMES)
METRICS = ("squared_euclidean", "cosine")


@dataclass
class Manifest:
    """What a runtime needs to use `model.tflite`, and where it came from."""

    preprocessing: Preprocessing
    embedding_size: int
    metric: str = "squared_euclidean"
    quantization: dict[str, Any] = field(default_factory=dict)
    model_sha256: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)
    format_version: int = 1
    # Open-set calibration (edgemeta.train.openset): the distance beyond which a query is "unknown". Optional,
    # so manifests written before it existed still load under format version 1.
    open_set: dict[str, Any] = field(default_factory=dict)
    # The model takes each pixel's k x k neighbourhood as channels (edgemeta.format.patches), which the runtime
    # builds from the preprocessed image; 1: the image itself.
    input_patches: int = 1
    # (height, width, channels) of the raw uint8 images the board is expected to be handed (those the model
    # was trained on), for memory planning (edgemeta.runtime.budget). Optional: None means "about the
    # preprocessing's input size"; older readers ignore it.
    raw_shape: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        k = self.input_patches
        if not isinstance(k, int) or isinstance(k, bool) or k < 1 or k % 2 == 0:
            raise ValueError(f"input_patches must be a positive odd integer. Received: {k!r}")
        if self.raw_shape is not None:
            shape = self.raw_shape
            if (not isinstance(shape, (tuple, list)) or len(shape) != 3 or shape[2] not in (1, 3, 4)
                    or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape)):
                raise ValueError(f"raw_shape must be (height, width, channels) with channels 1, 3 or 4. Received: {shape!r}")
            self.raw_shape = tuple(shape)

    @property
    def model_input_shape(self) -> tuple[int, int, int]:
        """The model's input per image: the preprocessed image, or its patches."""
        from edgemeta.format.patches import patches_shape

        return patches_shape(self.preprocessing.input_shape, self.input_patches)

    def to_dict(self) -> dict[str, Any]:
        model_input = {"shape": list(self.model_input_shape), "dtype": self.quantization.get("input_dtype", "float32")}
        if self.input_patches > 1:
            model_input["patches"] = self.input_patches
        if self.raw_shape is not None:
            model_input["raw_shape"] = list(self.raw_shape)
        return {
            "format": FORMAT,
            "format_version": max(self.format_version, 2 if self.input_patches > 1 else 1),
            "model_file": MODEL_FILE,
            "model_sha256": self.model_sha256,
            "input": model_input,
            "preprocessing": self.preprocessing.to_dict(),
            "embedding_size": self.embedding_size,
            "metric": self.metric,
            "quantization": self.quantization,
            "provenance": self.provenance,
            "open_set": self.open_set,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "manifest") -> Manifest:
        from edgemeta.format.preprocessing import Preprocessing

        if d.get("format") != FORMAT:
            raise ValueError(f"{source} is not an edgemeta bundle manifest. Received: format={d.get('format')!r}")
        version = d.get("format_version")
        if version not in READABLE_VERSIONS:
            raise ValueError(
                f"{source} has bundle format version {version!r}; this edgemeta reads versions "
                f"{', '.join(map(str, READABLE_VERSIONS))}. Upgrade edgemeta or re-export the bundle."
            )
        model_input = d.get("input") or {}
        patches = model_input.get("patches", 1) if version >= 2 else 1
        raw_shape = model_input.get("raw_shape")
        return cls(
            preprocessing=Preprocessing.from_dict(d["preprocessing"]),
            embedding_size=int(d["embedding_size"]),
            metric=d["metric"],
            quantization=d.get("quantization", {}),
            model_sha256=d["model_sha256"],
            provenance=d.get("provenance", {}),
            format_version=version,
            open_set=d.get("open_set", {}),
            input_patches=patches,
            raw_shape=None if raw_shape is None else tuple(raw_shape),
        )


def sha256_of(path: str | os.PathLike) -> str:
    return sha256_file(path)


def write_bundle(directory: str | os.PathLike, model_bytes: bytes, manifest: Manifest) -> Path:
    """Writes `model.tflite` and `manifest.json` (with the model's sha256) into `directory`."""
    directory = Path(directory)
    atomic_write(directory / MODEL_FILE, model_bytes)
    manifest.model_sha256 = sha256_hex(model_bytes)
    _write_manifest(directory, manifest)
    return directory


def read_bundle(directory: str | os.PathLike) -> tuple[Path, Manifest]:
    """Reads and checks a bundle; returns the model path and its manifest.

    Raises a clear error when the directory, a file, or the model's hash is not what the manifest says.
    """
    manifest = read_manifest(directory)
    model_path = Path(directory) / MODEL_FILE
    actual = sha256_of(model_path)
    if actual != manifest.model_sha256:
        raise ValueError(
            f"{model_path} does not match its manifest (corrupt or replaced copy?). "
            f"Received sha256 {actual}; manifest says {manifest.model_sha256}."
        )
    return model_path, manifest


def read_manifest(directory: str | os.PathLike) -> Manifest:
    """The manifest of a complete bundle directory, with clear errors; the model is not read (the
    runtime reads it once, to hash, verify and load the same bytes)."""
    directory = Path(directory)
    manifest_path, model_path = directory / MANIFEST_FILE, directory / MODEL_FILE
    if not directory.is_dir():
        raise FileNotFoundError(f"Bundle directory not found. Received: {str(directory)!r}")
    for path in (manifest_path, model_path):
        if not path.is_file():
            raise FileNotFoundError(
                f"Not a complete bundle: {path.name} is missing. Received: {str(directory)!r}, "
                f"expected {MODEL_FILE} and {MANIFEST_FILE} inside it."
            )
    with open(manifest_path) as f:
        try:
            return Manifest.from_dict(json.load(f), source=str(manifest_path))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"Malformed bundle manifest {str(manifest_path)!r}: {e!r}") from e


def update_provenance(directory: str | os.PathLike, provenance: dict[str, Any]) -> None:
    """Replaces a bundle's provenance (e.g. with accuracy measured after export); the model is untouched."""
    _, manifest = read_bundle(directory)
    manifest.provenance = provenance
    _write_manifest(Path(directory), manifest)


def update_open_set(directory: str | os.PathLike, open_set: dict[str, Any]) -> None:
    """Replaces a bundle's open-set calibration (see edgemeta.train.openset); the model is untouched."""
    if not isinstance(open_set, dict):
        raise TypeError(f"open_set must be a dict. Received: {type(open_set).__name__}")
    _, manifest = read_bundle(directory)
    manifest.open_set = open_set
    _write_manifest(Path(directory), manifest)


def _write_manifest(directory: Path, manifest: Manifest) -> None:
    atomic_write(directory / MANIFEST_FILE, (json.dumps(manifest.to_dict(), indent=2) + "\n").encode())

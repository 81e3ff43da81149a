"""The bundle: one directory holding `model.tflite` and `manifest.json`, written by the converters and
read by the runtime. The manifest is versioned; a reader refuses formats it does not know.

Every field a reader uses is checked when the manifest is read (`Manifest.from_dict`, `parse_manifest`): its
type, range and nesting depth, each error naming the field (`BundleError`). Needs only the standard library
and numpy (its names, such as QUANTIZATIONS and METRICS, only the standard library), so the board can read it
without TensorFlow.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgemeta.format.atomic import atomic_write
from edgemeta.format.checksum import sha256_file, sha256_hex

if TYPE_CHECKING:  # imported where a manifest is read: the names below need only the standard library
    from edgemeta.format.preprocessing import Preprocessing

FORMAT = "edgemeta.bundle"
# A manifest is written with the oldest version that describes it, so older readers keep reading what
# they can use and refuse what they would feed wrongly: version 2 adds `input.patches` (edgemeta.format.patches),
# version 3 the preprocessing's `resize` ("shorter", `resize_to`) and per-channel `mean` and `std`.
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
MODEL_FILE = "model.tflite"
MANIFEST_FILE = "manifest.json"
# The names a manifest may carry; the converters, the compressor, board profiles and the CLI all take these.
# Each export mode, and the `quantization.scheme` it writes into the manifest.
QUANTIZATION_SCHEMES = {"int8": "full_integer", "int16x8": "int16_activations", "float16": "float16_weights",
                        "dynamic": "dynamic_range", "float32": "none"}
QUANTIZATIONS = tuple(QUANTIZATION_SCHEMES)
METRICS = ("squared_euclidean", "cosine")
# Bounds a reader enforces before any field is used: a manifest is a few KiB (the preset's: 6 KiB, nested 5
# deep); these only keep a hostile one from costing memory, recursion or arithmetic on absurd sizes.
MAX_MANIFEST_BYTES = 1 << 20
MAX_MANIFEST_DEPTH = 16
MAX_IMAGE_SIDE = 16384
MAX_EMBEDDING_SIZE = 1 << 16
MAX_PATCHES = 15
# Tensor dtypes a manifest may name for the model's input and output (numpy names).
TENSOR_DTYPES = ("float32", "float16", "int8", "uint8", "int16")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_PLAIN_FILE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")


class BundleError(ValueError):
    """A bundle that cannot be used as it is: a manifest field of the wrong type or range, an unknown format,
    a model that does not match its manifest."""


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
            "format_version": max(self.format_version, 2 if self.input_patches > 1 else 1,
                                  self.preprocessing.needs_format_version),
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
        """The manifest of a parsed `manifest.json`, every field checked (`BundleError` names the bad one)."""
        from edgemeta.format.preprocessing import _RESAMPLE, RESIZES, Preprocessing

        check = _Fields(source)
        d = check.object(d, "the manifest")
        check.depth(d)
        if d.get("format") != FORMAT:
            raise BundleError(f"{source} is not an edgemeta bundle manifest. Received: format={_shown(d.get('format'))}")
        version = d.get("format_version")
        if isinstance(version, bool) or version not in READABLE_VERSIONS:
            raise BundleError(
                f"{source} has bundle format version {_shown(version, typed=False)}; this edgemeta reads versions "
                f"{', '.join(map(str, READABLE_VERSIONS))}. Upgrade edgemeta or re-export the bundle."
            )
        if "model_file" in d and d["model_file"] != MODEL_FILE:
            raise check.error("model_file", f"{MODEL_FILE!r} (readers open that file)", d["model_file"])
        # "": a Manifest not written yet (write_bundle fills it in); reading a bundle then fails its hash check.
        model_sha256 = check.sha256(d.get("model_sha256", _MISSING), "model_sha256", allow_empty=True)
        pre = check.object(d.get("preprocessing", _MISSING), "preprocessing")
        channels = check.choice(pre.get("channels", _MISSING), "preprocessing.channels", (1, 3))
        height = check.integer(pre.get("height", _MISSING), "preprocessing.height", 1, MAX_IMAGE_SIDE)
        width = check.integer(pre.get("width", _MISSING), "preprocessing.width", 1, MAX_IMAGE_SIDE)
        preprocessing = Preprocessing(
            height=height,
            width=width,
            channels=channels,
            invert=check.boolean(pre.get("invert", _MISSING), "preprocessing.invert"),
            resample=check.choice(pre.get("resample", _MISSING), "preprocessing.resample", tuple(_RESAMPLE)),
            **_check_resize_and_normalization(check, pre, version, height, width, channels, RESIZES),
        )
        # Derived fields readers ignore, checked so that a manifest cannot say two things.
        if "grayscale" in pre and check.boolean(pre["grayscale"], "preprocessing.grayscale") != (channels == 1):
            raise check.error("preprocessing.grayscale", f"{channels == 1} (channels is {channels})", pre["grayscale"])
        if "scale" in pre and pre["scale"] != "0..1":
            raise check.error("preprocessing.scale", "'0..1'", pre["scale"])
        quantization = _check_quantization(check, d.get("quantization", {}))
        model_input = check.object(d.get("input", {}), "input")
        patches = 1
        if version >= 2 and "patches" in model_input:  # version 1 readers never fed patches: the field is not theirs
            patches = check.integer(model_input["patches"], "input.patches", 1, MAX_PATCHES)
            if patches % 2 == 0:
                raise check.error("input.patches", f"an odd integer in [1, {MAX_PATCHES}]", patches)
        raw_shape = None
        if model_input.get("raw_shape") is not None:
            raw_shape = tuple(check.shape(model_input["raw_shape"], "input.raw_shape", channels=(1, 3, 4)))
        manifest = cls(
            preprocessing=preprocessing,
            embedding_size=check.integer(d.get("embedding_size", _MISSING), "embedding_size", 1, MAX_EMBEDDING_SIZE),
            metric=check.choice(d.get("metric", _MISSING), "metric", METRICS),
            quantization=quantization,
            model_sha256=model_sha256,
            provenance=_check_provenance(check, d.get("provenance", {})),
            format_version=version,
            open_set=check_open_set(d.get("open_set", {}), source),
            input_patches=patches,
            raw_shape=raw_shape,
        )
        if "shape" in model_input and check.shape(model_input["shape"], "input.shape") != list(manifest.model_input_shape):
            raise check.error("input.shape", f"{list(manifest.model_input_shape)} (from preprocessing and input.patches)",
                              model_input["shape"])
        if "dtype" in model_input:
            expected = quantization.get("input_dtype", "float32")
            if model_input["dtype"] != expected:
                raise check.error("input.dtype", f"{expected!r} (quantization.input_dtype)", model_input["dtype"])
        return manifest


# -- checking a manifest's fields ------------------------------------------------------------------
_MISSING = object()


def _shown(value: Any, typed: bool = True) -> str:
    """A received value for an error message: its repr, shortened, and its type (28.0 and 28 look alike)."""
    if value is _MISSING:
        return "nothing (the field is missing)"
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{text} ({type(value).__name__})" if typed else text


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        return False


class _Fields:
    """Checks for the fields of one manifest; each error names `source` and the field."""

    def __init__(self, source: str) -> None:
        self.source = source

    def error(self, name: str, expected: str, value: Any) -> BundleError:
        return BundleError(f"{self.source}: {name} must be {expected}. Received: {_shown(value)}")

    def depth(self, value: Any) -> None:
        """Refuses a document nested deeper than MAX_MANIFEST_DEPTH (walked without recursion)."""
        stack = [(value, 1)]
        while stack:
            item, level = stack.pop()
            if isinstance(item, (dict, list)):
                if level > MAX_MANIFEST_DEPTH:
                    raise BundleError(f"{self.source}: the manifest is nested deeper than {MAX_MANIFEST_DEPTH} levels. "
                                      "Received: a deeper document")
                stack.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))

    def object(self, value: Any, name: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.error(name, "a JSON object", value)
        return value

    def integer(self, value: Any, name: str, low: int, high: int | None = None) -> int:
        """A JSON integer (not a float such as 28.0, not a boolean) in [low, high]."""
        if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
            expected = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
            raise self.error(name, expected, value)
        return value

    def number(self, value: Any, name: str, low: float = -math.inf, high: float = math.inf, *,
               open_low: bool = False, open_high: bool = False) -> float:
        """A finite JSON number in the interval [low, high] (an open end excludes its bound)."""
        ok = (_is_number(value) and _finite(value) and (value > low if open_low else value >= low)
              and (value < high if open_high else value <= high))
        if not ok:
            if (low, high) == (-math.inf, math.inf):
                expected = "a finite number"
            elif high == math.inf:
                expected = f"a finite number {'>' if open_low else '>='} {low:g}"
            else:
                expected = f"a number in {'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
            raise self.error(name, expected, value)
        return value

    def boolean(self, value: Any, name: str) -> bool:
        """A JSON boolean: the string "no" is not false."""
        if not isinstance(value, bool):
            raise self.error(name, "true or false (a JSON boolean)", value)
        return value

    def string(self, value: Any, name: str) -> str:
        if not isinstance(value, str):
            raise self.error(name, "a string", value)
        return value

    def choice(self, value: Any, name: str, choices: tuple) -> Any:
        # type() first: True == 1 would pass for the channel count 1
        if not any(type(value) is type(c) and value == c for c in choices):
            raise self.error(name, f"one of {', '.join(map(repr, choices))}", value)
        return value

    def sha256(self, value: Any, name: str, allow_empty: bool = False) -> str:
        if not isinstance(value, str) or not (_SHA256.fullmatch(value) or (allow_empty and value == "")):
            raise self.error(name, "a SHA-256 in lowercase hex (64 characters)", value)
        return value

    def shape(self, value: Any, name: str, channels: tuple[int, ...] | None = None) -> list[int]:
        """[height, width, channels]: three positive integers (channels one of `channels`, when given)."""
        expected = ("[height, width, channels] of positive integers"
                    + (f", channels {' or '.join(map(str, channels))}" if channels else ""))
        if (not isinstance(value, list) or len(value) != 3
                or any(isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_IMAGE_SIDE for n in value)
                or (channels is not None and value[2] not in channels)):
            raise self.error(name, expected, value)
        return value

    def list_of_numbers(self, value: Any, name: str, low: float, high: float = math.inf, *, open_low: bool = False,
                        open_high: bool = False, length: int | None = None) -> list[float]:
        expected_length = f"of {length} " if length is not None else ""
        if not isinstance(value, list) or not value or (length is not None and len(value) != length):
            raise self.error(name, f"a non-empty list {expected_length}numbers", value)
        for i, item in enumerate(value):
            self.number(item, f"{name}[{i}]", low, high, open_low=open_low, open_high=open_high)
        return value


# Largest |mean| and smallest std a manifest may give: they apply to pixels in [0, 1], so a mean in 0..255 or a
# std near 0 is a mistake (statistics of another scale) that would feed the model values thousands wide.
MAX_MEAN = 1.0
MIN_STD = 1e-3


def _check_resize_and_normalization(check: _Fields, pre: dict[str, Any], version: int, height: int, width: int,
                                    channels: int, resizes: tuple[str, ...]) -> dict[str, Any]:
    """`preprocessing.resize`, `resize_to`, `mean` and `std` (format version 3) as Preprocessing's keyword
    arguments. Absent, they are the defaults (squash, no normalization), what versions 1 and 2 mean; a version 1
    or 2 manifest that sets them otherwise is refused, as a reader of those versions would ignore them."""
    fields: dict[str, Any] = {}
    resize = pre.get("resize", "squash")
    check.choice(resize, "preprocessing.resize", resizes)
    if resize != "squash":
        fields["resize"] = resize
        side = pre.get("resize_to", _MISSING)
        fields["resize_to"] = check.integer(side, "preprocessing.resize_to", max(height, width), MAX_IMAGE_SIDE)
    elif pre.get("resize_to") is not None:
        raise check.error("preprocessing.resize_to", "null or absent with resize 'squash'", pre["resize_to"])
    mean, std = pre.get("mean"), pre.get("std")
    if (mean is None) != (std is None):
        missing = "preprocessing.std" if std is None else "preprocessing.mean"
        raise check.error(missing, "given with the other of mean and std (or neither)", _MISSING)
    if mean is not None:
        fields["mean"] = check.list_of_numbers(mean, "preprocessing.mean", -MAX_MEAN, MAX_MEAN, length=channels)
        fields["std"] = check.list_of_numbers(std, "preprocessing.std", MIN_STD, length=channels)
    if fields and version < 3:
        name = "preprocessing." + next(iter(fields))
        raise check.error(name, f"absent in a format version {version} manifest (its readers apply no such step; "
                                "version 3 adds it)", pre[next(iter(fields))])
    return fields


def _check_quantization(check: _Fields, value: Any) -> dict[str, Any]:
    """`quantization`: the export's scheme and the model's input/output tensors (dtype, scale, zero point)."""
    quantization = check.object(value, "quantization")
    if "scheme" in quantization:
        check.choice(quantization["scheme"], "quantization.scheme", tuple(QUANTIZATION_SCHEMES.values()))
    if "input_dtype" in quantization:
        check.choice(quantization["input_dtype"], "quantization.input_dtype", TENSOR_DTYPES)
    for side in ("input", "output"):
        if side not in quantization:
            continue
        tensor = check.object(quantization[side], f"quantization.{side}")
        if "dtype" in tensor:
            check.choice(tensor["dtype"], f"quantization.{side}.dtype", TENSOR_DTYPES)
        if "scale" in tensor:
            check.number(tensor["scale"], f"quantization.{side}.scale", 0.0)
        if "zero_point" in tensor:
            check.integer(tensor["zero_point"], f"quantization.{side}.zero_point", -(1 << 15), (1 << 16) - 1)
    return quantization


# The fields of a run's saved config that decide its data (edgemeta.data.splits.DataSplit), which
# `edgemeta evaluate BUNDLE` reads from `provenance.train_config`.
_SPLIT_FIELDS = {"dataset": "string", "data_dir": "string", "test_dir": "string", "train_groups": "strings",
                 "test_groups": "strings", "train_classes": "integers", "rotations": "boolean", "image_size": "size",
                 "invert": "boolean", "channels": "size", "resize": "string", "resize_to": "size", "normalize": "string"}


def _check_provenance(check: _Fields, value: Any) -> dict[str, Any]:
    """`provenance` is free-form, except the parts a reader uses: `edgetpu` (the Embedder opens its `file`)
    and `train_config`'s data split (evaluate reads it)."""
    provenance = check.object(value, "provenance")
    compiled = provenance.get("edgetpu")
    if compiled:  # None or {}: not compiled
        compiled = check.object(compiled, "provenance.edgetpu")
        name = compiled.get("file", _MISSING)
        # A name inside the bundle: never a path (an absolute or ../ one would load a model from elsewhere).
        if not isinstance(name, str) or not _PLAIN_FILE.fullmatch(name) or name in (MANIFEST_FILE, MODEL_FILE):
            raise check.error("provenance.edgetpu.file", "the name of a file in the bundle, without a directory", name)
        check.sha256(compiled.get("sha256", _MISSING), "provenance.edgetpu.sha256")
    if "train_config" in provenance:
        config = check.object(provenance["train_config"], "provenance.train_config")
        for key, kind in _SPLIT_FIELDS.items():
            item, name = config.get(key), f"provenance.train_config.{key}"
            if item is None:
                continue
            if kind == "string":
                check.string(item, name)
            elif kind == "boolean":
                check.boolean(item, name)
            elif kind == "size":
                check.integer(item, name, 1, MAX_IMAGE_SIDE)
            elif not isinstance(item, list) or not all(
                    isinstance(x, str) if kind == "strings" else isinstance(x, int) and not isinstance(x, bool) for x in item):
                raise check.error(name, f"a list of {kind} or null", item)
    return provenance


def check_open_set(value: Any, source: str = "manifest") -> dict[str, Any]:
    """`open_set` as `edgemeta.train.openset` writes it and `edgemeta.runtime.threshold` reads it: {} (not
    calibrated), or an object with a finite `threshold` >= 0 and, when given, a well-formed calibration
    (`impostor_quantiles`: increasing probabilities in (0, 1), one list of distances per shot count).
    Returns `value`; raises `BundleError` naming the bad field (a NaN or negative threshold would make
    every answer "unknown")."""
    check = _Fields(source)
    open_set = check.object(value, "open_set")
    if not open_set:
        return open_set
    check.number(open_set.get("threshold", _MISSING), "open_set.threshold", 0.0)
    if "target_false_accept" in open_set:
        check.number(open_set["target_false_accept"], "open_set.target_false_accept", 0.0, 1.0, open_low=True, open_high=True)
    for key in ("n_way", "k_shot"):
        if key in open_set:
            check.integer(open_set[key], f"open_set.{key}", 1)
    if "episodes" in open_set:
        check.integer(open_set["episodes"], "open_set.episodes", 0)
    if "metric" in open_set:
        check.choice(open_set["metric"], "open_set.metric", METRICS)
    if "within_group" in open_set:
        check.boolean(open_set["within_group"], "open_set.within_group")
    if "false_reject_rate" in open_set:
        check.number(open_set["false_reject_rate"], "open_set.false_reject_rate", 0.0, 1.0)
    if "calibrated_on" in open_set:
        check.string(open_set["calibrated_on"], "open_set.calibrated_on")
    if "held_out" in open_set:
        check.boolean(open_set["held_out"], "open_set.held_out")
    _check_genuine_calibration(check, open_set)
    table = open_set.get("impostor_quantiles")
    if table:  # threshold_for reads the table only when it is there
        table = check.object(table, "open_set.impostor_quantiles")
        if "target_false_accept" not in open_set:
            raise check.error("open_set.target_false_accept", "given with impostor_quantiles (the rate they were read at)",
                              _MISSING)
        name = "open_set.impostor_quantiles"
        probabilities = check.list_of_numbers(table.get("probabilities", _MISSING), f"{name}.probabilities", 0.0, 1.0,
                                              open_low=True, open_high=True)
        if len(probabilities) < 2 or any(a >= b for a, b in zip(probabilities, probabilities[1:])):
            raise check.error(f"{name}.probabilities", "at least 2 increasing probabilities", probabilities)
        distances = check.object(table.get("distances", _MISSING), f"{name}.distances")
        if not distances:
            raise check.error(f"{name}.distances", "a list of distances per shot count, e.g. {'1': [...]}", distances)
        for shots, column in distances.items():
            if not (shots.isdigit() and shots.isascii() and int(shots) >= 1):
                raise check.error(f"{name}.distances", "keyed by shot counts ('1', '5', ...)", shots)
            check.list_of_numbers(column, f"{name}.distances.{shots}", 0.0, length=len(probabilities))
        if "samples_per_shot_count" in table:
            check.integer(table["samples_per_shot_count"], f"{name}.samples_per_shot_count", 1)
    return open_set


# At most this many tabulated rates / shot counts: the runtime reads the whole table per threshold.
MAX_TABLE_POINTS = 64


def _check_genuine_calibration(check: _Fields, open_set: dict[str, Any]) -> None:
    """`genuine_quantiles` (increasing false-reject rates in (0, 1); per shot count, as many distances, not
    increasing) with its `target_false_reject`, and `probability` (3 finite coefficients), when present."""
    table = open_set.get("genuine_quantiles")
    if not table:
        if "probability" in open_set:
            raise check.error("open_set.probability", "given with genuine_quantiles (it is read in their units)", _MISSING)
        return
    name = "open_set.genuine_quantiles"
    table = check.object(table, name)
    check.number(open_set.get("target_false_reject", _MISSING), "open_set.target_false_reject", 0.0, 1.0,
                 open_low=True, open_high=True)
    rates = check.list_of_numbers(table.get("false_reject", _MISSING), f"{name}.false_reject", 0.0, 1.0,
                                  open_low=True, open_high=True)
    if not 2 <= len(rates) <= MAX_TABLE_POINTS or any(a >= b for a, b in zip(rates, rates[1:])):
        raise check.error(f"{name}.false_reject", f"2 to {MAX_TABLE_POINTS} increasing rates", rates)
    distances = check.object(table.get("distances", _MISSING), f"{name}.distances")
    if not 1 <= len(distances) <= MAX_TABLE_POINTS:
        raise check.error(f"{name}.distances", "a list of distances per shot count, e.g. {'1': [...]}", distances)
    for shots, column in distances.items():
        if not (shots.isdigit() and shots.isascii() and 1 <= int(shots) <= 10_000):
            raise check.error(f"{name}.distances", "keyed by shot counts ('1', '5', ...)", shots)
        column = check.list_of_numbers(column, f"{name}.distances.{shots}", 0.0, length=len(rates))
        if any(a < b for a, b in zip(column, column[1:])):
            raise check.error(f"{name}.distances.{shots}", "distances that do not grow as the rate grows", column)
    if "probability" in open_set:
        model = check.object(open_set["probability"], "open_set.probability")
        check.list_of_numbers(model.get("coefficients", _MISSING), "open_set.probability.coefficients", -1e6, 1e6,
                              length=3)


def sha256_of(path: str | os.PathLike) -> str:
    return sha256_file(path)


def write_bundle(directory: str | os.PathLike, model_bytes: bytes, manifest: Manifest) -> Path:
    """Writes `model.tflite` and `manifest.json` (with the model's sha256) into `directory`, readable by all
    (see `write_bundle_file`)."""
    directory = Path(directory)
    write_bundle_file(directory / MODEL_FILE, model_bytes)
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
        raise BundleError(
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
    size = manifest_path.stat().st_size
    if size > MAX_MANIFEST_BYTES:
        raise BundleError(f"{manifest_path}: a manifest is at most {MAX_MANIFEST_BYTES >> 10} KiB. Received: {size} bytes")
    with open(manifest_path, "rb") as f:
        data = f.read(MAX_MANIFEST_BYTES + 1)  # bounded also if the file grew since its size was read
    return parse_manifest(data, str(manifest_path))


def parse_manifest(data: bytes | str, source: str = "manifest") -> Manifest:
    """The manifest in `data` (the text of a `manifest.json`), checked: at most MAX_MANIFEST_BYTES, UTF-8 JSON
    nested at most MAX_MANIFEST_DEPTH deep, every field as `Manifest.from_dict` expects. Raises `BundleError`."""
    size = len(data.encode() if isinstance(data, str) else data)
    if size > MAX_MANIFEST_BYTES:
        raise BundleError(f"{source}: a manifest is at most {MAX_MANIFEST_BYTES >> 10} KiB. Received: {size} bytes or more")
    try:
        document = json.loads(data.decode("utf-8") if isinstance(data, bytes) else data)  # UTF-8, as written
    except RecursionError:  # json's decoder recurses once per level: ~1000 levels exhaust the stack
        raise BundleError(f"{source}: the manifest is nested deeper than {MAX_MANIFEST_DEPTH} levels. "
                          "Received: a document too deep to parse") from None
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as e:  # ValueError: e.g. an integer of 5000 digits
        raise BundleError(f"Malformed bundle manifest {source!r}: not valid JSON ({e})") from None
    return Manifest.from_dict(document, source=source)


def update_provenance(directory: str | os.PathLike, provenance: dict[str, Any]) -> None:
    """Replaces a bundle's provenance (e.g. with accuracy measured after export); the model is untouched."""
    _, manifest = read_bundle(directory)
    manifest.provenance = provenance
    _write_manifest(Path(directory), manifest)


def update_open_set(directory: str | os.PathLike, open_set: dict[str, Any]) -> None:
    """Replaces a bundle's open-set calibration (see edgemeta.train.openset); the model is untouched."""
    if not isinstance(open_set, dict):
        raise TypeError(f"open_set must be a dict. Received: {type(open_set).__name__}")
    check_open_set(open_set, "open_set to store")  # a calibration readers would refuse is not written
    _, manifest = read_bundle(directory)
    manifest.open_set = open_set
    _write_manifest(Path(directory), manifest)


def write_bundle_file(path: str | os.PathLike, data: bytes) -> None:
    """Writes one file of a bundle atomically, with the mode a new file gets (0o666 & ~umask: 0644 under the
    usual umask 022), also over a file of another mode.

    A bundle is published, not private: it is copied to boards and read by whichever user runs the service
    there, and holds nothing secret (the model and how it was made). So unlike the prototype store, which
    holds what a user taught (embeddings, photo thumbnails) and keeps the mode its owner gave it (0600
    stays 0600), a bundle file does not inherit the 0600 of an older copy (edgemeta wrote bundles 0600 until
    issue 18)."""
    atomic_write(path, data, keep_mode=False)


def _write_manifest(directory: Path, manifest: Manifest) -> None:
    write_bundle_file(directory / MANIFEST_FILE, (json.dumps(manifest.to_dict(), indent=2) + "\n").encode())

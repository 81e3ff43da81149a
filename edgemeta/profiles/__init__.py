"""Board profiles (this package's *.json): what a board is and how the runtime should run on it; stdlib only."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgemeta.format.bundle import QUANTIZATIONS

ENV_DIR = "EDGEMETA_DEVICES_DIR"
# Images per interpreter call on a board: what `edgemeta device check` plans for (--batch) and what
# `FewShotAdapter.for_device` runs with, so the plan and the adapter's budget count the same activations.
BOARD_BATCH = 8
# ... at most: one call's float input stays within BOARD_CALL_BYTES, so a photo model (224x224x3: 602 KB an image,
# 1.6 MB of activations) runs one image per call (8 would hold 20 MB of a Pi Zero 2 W's 96 MB budget), while
# Omniglot's 28x28x9 input (28 KB) keeps 8. `board_batch(bundle)` is the batch for a bundle.
BOARD_CALL_BYTES = 256 * 1024
# The largest image a board's adapter accepts, in pixels (1024x1024; a larger JPEG decodes at a reduced
# scale first): converting it takes 18-20 MB, which the budget sets aside (edgemeta.runtime.budget.PIXEL_BYTES).
BOARD_MAX_PIXELS = 2**20
PROFILES_DIR = Path(__file__).parent
INTERPRETERS = ("ai_edge_litert", "tflite_runtime")
DELEGATES = (None, "edgetpu")
ACCELERATORS = (None, "edgetpu")


@dataclass(frozen=True)
class DeviceProfile:
    """One board's profile. `key` is the file's stem (e.g. "raspberry-pi-4"); `path` is where it was read."""

    key: str
    name: str
    arch: str
    os: str
    cpu: str
    cores: int
    ram_mb: tuple[int, ...]
    memory_budget_mb: int
    threads: int
    python: str
    interpreter: str
    delegate: str | None
    quantization: str
    accelerator: str | None
    install: str
    setup: str
    notes: str
    path: Path

    @property
    def budget_bytes(self) -> int:
        """`memory_budget_mb` in bytes (MiB, as systemd's MemoryMax=...M counts)."""
        return self.memory_budget_mb * 1024 * 1024

    def to_dict(self) -> dict[str, Any]:
        """The profile as its JSON fields (plus `key`), e.g. for `edgemeta device check --json`."""
        d = {f: getattr(self, f) for f in _FIELDS}
        d["ram_mb"] = list(self.ram_mb)
        return {"key": self.key, **d}


# field -> (accepted JSON types, description for errors). bool is excluded from int explicitly below.
_FIELDS: dict[str, tuple[tuple[type, ...], str]] = {
    "name": ((str,), "a string"),
    "arch": ((str,), "a string such as 'aarch64'"),
    "os": ((str,), "a string"),
    "cpu": ((str,), "a string"),
    "cores": ((int,), "a positive integer"),
    "ram_mb": ((list,), "a non-empty list of positive integers (MB)"),
    "memory_budget_mb": ((int,), "a positive integer (MB) below the smallest ram_mb"),
    "threads": ((int,), "an integer from 1 to cores"),
    "python": ((str,), "a version string such as '3.11'"),
    "interpreter": ((str,), f"one of {list(INTERPRETERS)}"),
    "delegate": ((str, type(None)), "null or 'edgetpu'"),
    "quantization": ((str,), f"one of {list(QUANTIZATIONS)}"),
    "accelerator": ((str, type(None)), "null or 'edgetpu'"),
    "install": ((str,), "a string (the pip command)"),
    "setup": ((str,), "a setup script file name such as 'setup-raspberry-pi.sh'"),
    "notes": ((str,), "a string"),
}


def search_dirs() -> list[Path]:
    """Where profiles are looked up by name, in order: $EDGEMETA_DEVICES_DIR, then the profiles shipped
    in this package (package data, so a source checkout and a wheel install find the same files)."""
    dirs = []
    if os.environ.get(ENV_DIR):
        dirs.append(Path(os.environ[ENV_DIR]))
    dirs.append(PROFILES_DIR)
    return dirs


def list_profiles() -> list[str]:
    """Names of every profile found in `search_dirs()`, sorted; earlier directories shadow later ones."""
    names = set()
    for d in search_dirs():
        if d.is_dir():
            names.update(p.stem for p in d.glob("*.json"))
    return sorted(names)


def load_profile(name_or_path: str | os.PathLike) -> DeviceProfile:
    """Reads a profile by name (e.g. "raspberry-pi-4") or from a path to a `.json` file.

    Raises ValueError for an unknown name or a malformed profile, FileNotFoundError for a missing path.
    """
    text = os.fspath(name_or_path)
    looks_like_path = text.endswith(".json") or os.sep in text or (os.altsep is not None and os.altsep in text)
    if looks_like_path:
        path = Path(text)
        if path.is_file():
            return _read(path)
        if os.sep in text or (os.altsep and os.altsep in text):
            raise FileNotFoundError(f"Device profile file not found. Received: {text!r}")
        text = path.stem  # a bare "raspberry-pi-4.json": look it up by name
    for d in search_dirs():
        path = d / f"{text}.json"
        if path.is_file():
            return _read(path)
    raise ValueError(
        f"Unknown device {text!r}. Expected one of {list_profiles()} or a path to a profile .json. "
        f"Received: {os.fspath(name_or_path)!r}"
    )


def _read(path: Path) -> DeviceProfile:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"Device profile {str(path)!r} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"Device profile {str(path)!r} must be a JSON object. Received: {type(data).__name__}")
    missing = [f for f in _FIELDS if f not in data]
    if missing:
        raise ValueError(f"Device profile {str(path)!r} is missing field(s) {missing}. Expected all of {list(_FIELDS)}.")
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise ValueError(f"Device profile {str(path)!r} has unknown field(s) {unknown} (a typo?). Expected only {list(_FIELDS)}.")
    for field, (types, expected) in _FIELDS.items():
        value = data[field]
        if not isinstance(value, types) or isinstance(value, bool):
            _bad(path, field, expected, value)
    _check_values(path, data)
    return DeviceProfile(key=path.stem, path=path.resolve(), **{**data, "ram_mb": tuple(data["ram_mb"])})


def _check_values(path: Path, d: dict[str, Any]) -> None:
    if d["cores"] < 1:
        _bad(path, "cores", _FIELDS["cores"][1], d["cores"])
    ram = d["ram_mb"]
    if not ram or not all(isinstance(r, int) and not isinstance(r, bool) and r > 0 for r in ram):
        _bad(path, "ram_mb", _FIELDS["ram_mb"][1], ram)
    if not 0 < d["memory_budget_mb"] < min(ram):
        _bad(path, "memory_budget_mb", f"a positive integer (MB) below the smallest ram_mb ({min(ram)})", d["memory_budget_mb"])
    if not 1 <= d["threads"] <= d["cores"]:
        _bad(path, "threads", f"an integer from 1 to cores ({d['cores']})", d["threads"])
    for field, allowed in (("interpreter", INTERPRETERS), ("delegate", DELEGATES), ("accelerator", ACCELERATORS),
                           ("quantization", QUANTIZATIONS)):
        if d[field] not in allowed:
            _bad(path, field, _FIELDS[field][1], d[field])
    if d["delegate"] is not None and d["delegate"] != d["accelerator"]:
        _bad(path, "delegate", f"null or the board's accelerator ({d['accelerator']!r})", d["delegate"])
    if not d["setup"] or "/" in d["setup"] or not d["setup"].endswith(".sh"):
        _bad(path, "setup", _FIELDS["setup"][1], d["setup"])


def _bad(path: Path, field: str, expected: str, value: Any) -> None:
    raise ValueError(f"Device profile {str(path)!r}: field {field!r} must be {expected}. Received: {value!r}")


def board_batch(bundle_or_shape: Any) -> int:
    """Images per interpreter call on a board for a bundle (a directory, or its model input shape): `BOARD_BATCH`,
    fewer for large inputs (`BOARD_CALL_BYTES`). `edgemeta device check`, `FewShotAdapter.for_device`, `device
    serve` and `adapt` all use it, so the plan and the adapter count the same activations.

    Example:
        >>> board_batch((28, 28, 9)), board_batch((84, 84, 3)), board_batch((224, 224, 3))
        (8, 3, 1)
    """
    if isinstance(bundle_or_shape, (tuple, list)):
        shape = tuple(bundle_or_shape)
    else:
        from edgemeta.format.bundle import read_manifest

        shape = read_manifest(bundle_or_shape).model_input_shape
    per_image = 4 * math.prod(shape)
    return max(1, min(BOARD_BATCH, BOARD_CALL_BYTES // per_image))

"""Bundles shipped inside the package, by name (e.g. "omniglot"). TensorFlow-free."""

from __future__ import annotations

from pathlib import Path

PRESETS_DIR = Path(__file__).parent


def available_presets() -> list[str]:
    return sorted(p.name for p in PRESETS_DIR.iterdir() if (p / "manifest.json").is_file())


def preset_path(name: str) -> Path:
    """The bundle directory of preset `name`; a clear error lists the presets that exist."""
    if not isinstance(name, str) or name not in available_presets():
        raise ValueError(f"Unknown preset {name!r}. Available presets: {available_presets()}")
    return PRESETS_DIR / name

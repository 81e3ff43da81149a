"""What the board test compares between x86-64 and Arm: each shipped preset taught and asked the same image files.

The images are written once, on the workstation (`write_images`), so both sides read the same bytes whatever their
Pillow. Only numpy, Pillow and edgemeta's runtime are imported: this module runs on the board too.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

PRESETS = ("omniglot", "photos")
SHAPES = ("circle", "square", "cross", "zigzag")


def _drawing(shape: str, seed: int, size: int = 105) -> Image.Image:
    """A hand-drawn-looking symbol: dark ink on white, jittered per `seed`."""
    rng = np.random.default_rng(seed)
    im = Image.new("L", (size, size), 255)
    draw = ImageDraw.Draw(im)
    j = lambda v: float(v + rng.normal(0, 3))  # noqa: E731 (a jittered coordinate)
    width = int(rng.integers(5, 8))
    if shape == "circle":
        draw.ellipse([j(22), j(22), j(82), j(82)], outline=0, width=width)
    elif shape == "square":
        draw.rectangle([j(25), j(25), j(80), j(80)], outline=0, width=width)
    elif shape == "cross":
        draw.line([j(22), j(22), j(82), j(82)], fill=0, width=width)
        draw.line([j(82), j(22), j(22), j(82)], fill=0, width=width)
    else:
        draw.line([(j(15 + 15 * i), j(30 if i % 2 == 0 else 75)) for i in range(6)], fill=0, width=width, joint="curve")
    return im


def _photo(shape: str, seed: int) -> Image.Image:
    """A colour 'photo' of an object: a coloured shape per class on a textured background, 200x150."""
    rng = np.random.default_rng(seed)
    colour = {"circle": (200, 40, 40), "square": (40, 160, 60), "cross": (40, 60, 200), "zigzag": (220, 180, 30)}[shape]
    background = rng.integers(90, 170, (150, 200, 3), dtype=np.uint8)
    im = Image.fromarray(background).convert("RGB")
    draw = ImageDraw.Draw(im)
    x, y = rng.integers(20, 60, 2)
    if shape == "circle":
        draw.ellipse([x + 40, y, x + 130, y + 90], fill=colour)
    elif shape == "square":
        draw.rectangle([x + 40, y, x + 120, y + 80], fill=colour)
    elif shape == "cross":
        draw.rectangle([x + 75, y, x + 95, y + 100], fill=colour)
        draw.rectangle([x + 35, y + 40, x + 135, y + 60], fill=colour)
    else:
        draw.line([(x + 20 + 25 * i, y + (10 if i % 2 == 0 else 90)) for i in range(6)], fill=colour, width=14)
    return im


def write_images(out: Path, shots: int = 2, queries: int = 1) -> dict[str, Any]:
    """Writes each preset's teaching and query images as PNG files under `out`; returns the plan: per preset,
    `teach` {label: [file, ...]} and `ask` [file, ...] (paths relative to `out`), `truth` (each query's label)."""
    plan: dict[str, Any] = {}
    for preset, make in (("omniglot", _drawing), ("photos", _photo)):
        folder = out / preset
        folder.mkdir(parents=True, exist_ok=True)
        teach, ask, truth = {}, [], []
        for c, shape in enumerate(SHAPES[:3] if preset == "photos" else SHAPES):  # photos: slow under emulation
            teach[shape] = []
            for i in range(shots + queries):
                name = f"{preset}/{shape}-{i}.png"
                make(shape, 1000 * c + i).save(out / name)
                (teach[shape] if i < shots else ask).append(name)
                if i >= shots:
                    truth.append(shape)
        plan[preset] = {"teach": teach, "ask": ask, "truth": truth}
    return plan


def teach_and_ask(preset: str, plan: dict[str, Any], images: Path, state: Path) -> dict[str, Any]:
    """Teaches `preset` the plan's classes (saving to `state`) and asks it the plan's queries: the predictions
    and the queries' embeddings."""
    from edgemeta.runtime import FewShotAdapter

    with FewShotAdapter.from_preset(preset, state=state) as adapter:
        for label, files in plan[preset]["teach"].items():
            adapter.enroll(label, [str(images / f) for f in files])
        result = ask(adapter, plan[preset], images)
        result["embeddings"] = adapter.embedder.embed([str(images / f) for f in plan[preset]["ask"]]).tolist()
    return result


def ask_store(preset: str, plan: dict[str, Any], images: Path, state: Path) -> dict[str, Any]:
    """The predictions of `preset` loaded with the store file `state` (taught elsewhere), for the plan's queries."""
    from edgemeta.runtime import FewShotAdapter

    with FewShotAdapter.from_preset(preset, state=state) as adapter:
        return ask(adapter, plan[preset], images)


def ask(adapter: Any, preset_plan: dict[str, Any], images: Path) -> dict[str, Any]:
    from edgemeta.runtime.interpreter import interpreter_class

    predictions = adapter.classify([str(images / f) for f in preset_plan["ask"]])
    return {"machine": platform.machine(), "interpreter": interpreter_class()[1],
            "labels": [p.label for p in predictions], "nearest": [p.nearest for p in predictions],
            "distances": [p.distance for p in predictions], "shots": {label: adapter.shots(label) for label in adapter.labels}}


def embedding_difference(a: list, b: list, output_scale: float | None) -> dict[str, float]:
    """How far two sets of embeddings of the same images are apart: the largest and the mean absolute difference
    per component, in steps of the model's int8 output scale, and the smallest cosine similarity of a pair."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    diff = np.abs(a - b)
    cosine = np.sum(a * b, 1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    step = output_scale or float("nan")
    return {"max_abs": float(diff.max()), "max_steps": float(diff.max() / step), "mean_steps": float(diff.mean() / step),
            "min_cosine": float(cosine.min())}


def output_scale(preset: str) -> float | None:
    """The int8 output tensor's quantization step of `preset`'s model (None for a float output)."""
    from edgemeta.presets import preset_path

    manifest = json.loads((preset_path(preset) / "manifest.json").read_text())
    output = manifest.get("quantization", {}).get("output") or {}
    return output.get("scale")

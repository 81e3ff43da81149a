"""`CompressionRecipe`: which compression stages to run on a trained learner, from the CLI or a config file."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from edgemeta.format.bundle import QUANTIZATIONS


@dataclass(frozen=True)
class CompressionRecipe:
    """Stages, applied in this order: distill -> prune -> cluster -> quantization-aware training -> convert.

    Every training stage fine-tunes with the episodic (ProtoNet) loss on the run's own training episodes,
    so the embedding stays good for classes it has never seen.

    Example:
        >>> CompressionRecipe(prune=0.75, qat=True).name
        'prune0.75+qat-int8'
    """

    prune: float | None = None  # final sparsity of the conv/dense kernels, reached by a polynomial schedule
    structured: bool = False  # 2:4 sparsity (2 zeros in every 4 consecutive weights) instead of `prune`
    cluster: int | None = None  # unique weight values per kernel (k-means++ initialised)
    qat: bool = False  # quantization-aware training; preserves the sparsity/clusters of earlier stages
    quantization: str = "int8"  # conversion: int8 | int16x8 | float16 | dynamic | float32
    distill_width: float | None = None  # student filters = width x teacher filters
    separable: bool = False  # student blocks are depthwise-separable
    steps: int = 1000  # episodic fine-tuning steps per stage (prune, cluster, qat)
    prune_steps: int | None = None  # the pruning stage's own length (default: steps); high sparsity wants longer
    learning_rate: float = 1e-4  # fine-tuning learning rate (cosine-decayed)
    distill_steps: int = 4000  # the student trains from scratch
    distill_learning_rate: float = 1e-3
    geometry_weight: float = 1.0  # weight of the distance-matching term against the episodic loss

    def __post_init__(self) -> None:
        def bad(what: str, expected: str) -> ValueError:
            value = getattr(self, what)
            return ValueError(f"{what} must be {expected}. Received: {value!r} ({type(value).__name__})")

        # Types first: a config file's "0.75" or true would otherwise fail in a comparison, with no field named.
        for name in ("structured", "qat", "separable"):
            if not isinstance(getattr(self, name), bool):
                raise bad(name, "true or false")
        for name in ("prune", "distill_width", "learning_rate", "distill_learning_rate", "geometry_weight"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)):
                raise bad(name, "a finite number")
        for name in ("cluster", "steps", "prune_steps", "distill_steps"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise bad(name, "an integer")
        if not isinstance(self.quantization, str):
            raise bad("quantization", f"one of {QUANTIZATIONS}")

        if self.prune is not None and not 0 < self.prune < 1:
            raise bad("prune", "a sparsity in (0, 1), e.g. 0.75")
        if self.structured and self.prune is not None:
            raise ValueError(f"structured (2:4) sparsity is always 50 %; do not also pass prune. Received: prune={self.prune}")
        if self.cluster is not None and (not isinstance(self.cluster, int) or self.cluster < 2):
            raise bad("cluster", "an integer number of clusters >= 2, e.g. 16")
        if self.quantization not in QUANTIZATIONS:
            raise bad("quantization", f"one of {QUANTIZATIONS}")
        if self.qat and self.quantization != "int8":
            raise ValueError(f"qat trains for int8 conversion; quantization must be 'int8'. Received: {self.quantization!r}")
        if self.distill_width is not None and not 0 < self.distill_width <= 1:
            raise bad("distill_width", "in (0, 1], e.g. 0.5")
        if self.separable and self.distill_width is None:
            raise ValueError("separable describes the distilled student; also pass distill_width (1.0 keeps the width).")
        for name in ("steps", "distill_steps") + (("prune_steps",) if self.prune_steps is not None else ()):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise bad(name, "a positive integer")
        if self.learning_rate <= 0 or self.distill_learning_rate <= 0 or self.geometry_weight < 0:
            raise ValueError(f"learning rates must be > 0 and geometry_weight >= 0. Received: {self.to_dict()}")

    @property
    def prunes(self) -> bool:
        return self.prune is not None or self.structured

    @property
    def trains(self) -> bool:
        return self.prunes or self.cluster is not None or self.qat or self.distill_width is not None

    @property
    def name(self) -> str:
        parts = []
        if self.distill_width is not None:
            parts.append(f"distill{self.distill_width:g}" + ("-separable" if self.separable else ""))
        if self.structured:
            parts.append("prune2:4")
        elif self.prune is not None:
            parts.append(f"prune{self.prune:g}")
        if self.cluster is not None:
            parts.append(f"cluster{self.cluster}")
        parts.append(f"qat-{self.quantization}" if self.qat else self.quantization)
        return "+".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "recipe") -> CompressionRecipe:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"{source} has unknown key(s) {unknown}. Expected some of {sorted(known)}.")
        return cls(**d)


def load_recipes(path: str | Path) -> dict[str, CompressionRecipe]:
    """Reads a JSON or TOML config file: either one recipe (its keys are `CompressionRecipe` fields) or
    `{"variants": {name: recipe, ...}}`, plus optional `"defaults"` that every variant starts from.

    Example TOML:

        [defaults]
        steps = 1000
        [variants.prune75]
        prune = 0.75
        [variants.qat]
        qat = true
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No compression config at {str(path)!r}.")
    text = path.read_text()
    if path.suffix == ".toml":
        try:
            import tomllib
        except ImportError as e:  # Python 3.10
            raise ValueError(f"TOML configs need Python >= 3.11; write {path.name} as JSON instead.") from e
        data = tomllib.loads(text)
    elif path.suffix == ".json":
        data = json.loads(text)
    else:
        raise ValueError(f"A compression config is a .json or .toml file. Received: {str(path)!r}")
    if "variants" not in data:
        recipe = CompressionRecipe.from_dict(data, str(path))
        return {recipe.name: recipe}
    defaults = data.get("defaults", {})
    unknown = sorted(set(data) - {"variants", "defaults"})
    if unknown:
        raise ValueError(f"{path} has unknown top-level key(s) {unknown}. Expected 'variants' and optionally 'defaults'.")
    return {name: CompressionRecipe.from_dict({**defaults, **v}, f"{path} [variants.{name}]")
            for name, v in data["variants"].items()}

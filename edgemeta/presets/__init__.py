"""The bundles shipped inside the package: a small registry of name -> bundle, what it knows, its recipe. TensorFlow-free."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PRESETS_DIR = Path(__file__).parent


@dataclass(frozen=True)
class Preset:
    """One shipped bundle: `knows` says what kind of images it learns new classes of; `recipe` is the
    training recipe (`edgemeta.train.recipes.RECIPES`) that `edgemeta preset NAME` rebuilds it with."""

    name: str
    knows: str
    recipe: str
    # The held-out episodes measured into its manifest when it is rebuilt: (way, shot) tasks, queries per class and
    # episodes; none when the recipe trains on every class it has (Omniglot's; measured on a split instead).
    tasks: tuple[tuple[int, int], ...] = ()
    n_query: int = 15
    episodes: int = 0
    # Where its accuracy is measured when nothing is held out of its own training (written into its manifest).
    measured_elsewhere: str = ""

    @property
    def path(self) -> Path:
        return PRESETS_DIR / self.name


PRESETS: dict[str, Preset] = {
    # 24 of the 30 background alphabets train it; the other 6 measure it and calibrate its "unknown", which needs
    # groups the embedding never saw (docs/open-set.md; docs/omniglot-preset.md).
    "omniglot": Preset("omniglot", "handwritten symbols: dark ink on a light background, any size (resized to 28x28)",
                       "omniglot-select", tasks=((5, 1), (20, 1)), n_query=5, episodes=600),
    "photos": Preset("photos", "objects in colour photos of any size and mode (resized to 224x224): products, parts, "
                     "plants, animals, tools", "photos", tasks=((5, 1), (5, 5), (16, 1)), n_query=15, episodes=600),
}


def available_presets() -> list[str]:
    """The names of the registered presets whose bundle is present in this install."""
    return sorted(name for name, preset in PRESETS.items() if (preset.path / "manifest.json").is_file())


def preset_path(name: str) -> Path:
    """The bundle directory of preset `name`; a clear error lists the presets that exist."""
    if not isinstance(name, str) or name not in available_presets():
        raise ValueError(f"Unknown preset {name!r}. Available presets: {available_presets()}")
    return PRESETS[name].path

"""`edgemeta preset`: rebuild a shipped preset bundle from its recipe (train, then export)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

HELP = "rebuild a shipped preset bundle from its recipe (train + export)"


def add_arguments(parser: argparse.ArgumentParser, argv: Sequence[str] = ()) -> None:
    from edgemeta.presets import PRESETS  # the registry: TensorFlow-free and small

    p = parser
    p.add_argument("name", choices=sorted(PRESETS))
    p.add_argument("--data-dir", help="the recipe's dataset directory: Omniglot's zips (omniglot; default "
                   "$EDGEMETA_OMNIGLOT_DIR) or mini-ImageNet's (photos; default $EDGEMETA_MINI_IMAGENET_DIR)")
    p.add_argument("--out", help="bundle directory (default: inside the installed package)")
    p.add_argument("--work-dir", help="the training run's directory (default: runs/preset-NAME)")


def run(args: argparse.Namespace) -> int:
    print(f"Preset written to {build_preset(args.name, args.data_dir, args.out, args.work_dir)}/")
    return 0


def build_preset(name: str, data_dir: str | None = None, out_dir: str | Path | None = None,
                 work_dir: str | Path | None = None) -> Path:
    """Rebuilds preset `name` from its registered recipe: trains, exports int8, measures it on the recipe's
    held-out classes where it has them (the preset's `tasks`, through the runtime and the Keras float model on the
    same episodes) and writes the bundle, by default into the package, replacing the shipped one. The manifest
    records the recipe and the command."""
    from edgemeta.cli.export import export_run
    from edgemeta.presets import PRESETS
    from edgemeta.train.recipes import RECIPES
    from edgemeta.train.training import train

    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}. Expected one of {sorted(PRESETS)}")
    preset = PRESETS[name]
    config = replace(RECIPES[preset.recipe], data_dir=data_dir)
    work_dir = Path(work_dir or f"runs/preset-{name}")
    if trained_with(work_dir, config):
        print(f"{work_dir}/ already holds a finished run of the {preset.recipe!r} recipe: exporting it without retraining.")
    else:
        train(config, work_dir, verbose=2)
    recipe: dict = {"preset": name, "recipe": preset.recipe, "command": f"edgemeta preset {name}"}
    if preset.measured_elsewhere:
        recipe["measured_accuracy"] = {"held_out": None, "note": preset.measured_elsewhere}
    path, _ = export_run(work_dir, out_dir or preset.path, "int8", episodes=preset.episodes, data_dir=data_dir,
                         tasks=preset.tasks, n_query=preset.n_query, provenance=recipe)
    return path


def trained_with(run_dir: Path, config) -> bool:
    """Whether `run_dir` holds a finished run (`run.json` is written last) whose recorded config has every setting
    `config` sets (those it leaves to the data, None, are resolved in the run; where the data lives does not count)."""
    import json
    from dataclasses import asdict

    run_file = run_dir / "run.json"
    if not run_file.is_file() or not (run_dir / "embedding.keras").is_file():
        return False
    recorded = json.loads(run_file.read_text()).get("config", {})
    defaults = asdict(type(config)())
    # A setting newer than the run is absent from its record: the run had its default.
    wanted = {k: v for k, v in asdict(config).items() if v is not None and k != "data_dir"
              and (k in recorded or v != defaults[k])}
    return all(json.loads(json.dumps(v, default=list)) == recorded.get(k) for k, v in wanted.items())

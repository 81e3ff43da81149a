"""`edgemeta demo`: the whole path on a dataset (train, export float32 and int8, adapt), with a Keras vs runtime table."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

HELP = "the whole path on a dataset, with a Keras vs int8-runtime table"


def add_arguments(parser: argparse.ArgumentParser, argv: Sequence[str] = ()) -> None:
    p = parser
    p.add_argument("--dataset", choices=["digits", "omniglot"], default="digits")
    p.add_argument("--data-dir")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--steps", type=int, help="override the recipe's training steps")
    p.add_argument("--episodes", type=int, default=600)


def run(args: argparse.Namespace) -> int:
    print(run_demo(args.dataset, args.data_dir, args.out, args.steps, args.episodes))
    print(next_steps(args.out))
    return 0


def next_steps(out_dir: str | Path, edgemeta: str | None = None) -> str:
    """What to run after the demo: teach from the board's page, the photos preset, a Raspberry Pi.
    `edgemeta` is the command as the user can type it (default: `edgemeta_command()`)."""
    edgemeta = edgemeta or edgemeta_command()
    bundle = Path(out_dir) / "bundle-int8"
    return "\n".join([
        "",
        "Next:",
        f"  Teach from a web page:  {edgemeta} device serve --preset photos --state {Path(out_dir) / 'photos.store'}",
        "    then open http://127.0.0.1:8765/ and teach it objects from photos (from a phone on your network:",
        "    add --host 0.0.0.0 --token-file FILE; docs/service.md). This demo's own bundle: --bundle " + str(bundle),
        "  The photos preset from Python:  make demo-photos  (examples/photos.py; docs/photos.md)",
        f"  On a Raspberry Pi:  docs/workstation-to-pi.md  ({edgemeta} deploy {bundle} --to ssh://pi@HOST/var/lib/edgemeta,",
        "    then edgemeta device serve on the Pi)",
    ])


def edgemeta_command() -> str:
    """`edgemeta` when the shell finds this venv's command on PATH, else the command's path (`.venv/bin/edgemeta`
    after `make demo`, whose venv is not activated)."""
    here = Path(sys.executable).with_name("edgemeta")
    found = shutil.which("edgemeta")
    if not here.exists() or (found and Path(found).resolve() == here.resolve()):
        return "edgemeta"
    try:
        return os.path.relpath(here)
    except ValueError:  # another drive (Windows)
        return str(here)


def run_demo(dataset: str = "digits", data_dir: str | None = None, out_dir: str | Path = "runs/demo",
             steps: int | None = None, episodes: int = 600, verbose: int | str = 2) -> str:
    """The whole path: meta-train, export float32 and int8 bundles, adapt on held-out classes with the
    runtime, and return a table comparing Keras float, TFLite float and int8."""
    from converters import export_bundle
    from edgemeta.runtime import Embedder, FewShotAdapter
    from edgemeta.runtime.evaluation import evaluate_adapter, per_image_latency_ms
    from edgemeta.train.episodes import EpisodeSampler
    from edgemeta.train.evaluation import evaluate_keras
    from edgemeta.train.recipes import RECIPES
    from edgemeta.train.training import train

    recipe = RECIPES["omniglot-split" if dataset == "omniglot" else dataset]
    config = replace(recipe, data_dir=data_dir or recipe.data_dir, deterministic=False, **({"steps": steps} if steps else {}))
    out_dir = Path(out_dir)
    net, train_set, test_set = train(config, out_dir / "run", verbose=verbose)
    embedders = {}
    for quantization in ("float32", "int8"):
        path = export_bundle(net.backbone, out_dir / f"bundle-{quantization}", train_set.preprocessing, quantization,
                             train_set.images, provenance={"dataset": train_set.name, "learner": "protonet"},
                             raw_shape=train_set.raw_shape)
        embedders[quantization] = Embedder.from_bundle(path)
    tasks = [(5, 1), (5, 5)] + ([(20, 1)] if test_set.num_classes >= 20 else [])
    header = ["model", "size (KB)", "ms/image"] + [f"{n}-way {k}-shot" for n, k in tasks]
    rows = []
    for name, quantization in (("Keras float32", None), ("TFLite float32", "float32"), ("TFLite int8 (runtime)", "int8")):
        accuracies = []
        for n_way, k_shot in tasks:
            sampler = EpisodeSampler(test_set, n_way, k_shot, 5, seed=1)
            if quantization is None:
                r = evaluate_keras(net.backbone, sampler, episodes)
            else:
                r = evaluate_adapter(lambda e=embedders[quantization]: FewShotAdapter(e), sampler, episodes)
            accuracies.append(f"{100 * r.accuracy:.1f} ± {100 * r.ci95:.1f}")
        if quantization is None:
            size, latency = f"{sum(w.size for w in net.backbone.get_weights()) * 4 / 1024:.0f} (weights)", "-"
        else:
            size = f"{(out_dir / f'bundle-{quantization}' / 'model.tflite').stat().st_size / 1024:.0f}"
            latency = f"{per_image_latency_ms(embedders[quantization], test_set.raw[0]):.3f}"
        rows.append([name, size, latency, *accuracies])
    return markdown_table(header, rows) + (
        f"\nMeta-trained on {train_set.num_classes} {train_set.name} classes (rotated copies count as classes), tested "
        f"on {test_set.num_classes} held-out "
        f"classes ({episodes} episodes each, 5 queries/class, 95 % CI). Bundles in {out_dir}/."
    )


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A markdown table with each column padded to its widest cell."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(row: Sequence[object]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths)) + " |"

    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows])

"""`edgemeta compress`: prune, cluster, quantize and/or distil a run into bundles, with a size/accuracy report."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from edgemeta.format.bundle import QUANTIZATIONS

HELP = "prune, cluster, quantize and/or distil a run; bundles + size/accuracy report"


def add_arguments(parser: argparse.ArgumentParser, argv: Sequence[str] = ()) -> None:
    p = parser
    p.add_argument("run", help="run directory written by `edgemeta train` (the teacher)")
    p.add_argument("--out", required=True, help="directory: one bundle per variant, report.md/.json, pareto.png")
    p.add_argument("--config", help="JSON or TOML file of recipe fields or [variants.NAME] tables (see docs/compression.md)")
    p.add_argument("--prune", type=float, metavar="SPARSITY", help="magnitude pruning to this sparsity, e.g. 0.75")
    p.add_argument("--structured", action="store_true", help="2:4 structured sparsity (50 %%) instead of --prune")
    p.add_argument("--cluster", type=int, metavar="N", help="weight clustering: N unique values per kernel")
    p.add_argument("--qat", action="store_true", help="quantization-aware training, then int8")
    p.add_argument("--quantization", choices=QUANTIZATIONS, help="conversion (default int8)")
    p.add_argument("--distill-width", type=float, metavar="W", help="distil into a student W times as wide, e.g. 0.5")
    p.add_argument("--separable", action="store_true", help="the distilled student uses depthwise-separable blocks")
    p.add_argument("--steps", type=int, help="episodic fine-tuning steps per stage (default 1000)")
    p.add_argument("--prune-steps", type=int, help="length of the pruning stage (default: --steps)")
    p.add_argument("--lr", type=float, dest="learning_rate", help="fine-tuning learning rate (default 1e-4)")
    p.add_argument("--distill-steps", type=int, help="student training steps (default 4000)")
    p.add_argument("--episodes", type=int, default=600, help="held-out episodes per task in the report (0: no report)")
    p.add_argument("--data-dir", help="where the run's dataset is now, if moved")


def run(args: argparse.Namespace) -> int:
    from converters import export_bundle, to_tflite
    from edgemeta.compress import CompressionRecipe, compress_variants, load_recipes

    flags = {"prune": args.prune, "structured": args.structured or None, "cluster": args.cluster, "qat": args.qat or None,
             "quantization": args.quantization, "distill_width": args.distill_width, "separable": args.separable or None,
             "steps": args.steps, "prune_steps": args.prune_steps, "learning_rate": args.learning_rate,
             "distill_steps": args.distill_steps}
    flags = {k: v for k, v in flags.items() if v is not None}
    if args.config:
        # Flags given with a config file apply to every variant in it (e.g. fewer --steps for a quick try).
        recipes = {name: CompressionRecipe.from_dict({**r.to_dict(), **flags}) for name, r in load_recipes(args.config).items()}
    else:
        recipe = CompressionRecipe(**flags)
        recipes = {recipe.name: recipe}
    command = "edgemeta " + " ".join(args.argv)
    report = compress_variants(args.run, recipes, args.out, args.data_dir, args.episodes, verbose=2, command=command,
                               export_bundle=export_bundle, to_tflite=to_tflite)
    for v in report["variants"]:
        acc = "  ".join(f"{t} {100 * r['accuracy']:.2f} %" for t, r in v.get("accuracy", {}).items())
        size = f"{v['tflite_bytes']:,} bytes (gzip {v['gzip_bytes']:,})  " if "tflite_bytes" in v else ""
        print(f"{v['name']}: {v['bundle']}  {size}{acc}")
    if args.episodes:
        print(f"Report: {Path(args.out) / 'report.md'}")
    return 0

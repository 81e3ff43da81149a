"""`edgemeta export`: convert a trained run to a bundle, measure it on held-out classes and calibrate its open-set threshold."""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgemeta import __version__
from edgemeta.format.bundle import QUANTIZATIONS

HELP = "convert a run to a bundle (model.tflite + manifest.json)"
# The held-out (way, shot) tasks an export measures unless told otherwise (those the data allows).
DEFAULT_TASKS = ((5, 1), (5, 5), (20, 1), (20, 5))


def add_arguments(parser: argparse.ArgumentParser, argv: Sequence[str] = ()) -> None:
    p = parser
    p.add_argument("run", help="run directory written by `edgemeta train`")
    p.add_argument("--out", required=True, help="bundle directory to write")
    p.add_argument("--quantization", choices=QUANTIZATIONS, default="int8")
    p.add_argument("--episodes", type=int, default=600, help="held-out episodes measured into the manifest (0: skip)")
    p.add_argument("--data-dir", help="where the run's dataset is now, if moved")
    p.add_argument("--tasks", nargs="+", type=way_by_shot, default=list(DEFAULT_TASKS), metavar="WAYxSHOT",
                   help="held-out tasks measured, e.g. 5x1 5x5 16x1 (default: 5x1 5x5 20x1 20x5; those the data allows)")
    p.add_argument("--query", type=int, default=5, help="query images per class in the measured episodes")
    p.add_argument("--unknown-target", type=unknown_target, default=argparse.SUPPRESS, metavar="RATE|none",
                   help="share of a taught class's new images that \"unknown\" may reject, in (0, 1) (default: 0.01, "
                   "docs/open-set.md); none: no calibration")


def way_by_shot(text: str) -> tuple[int, int]:
    """"5x1" -> (5, 1)."""
    way, sep, shot = text.partition("x")
    if not (sep and way.isdigit() and shot.isdigit() and int(way) >= 2 and int(shot) >= 1):
        raise argparse.ArgumentTypeError(f"expected WAYxSHOT such as 5x1 (way >= 2, shot >= 1). Received: {text!r}")
    return int(way), int(shot)


def unknown_target(text: str) -> float | None:
    """"0.05" -> 0.05; "none" -> None."""
    if text.lower() == "none":
        return None
    try:
        rate = float(text)
    except ValueError:
        rate = float("nan")
    if not 0.0 < rate < 1.0:
        raise argparse.ArgumentTypeError(f"expected a false-reject rate in (0, 1), e.g. 0.01, or none. Received: {text!r}")
    return rate


def run(args: argparse.Namespace) -> int:
    path, measured = export_run(args.run, args.out, args.quantization, args.episodes, args.data_dir, tasks=args.tasks,
                                n_query=args.query, open_set_target=getattr(args, "unknown_target", "default"))
    print(f"Bundle written to {path}/")
    for task, r in measured.items():
        if "runtime" in r:
            own = f"own adaptation {100 * r['own_adaptation']['accuracy']:.2f} %, " if "own_adaptation" in r else ""
            print(f"  {task}: {own}Keras float prototypes {100 * r['keras_float']['accuracy']:.2f} %, "
                  f"bundle via runtime {100 * r['runtime']['accuracy']:.2f} ± {100 * r['runtime']['ci95']:.2f} %")
    return 0


def export_run(run_dir: str | Path, out_dir: str | Path, quantization: str = "int8", episodes: int = 600,
               data_dir: str | None = None, open_set_target: float | None | str = "default",
               tasks: Sequence[tuple[int, int]] = DEFAULT_TASKS, n_query: int = 5,
               provenance: dict[str, Any] | None = None) -> tuple[Path, dict[str, Any]]:
    """Converts a trained run to a bundle. When the run has held-out classes, measures the bundle's
    accuracy through the runtime (and the Keras model's on the same episodes) and records both in the
    manifest's provenance.

    With `open_set_target` (the rate of genuine queries "unknown" may reject; "default":
    `edgemeta.train.openset.DEFAULT_FALSE_REJECT`; None skips), calibrates "unknown" through the written bundle
    (`edgemeta.train.openset.calibrate_unknown`) on the run's held-out groups, which the embedding never saw, and
    stores it in the manifest's `open_set`. A run with nothing held out is calibrated on its training classes
    instead, with a warning and `held_out: false`: there "unknown" rejects many more genuine queries than stated.
    `tasks` (way, shot) and `n_query` are the held-out episodes measured;
    `provenance` adds entries to the manifest's (e.g. a preset's recipe)."""
    from converters import export_bundle
    from edgemeta.format.bundle import update_open_set, update_provenance
    from edgemeta.train.openset import DEFAULT_FALSE_REJECT, calibrate_unknown, check_target, drop_rotated_copies
    from edgemeta.train.training import TrainConfig, load_learner, load_split

    if open_set_target == "default":
        open_set_target = DEFAULT_FALSE_REJECT
    if open_set_target is not None:
        check_target(open_set_target, "open_set_target")  # before anything is written
    learner, run = load_learner(run_dir)
    backbone = learner.backbone
    config = TrainConfig(**{**run["config"], **({"data_dir": data_dir} if data_dir else {})})
    train_set, test_set = load_split(config)
    provenance: dict[str, Any] = {
        "dataset": run["train_set"], "learner": run["learner"], "learner_options": config.learner_options,
        "backbone": config.backbone,
        "episodes": {k: getattr(config, k) for k in ("n_way", "k_shot", "n_query", "steps", "episodes_per_batch")},
        "train_config": run["config"], "precision": run.get("precision"), "train_seconds": run.get("train_seconds"),
        "edgemeta_version": __version__,
        "measured_accuracy": {
            "held_out": None,
            "note": "trained on every class of its data, so nothing is held out to measure here; the "
                    "same recipe on a held-out split is measured by benchmarks/omniglot_split.py",
        },
        **(provenance or {}),
    }
    path = export_bundle(backbone, out_dir, train_set.preprocessing, quantization, train_set.images, run["metric"], provenance,
                         raw_shape=train_set.raw_shape)
    measured: dict[str, Any] = {}
    if test_set is not None and episodes:
        measured = compare_on_test(backbone, path, test_set, episodes, tasks, n_query, metric=run["metric"], learner=learner)
        update_provenance(path, {**provenance, "measured_accuracy": measured})
    if open_set_target is not None:
        # Through the written bundle, so int8 effects are in the threshold the board will compare against.
        try:
            if test_set is not None:
                open_set = calibrate_unknown(path, test_set, open_set_target)
            else:
                warnings.warn(f"{run_dir} holds no groups out of training, so 'unknown' is calibrated on its training "
                              "classes, which the embedding packs tighter than new ones: it will reject more genuine "
                              "queries than the target. Train with held-out groups (e.g. --test-groups) to calibrate "
                              "it properly.", stacklevel=2)
                open_set = calibrate_unknown(path, drop_rotated_copies(train_set), open_set_target, held_out=False)
        except ValueError as e:  # e.g. a folder dataset with too few images per class: the bundle is still valid
            warnings.warn(f"No open-set threshold stored in {path}: {e}", stacklevel=2)
        else:
            update_open_set(path, open_set)
    return path, measured


def compare_on_test(backbone: Any, bundle: str | Path, test_set: Any, episodes: int = 600,
                    tasks: Sequence[tuple[int, int]] = DEFAULT_TASKS, n_query: int = 5, seed: int = 1,
                    metric: str = "squared_euclidean", learner: Any = None) -> dict[str, Any]:
    """Keras float vs bundle-through-runtime accuracy on identical held-out episodes, and with `learner`
    also the learner's own adaptation (what on-device prototypes cost or gain against it)."""
    import numpy as np

    from edgemeta.runtime import Embedder, FewShotAdapter
    from edgemeta.runtime.evaluation import MemoizedEmbedder, evaluate_adapter
    from edgemeta.train.episodes import EpisodeSampler
    from edgemeta.train.evaluation import evaluate_keras, evaluate_learner

    embedder = MemoizedEmbedder(Embedder.from_bundle(bundle))  # each held-out image through the model once
    counts = np.bincount(test_set.labels)
    results: dict[str, Any] = {"held_out": {"classes": test_set.num_classes, "groups": sorted(set(test_set.groups))}}
    for n_way, k_shot in tasks:
        if n_way > test_set.num_classes or k_shot + n_query > counts.min():
            continue
        sampler = EpisodeSampler(test_set, n_way, k_shot, n_query, seed=seed)
        keras_result = evaluate_keras(backbone, sampler, episodes, metric=metric)
        runtime_result = evaluate_adapter(lambda: FewShotAdapter(embedder), sampler, episodes)
        results[f"{n_way}-way {k_shot}-shot"] = {"keras_float": keras_result.to_dict(), "runtime": runtime_result.to_dict()}
        if learner is not None and type(learner).__name__ != "ProtoNet":  # ProtoNet's own adaptation *is* keras_float
            results[f"{n_way}-way {k_shot}-shot"]["own_adaptation"] = evaluate_learner(learner, sampler, episodes).to_dict()
    return results

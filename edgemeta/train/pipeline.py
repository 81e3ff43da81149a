"""The end-to-end workflows behind the CLI: export a trained run, evaluate a run or a bundle, the demo,
and the preset recipes."""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from edgemeta import __version__
from edgemeta.format.bundle import MANIFEST_FILE, update_open_set, update_provenance
from edgemeta.train.evaluation import EvalResult
from edgemeta.train.training import OMNIGLOT_TEST, OMNIGLOT_TRAIN, TrainConfig, load_learner, load_run, load_split, train

# The recipe of the shipped Omniglot preset. `omniglot-split` is the same recipe on the issues' fixed
# split (5 alphabets to train, 3 held out), which is how its accuracy is measured.
OMNIGLOT_RECIPE = TrainConfig(
    dataset="omniglot", rotations=True, n_way=60, k_shot=1, n_query=5, steps=8000, epochs=20,
    learning_rate=1e-3, max_shift=2, max_rotation=10, max_scale=0.1, max_shear=0.1, seed=0, deterministic=True,
)
RECIPES = {
    "omniglot": replace(OMNIGLOT_RECIPE, train_groups=OMNIGLOT_TRAIN + OMNIGLOT_TEST, test_groups=()),
    "omniglot-split": replace(OMNIGLOT_RECIPE, train_groups=OMNIGLOT_TRAIN, test_groups=OMNIGLOT_TEST),
    "digits": TrainConfig(dataset="digits", rotations=True, n_way=10, k_shot=1, n_query=10, steps=400, epochs=4,
                          max_shift=1),
}

# Each learner's episodes and options on top of a recipe (data, augmentation, seed, steps). ProtoNet and
# Matching train on the recipe's large episodes; Relation and the gradient-based learners on batches of
# 5-way tasks, as in their papers. `benchmarks/learners.py` trains each with a fixed number of steps (docs/learners.md).
_FIVE_WAY_TASKS = dict(n_way=5, k_shot=1, n_query=5, episodes_per_batch=8)
LEARNER_SETTINGS: dict[str, dict[str, Any]] = {
    "maml": dict(_FIVE_WAY_TASKS, learner_options={"inner_steps": 1, "inner_lr": 0.4}),
    # First-order MAML drops the path through the inner step, so one step leaves the head barely adapted
    # (measured: 81.8 % 5-way 1-shot at 1000 steps); five steps are cheap without second-order terms.
    # ANIL, FOMAML and Reptile start their head from the support prototypes (Proto-MAML): with a meta-learned
    # head they missed 95 % on 5-way 1-shot, with it they pass (docs/learners.md has both).
    "fomaml": dict(_FIVE_WAY_TASKS, learner_options={"inner_steps": 5, "inner_lr": 0.4, "head_init": "prototypes"}),
    "metasgd": dict(_FIVE_WAY_TASKS, learner_options={"inner_steps": 1, "inner_lr": 0.4}),
    "anil": dict(_FIVE_WAY_TASKS, learner_options={"inner_steps": 5, "eval_inner_steps": 10, "inner_lr": 0.4,
                                                   "head_init": "prototypes"}),
    # Relation's MSE over sigmoid scores collapses to "no class matches" on 60-way episodes (measured:
    # loss 1/60, chance accuracy); the paper trains it on 5-way episodes.
    "relation": dict(_FIVE_WAY_TASKS),
    # Reptile's outer step is plain SGD on (theta - phi): learning rate 1.0 decayed, as in the paper.
    "reptile": dict(_FIVE_WAY_TASKS, episodes_per_batch=4, learning_rate=1.0,
                    learner_options={"inner_steps": 5, "eval_inner_steps": 10, "inner_lr": 0.1, "head_init": "prototypes"}),
}


def recipe_for(recipe: str, learner: str = "protonet", **overrides: Any) -> TrainConfig:
    """Recipe `recipe` (data, augmentation, seed, steps) with `learner` and its episodes and options."""
    if recipe not in RECIPES:
        raise ValueError(f"Unknown recipe {recipe!r}. Expected one of {sorted(RECIPES)}.")
    return replace(RECIPES[recipe], learner=learner, **{**LEARNER_SETTINGS.get(learner, {}), **overrides})


def export_run(run_dir: str | Path, out_dir: str | Path, quantization: str = "int8", episodes: int = 600,
               data_dir: str | None = None, open_set_target: float | None = 0.05) -> tuple[Path, dict[str, Any]]:
    """Converts a trained run to a bundle. When the run has held-out classes, measures the bundle's
    accuracy through the runtime (and the Keras model's on the same episodes) and records both in the
    manifest's provenance.

    With `open_set_target` (a false-accept rate; None skips), calibrates the "unknown" distance threshold
    through the written bundle on the run's training classes (`edgemeta.train.openset.calibrate_training_set`)
    and stores it in the manifest's `open_set`."""
    from converters import export_bundle
    from edgemeta.train.openset import calibrate_training_set, check_target

    if open_set_target is not None:
        check_target(open_set_target)  # before anything is written
    learner, run = load_learner(run_dir)
    backbone = learner.backbone
    config = TrainConfig(**{**run["config"], **({"data_dir": data_dir} if data_dir else {})})
    train_set, test_set = load_split(config)
    provenance: dict[str, Any] = {
        "dataset": run["train_set"], "learner": run["learner"], "learner_options": config.learner_options,
        "backbone": config.backbone,
        "episodes": {k: getattr(config, k) for k in ("n_way", "k_shot", "n_query", "steps", "episodes_per_batch")},
        "train_config": run["config"], "edgemeta_version": __version__,
        "measured_accuracy": {
            "held_out": None,
            "note": "trained on every class of its data, so nothing is held out to measure here; the "
                    "same recipe on a held-out split is measured by benchmarks/omniglot_split.py",
        },
    }
    path = export_bundle(backbone, out_dir, train_set.preprocessing, quantization, train_set.images, run["metric"], provenance)
    measured: dict[str, Any] = {}
    if test_set is not None and episodes:
        measured = compare_on_test(backbone, path, test_set, episodes, metric=run["metric"], learner=learner)
        update_provenance(path, {**provenance, "measured_accuracy": measured})
    if open_set_target is not None:
        # Through the written bundle, so int8 effects are in the threshold the board will compare against.
        try:
            open_set = calibrate_training_set(path, train_set, open_set_target)
        except ValueError as e:  # e.g. a folder dataset with too few images per class: the bundle is still valid
            warnings.warn(f"No open-set threshold stored in {path}: {e}", stacklevel=2)
        else:
            update_open_set(path, open_set)
    return path, measured


def compare_on_test(backbone, bundle: str | Path, test_set, episodes: int = 600,
                    tasks=((5, 1), (5, 5), (20, 1), (20, 5)), n_query: int = 5, seed: int = 1,
                    metric: str = "squared_euclidean", learner=None) -> dict[str, Any]:
    """Keras float vs bundle-through-runtime accuracy on identical held-out episodes, and with `learner`
    also the learner's own adaptation (what on-device prototypes cost or gain against it)."""
    from edgemeta.train.episodes import EpisodeSampler
    from edgemeta.train.evaluation import evaluate_adapter, evaluate_keras, evaluate_learner
    from edgemeta.runtime import Embedder, FewShotAdapter

    embedder = Embedder.from_bundle(bundle)
    counts = np.bincount(test_set.labels)
    results = {"held_out": {"classes": test_set.num_classes, "groups": sorted(set(test_set.groups))}}
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


def evaluate_path(path: str | Path, n_way: int = 5, k_shot: int = 1, n_query: int = 5, episodes: int = 600,
                  within_group: bool = False, seed: int = 1, dataset: str | None = None, data_dir: str | None = None,
                  groups: list[str] | None = None, own_adaptation: bool = False) -> EvalResult:
    """Evaluates a run directory (Keras) or a bundle (runtime) on held-out episodes: by nearest prototype
    over the embedding, or for a run with `own_adaptation`, by the learner's own adaptation.

    The held-out set defaults to the run's (or, for a bundle, its provenance's) test split."""
    from edgemeta.train.episodes import EpisodeSampler
    from edgemeta.train.evaluation import evaluate_adapter, evaluate_keras, evaluate_learner
    from edgemeta.runtime import Embedder, FewShotAdapter
    from edgemeta.train.training import load_learner

    path = Path(path)
    is_bundle = (path / MANIFEST_FILE).is_file()
    if is_bundle and own_adaptation:
        raise ValueError(f"{str(path)!r} is a bundle: on the board it adapts by prototypes only. Pass a run directory "
                         "(written by `edgemeta train`) to evaluate a learner's own adaptation.")
    if is_bundle:
        manifest = json.loads((path / MANIFEST_FILE).read_text())
        saved = manifest["provenance"].get("train_config", {})
    else:
        backbone, run = load_run(path)
        saved, metric = run["config"], run["metric"]
    config = TrainConfig(**saved) if saved else TrainConfig(dataset=dataset or "digits")
    overrides: dict[str, Any] = {"rotations": False}
    if dataset:
        overrides["dataset"] = dataset
    if data_dir:
        overrides["data_dir" if (dataset or config.dataset) != "folder" else "test_dir"] = data_dir
    if groups:
        overrides["test_groups"] = groups
    config = replace(config, **overrides)
    _, test_set = load_split(config)
    if test_set is None:
        raise ValueError("No held-out classes to evaluate on: pass --alphabets (Omniglot) or --data-dir (folder).")
    sampler = EpisodeSampler(test_set, n_way, k_shot, n_query, within_group=within_group, seed=seed)
    if is_bundle:
        embedder = Embedder.from_bundle(path)
        return evaluate_adapter(lambda: FewShotAdapter(embedder), sampler, episodes)
    if own_adaptation:
        return evaluate_learner(load_learner(path)[0], sampler, episodes)
    return evaluate_keras(backbone, sampler, episodes, metric=metric)


def per_image_latency_ms(embedder, image: np.ndarray, repeats: int = 200) -> float:
    """Median wall time of classifying one raw image (preprocessing + model), in milliseconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        embedder.embed(image)
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def run_demo(dataset: str = "digits", data_dir: str | None = None, out_dir: str | Path = "runs/demo",
             steps: int | None = None, episodes: int = 600, verbose: int | str = 2) -> str:
    """The whole path: meta-train, export float32 and int8 bundles, adapt on held-out classes with the
    runtime, and return a table comparing Keras float, TFLite float and int8."""
    from converters import export_bundle
    from edgemeta.train.episodes import EpisodeSampler
    from edgemeta.train.evaluation import evaluate_adapter, evaluate_keras
    from edgemeta.runtime import Embedder, FewShotAdapter

    recipe = RECIPES["omniglot-split" if dataset == "omniglot" else dataset]
    config = replace(recipe, data_dir=data_dir or recipe.data_dir, deterministic=False, **({"steps": steps} if steps else {}))
    out_dir = Path(out_dir)
    net, train_set, test_set = train(config, out_dir / "run", verbose=verbose)
    embedders = {}
    for quantization in ("float32", "int8"):
        path = export_bundle(net.backbone, out_dir / f"bundle-{quantization}", train_set.preprocessing, quantization,
                             train_set.images, provenance={"dataset": train_set.name, "learner": "protonet"})
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
    return _table(header, rows) + (
        f"\nMeta-trained on {train_set.num_classes} {train_set.name} classes (rotated copies count as classes), tested "
        f"on {test_set.num_classes} held-out "
        f"classes ({episodes} episodes each, 5 queries/class, 95 % CI). Bundles in {out_dir}/."
    )


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows])


def build_preset(name: str, data_dir: str | None = None, out_dir: str | Path | None = None,
                 work_dir: str | Path = "runs/preset-omniglot") -> Path:
    """Rebuilds preset `name` from its recipe: trains on all its data, exports int8, writes the bundle
    (by default into the package, replacing the shipped one)."""
    from edgemeta.presets import PRESETS_DIR

    config = replace(RECIPES[name], data_dir=data_dir)
    train(config, Path(work_dir), verbose=2)
    path, _ = export_run(work_dir, out_dir or PRESETS_DIR / name, "int8", episodes=0, data_dir=data_dir)
    return path

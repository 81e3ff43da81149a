"""Runs compression recipes on a trained run: episodic fine-tuning stages, conversion to a bundle, report.

The conversion is passed in (`export_bundle`, `to_tflite`: `converters`' functions, which the CLI supplies):
`converters` depends on edgemeta, so edgemeta does not import it back.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from edgemeta import __version__
from edgemeta.compress.recipe import CompressionRecipe
from edgemeta.train.backend import keras

STUDENT_FILE = "student.json"
# converters.export_bundle(model, out_dir, preprocessing, quantization, representative_images, metric, provenance) -> Path
ExportBundle = Callable[..., Path]
# converters.to_tflite(model, quantization) -> the .tflite bytes
ToTFLite = Callable[..., bytes]


def compress(run_dir: str | Path, recipe: CompressionRecipe, out_dir: str | Path, data_dir: str | None = None,
             episodes: int = 600, verbose: int | str = 2, students_dir: str | Path | None = None, *,
             export_bundle: ExportBundle) -> dict[str, Any]:
    """Compresses the embedding of the run in `run_dir` by `recipe` and writes the bundle to `out_dir`
    with `export_bundle` (`converters.export_bundle`).

    Returns the variant's report row: sizes, sparsity, parameters, multiply-accumulates, 1-thread
    latency and, when the run has held-out classes and `episodes` > 0, 5-way and 20-way 1-shot accuracy
    through the runtime. A distilled student is cached in `students_dir` (default `out_dir/student`) and
    reused by recipes that distil the same way.

    Example:
        >>> from converters import export_bundle  # doctest: +SKIP
        >>> recipe = CompressionRecipe(prune=0.5)  # doctest: +SKIP
        >>> compress("runs/omniglot-split", recipe, "runs/pruned", export_bundle=export_bundle)  # doctest: +SKIP
    """
    from edgemeta.compress.report import measure_bundle
    from edgemeta.train.training import load_run, load_split

    start = time.time()
    backbone, run = load_run(run_dir)  # only the embedding is compressed; a learner's own weights are not needed
    config = _run_config(run, data_dir)
    train_set, test_set = load_split(config)
    keras.utils.set_random_seed(config.seed)
    model, stages = backbone, []
    if recipe.trains and run["metric"] != "squared_euclidean":
        raise ValueError(f"Compression fine-tunes with the ProtoNet episodic loss (squared Euclidean prototypes); "
                         f"this run's embedding uses metric {run['metric']!r}. Received: a recipe with training stages "
                         f"({recipe.name}); post-training quantization alone works for it.")
    if recipe.distill_width is not None:
        model = distil(model, train_set, config, recipe, Path(students_dir or Path(out_dir) / "student"), verbose)
        stages.append("distill")
    exported, float_model, stages = fine_tune_stages(model, train_set, config, recipe, verbose, stages)
    provenance = {
        "compressed_from": str(run_dir), "recipe": recipe.to_dict(), "recipe_name": recipe.name, "stages": stages,
        "learner": run["learner"], "train_config": run["config"], "edgemeta_version": __version__,
    }
    bundle = export_bundle(exported, out_dir, train_set.preprocessing, recipe.quantization, train_set.images,
                           run["metric"], provenance, raw_shape=train_set.raw_shape)
    row: dict[str, Any] = {"name": recipe.name, "recipe": recipe.to_dict(), "bundle": str(bundle),
                           "compress_seconds": round(time.time() - start, 1)}
    if test_set is not None and episodes:
        row.update(measure_bundle(float_model, bundle, test_set, episodes))
    return row


def fine_tune_stages(model, train_set, config, recipe: CompressionRecipe, verbose: int | str = 2,
                     stages: list[str] | None = None):
    """Prune -> cluster -> QAT, each fine-tuned on `recipe.steps` episodes with the ProtoNet loss.

    Returns `(exported, float_model, stages)`: the model to convert (the QAT model after QAT), the float
    Keras model before quantization (for counting parameters, multiply-adds and sparsity), and the
    names of the stages run."""
    import tensorflow_model_optimization as tfmot

    from edgemeta.compress.clustering import cluster, strip_clustering
    from edgemeta.compress.pruning import prune, strip_pruning
    from edgemeta.compress.quantization import quantize_for_training

    stages = list(stages or [])
    tune = _tuning_config(config, recipe.steps, recipe.learning_rate)
    if recipe.prunes:
        prune_steps = recipe.prune_steps or recipe.steps
        wrapped = prune(model, recipe.prune, prune_steps, recipe.structured)
        _fit(wrapped, train_set, _tuning_config(config, prune_steps, recipe.learning_rate),
             [tfmot.sparsity.keras.UpdatePruningStep()], verbose)
        model = strip_pruning(wrapped)
        stages.append("prune-2:4" if recipe.structured else f"prune-{recipe.prune:g}")
    if recipe.cluster is not None:
        wrapped = cluster(model, recipe.cluster, preserve_sparsity=recipe.prunes)
        _fit(wrapped, train_set, tune, [], verbose)
        model = strip_clustering(wrapped)
        stages.append(f"cluster-{recipe.cluster}")
    if recipe.qat:
        qat_model = quantize_for_training(model, preserve_sparsity=recipe.prunes, preserve_clusters=recipe.cluster is not None)
        _fit(qat_model, train_set, tune, [], verbose)
        # TFMOT's names: PQAT keeps the sparsity, CQAT the clusters, PCQAT both.
        stages.append({(True, True): "pcqat", (True, False): "pqat", (False, True): "cqat"}.get(
            (recipe.prunes, recipe.cluster is not None), "qat"))
        return qat_model, model, stages
    return model, model, stages


def distil(teacher, train_set, config, recipe: CompressionRecipe, cache_dir: Path, verbose: int | str = 2):
    """Trains (or reuses from `cache_dir`) a Conv-4 student `recipe.distill_width` times as wide as the
    teacher, depthwise-separable with `recipe.separable`, by `Distiller` on the run's episodes."""
    from edgemeta.compress.distillation import Distiller
    from edgemeta.train.learners import conv4

    blocks = sum(isinstance(layer, keras.layers.MaxPool2D) for layer in teacher.layers)
    teacher_filters = [layer.filters for layer in teacher.layers if isinstance(layer, keras.layers.Conv2D)][-1]
    filters = max(1, round(recipe.distill_width * teacher_filters))
    key = {"filters": filters, "blocks": blocks, "separable": recipe.separable, "steps": recipe.distill_steps,
           "learning_rate": recipe.distill_learning_rate, "geometry_weight": recipe.geometry_weight,
           "teacher_weights_sum": float(sum(abs(w).sum() for w in teacher.get_weights()))}
    cached = cache_dir / STUDENT_FILE
    if cached.is_file() and json.loads(cached.read_text()).get("key") == key:
        return keras.models.load_model(cache_dir / "embedding.keras", compile=False)
    student = conv4(tuple(teacher.input_shape[1:]), filters=filters, blocks=blocks, separable=recipe.separable)
    net = Distiller(student, teacher, recipe.geometry_weight)
    tune = _tuning_config(config, recipe.distill_steps, recipe.distill_learning_rate)
    start = time.time()
    history = _fit(net, train_set, tune, [], verbose, learner=net)
    cache_dir.mkdir(parents=True, exist_ok=True)
    student.save(cache_dir / "embedding.keras")
    cached.write_text(json.dumps({"key": key, "train_seconds": round(time.time() - start, 1),
                                  "final_loss": float(history.history["loss"][-1])}, indent=2) + "\n")
    return student


def compress_variants(run_dir: str | Path, recipes: Mapping[str, CompressionRecipe], out_dir: str | Path,
                      data_dir: str | None = None, episodes: int = 600, verbose: int | str = 2,
                      command: str = "", *, export_bundle: ExportBundle, to_tflite: ToTFLite) -> dict[str, Any]:
    """Runs every recipe on the run, each into `out_dir/NAME/` (reusing variants an earlier, interrupted
    report in `out_dir` finished with the same recipe), measures the float teacher on the same held-out episodes,
    and writes `report.json`, `report.md` and `pareto.png` into `out_dir` (with
    `episodes=0`: the bundles only, for runs without held-out classes). `export_bundle` and `to_tflite`
    are `converters`' (the teacher's float32 size comes from `to_tflite`)."""
    from edgemeta.compress.report import feasible_tasks, side_by_side_latency_ms, write_report
    from edgemeta.train.episodes import EpisodeSampler
    from edgemeta.train.evaluation import evaluate_keras
    from edgemeta.train.training import load_run, load_split

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    teacher, run = load_run(run_dir)
    _, test_set = load_split(_run_config(run, data_dir), load_train=False)
    if test_set is None and episodes:
        raise ValueError(f"Run {str(run_dir)!r} has no held-out classes to measure accuracy on. Received: episodes="
                         f"{episodes}; pass episodes=0 (CLI: --episodes 0) to compress without a report.")
    report: dict[str, Any] = {"run": str(run_dir), "episodes": episodes, "command": command, "variants": []}
    done = _finished_variants(out_dir, report)
    if episodes:
        report["teacher"] = {
            "params": int(teacher.count_params()), "float32_tflite_bytes": len(to_tflite(teacher, "float32")),
            "keras_float": {f"{n}-way {k}-shot": evaluate_keras(teacher, EpisodeSampler(test_set, n, k, 5, seed=1),
                                                                episodes, metric=run["metric"]).to_dict()
                            for n, k in feasible_tasks(test_set)},
        }
    for name, recipe in recipes.items():
        row = done.get(name)
        if row is None or CompressionRecipe.from_dict(row["recipe"]) != recipe:
            row = compress(run_dir, recipe, out_dir / name, data_dir, episodes, verbose,
                           students_dir=_student_dir(out_dir, recipe), export_bundle=export_bundle)
        report["variants"].append({**row, "name": name})
        (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")  # progress survives a crash
    if episodes:
        bundles = [v["bundle"] for v in report["variants"]]
        for v, ms in zip(report["variants"], side_by_side_latency_ms(bundles, test_set.raw[0])):
            v["latency_ms"], v["model_latency_ms"] = ms["raw"], ms["model"]
        report["latency"] = ("median ms per image, 1 thread, all variants interleaved in one run: latency_ms from a raw "
                             "image (preprocessing included), model_latency_ms the interpreter on a preprocessed one")
        write_report(report, out_dir)
    return report


def _finished_variants(out_dir: Path, report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Rows of an earlier report in `out_dir` for the same run and episodes whose bundle is still there:
    a long report resumes after a crash instead of re-training what it had finished."""
    from edgemeta.format.bundle import MANIFEST_FILE

    path = out_dir / "report.json"
    if not path.is_file():
        return {}
    old = json.loads(path.read_text())
    if (old.get("run"), old.get("episodes")) != (report["run"], report["episodes"]):
        return {}
    return {v["name"]: v for v in old.get("variants", []) if (Path(v["bundle"]) / MANIFEST_FILE).is_file()}


def _student_dir(out_dir: Path, recipe: CompressionRecipe) -> Path | None:
    if recipe.distill_width is None:
        return None
    return out_dir / "students" / (f"width{recipe.distill_width:g}" + ("-separable" if recipe.separable else ""))


def _run_config(run: dict[str, Any], data_dir: str | None):
    from edgemeta.train.training import TrainConfig

    return TrainConfig(**{**run["config"], **({"data_dir": data_dir} if data_dir else {})})


def _tuning_config(config, steps: int, learning_rate: float):
    """The run's own episodes and augmentation, with ProtoNet's loss, for `steps` steps."""
    return replace(config, learner="protonet", learner_options={}, steps=steps, epochs=min(config.epochs, steps),
                   learning_rate=learning_rate)


def _fit(model, train_set, config, callbacks, verbose, learner=None):
    from edgemeta.train.learners import build_learner
    from edgemeta.train.training import fit_episodes

    return fit_episodes(learner or build_learner("protonet", model), train_set, config, callbacks, verbose)

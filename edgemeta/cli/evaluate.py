"""`edgemeta evaluate`: accuracy ± 95 % CI of a run (Keras) or a bundle (runtime, no TensorFlow) on held-out classes."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgemeta.cli.options import add_task_arguments
from edgemeta.format.bundle import MANIFEST_FILE

if TYPE_CHECKING:
    from edgemeta.data.dataset import ImageClassDataset
    from edgemeta.runtime.evaluation import EvalResult

HELP = "accuracy ± 95%% CI of a run (Keras) or a bundle (runtime) on held-out classes"


def add_arguments(parser: argparse.ArgumentParser, argv: Sequence[str] = ()) -> None:
    from edgemeta.data.splits import DATASETS  # here: the board's commands don't pay for the data loaders

    p = parser
    p.add_argument("path", help="run directory or bundle directory")
    add_task_arguments(p)
    p.add_argument("--episodes", type=int, default=600)
    p.add_argument("--within-alphabet", action="store_true", help="draw each episode from one alphabet (group)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--dataset", choices=DATASETS)
    p.add_argument("--data-dir")
    p.add_argument("--alphabets", nargs="+", help="held-out Omniglot alphabets (default: the run's test split)")
    p.add_argument("--adaptation", choices=["prototypes", "own"], default="prototypes",
                   help="run directory only: nearest prototype over the embedding (what the board does, default) "
                        "or the learner's own adaptation (inner loop, attention, relation module)")


def run(args: argparse.Namespace) -> int:
    print(evaluate_path(args.path, args.way, args.shot, args.query, args.episodes, args.within_alphabet, args.seed,
                        args.dataset, args.data_dir, args.alphabets, args.adaptation == "own"))
    return 0


def evaluate_path(path: str | Path, n_way: int = 5, k_shot: int = 1, n_query: int = 5, episodes: int = 600,
                  within_group: bool = False, seed: int = 1, dataset: str | None = None, data_dir: str | None = None,
                  groups: Sequence[str] | None = None, own_adaptation: bool = False) -> EvalResult:
    """Evaluates a run directory (Keras) or a bundle (runtime) on held-out episodes: by nearest prototype
    over the embedding, or for a run with `own_adaptation`, by the learner's own adaptation.

    The held-out set defaults to the run's (or, for a bundle, its provenance's) test split. A bundle is
    evaluated without TensorFlow (a board's `edgemeta[device]` install suffices); its episodes are the
    ones a run's Keras evaluation draws for the same seed."""
    path = Path(path)
    if (path / MANIFEST_FILE).is_file():
        if own_adaptation:
            raise ValueError(f"{str(path)!r} is a bundle: on the board it adapts by prototypes only. Pass a run directory "
                             "(written by `edgemeta train`) to evaluate a learner's own adaptation.")
        return _evaluate_bundle(path, n_way, k_shot, n_query, episodes, within_group, seed, dataset, data_dir, groups)
    from edgemeta.train.episodes import EpisodeSampler
    from edgemeta.train.evaluation import evaluate_keras, evaluate_learner
    from edgemeta.train.training import load_learner, load_run

    backbone, run = load_run(path)
    test_set = held_out_set(run["config"], dataset, data_dir, groups)
    sampler = EpisodeSampler(test_set, n_way, k_shot, n_query, within_group=within_group, seed=seed)
    if own_adaptation:
        return evaluate_learner(load_learner(path)[0], sampler, episodes)
    return evaluate_keras(backbone, sampler, episodes, metric=run["metric"])


def _evaluate_bundle(path: Path, n_way: int, k_shot: int, n_query: int, episodes: int, within_group: bool, seed: int,
                     dataset: str | None, data_dir: str | None, groups: Sequence[str] | None) -> EvalResult:
    # TensorFlow-free: the board's runtime on the numpy episode description.
    from edgemeta.data.episodes import EpisodeIndices
    from edgemeta.runtime import Embedder, FewShotAdapter
    from edgemeta.runtime.evaluation import evaluate_adapter

    embedder = Embedder.from_bundle(path)  # reads and checks the manifest once, for the split too
    test_set = held_out_set(embedder.manifest.provenance.get("train_config", {}), dataset, data_dir, groups)
    sampler = EpisodeIndices(test_set, n_way, k_shot, n_query, within_group=within_group, seed=seed)
    return evaluate_adapter(lambda: FewShotAdapter(embedder), sampler, episodes)


def held_out_set(saved_config: dict[str, Any], dataset: str | None = None, data_dir: str | None = None,
                 groups: Sequence[str] | None = None) -> ImageClassDataset:
    """The held-out classes of a run's saved `TrainConfig` (empty: digits' defaults), with the command
    line's dataset, data directory and Omniglot alphabets overriding it. Loads without TensorFlow."""
    from edgemeta.data.splits import DataSplit, load_split  # TensorFlow-free, and no workstation module

    config = DataSplit.of(saved_config) if saved_config else DataSplit(dataset=dataset or "digits")
    overrides: dict[str, Any] = {"rotations": False}
    if dataset:
        overrides["dataset"] = dataset
    if data_dir:
        overrides["data_dir" if (dataset or config.dataset) != "folder" else "test_dir"] = data_dir
    if groups:
        overrides["test_groups"] = groups
    config = replace(config, **overrides)
    try:
        _, test_set = load_split(config, load_train=False)  # the held-out set alone
    except ImportError as e:  # digits come from scikit-learn, which a board's install lacks
        raise RuntimeError(str(e)) from e
    if test_set is None:
        raise ValueError("No held-out classes to evaluate on: pass --alphabets (Omniglot) or --data-dir (folder).")
    return test_set

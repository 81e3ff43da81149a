"""How long to train, chosen on validation classes: a run's per-epoch checkpoints (`edgemeta train --checkpoints`)
evaluated on its held-out split (mini-ImageNet `val`, Omniglot's held-out alphabets) by nearest prototype, Keras
float, on identical episodes.

    python benchmarks/select_on_val.py runs/photos-b6 --tasks 5x1 5x5 --episodes 600 --out runs/photos-b6/selection.json
    python benchmarks/select_on_val.py runs/omniglot-select-8k --tasks 20x1 --within-group --query 1

Prints one row per checkpoint (and the final model) with each task's accuracy and 95 % interval.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from edgemeta.cli.export import way_by_shot
from edgemeta.train.episodes import EpisodeSampler
from edgemeta.train.evaluation import embed_once, evaluate_embedding
from edgemeta.train.training import TrainConfig, load_learner, load_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--tasks", nargs="+", type=way_by_shot, default=[(5, 1), (5, 5)])
    parser.add_argument("--query", type=int, default=15)
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--every", type=int, default=1, metavar="N", help="every Nth checkpoint (and the final model)")
    parser.add_argument("--seed", type=int, default=1, help="episode seed (export measures with 1)")
    parser.add_argument("--center", type=int, default=0, metavar="N",
                        help="also measure embeddings centred on the mean embedding of N training images per class "
                             "(SimpleShot's CL2N), the final model only")
    parser.add_argument("--flip", action="store_true",
                        help="also measure test-time flips: each image's embedding averaged (unit length) with its "
                             "mirror's, the final model only")
    parser.add_argument("--within-group", action="store_true",
                        help="also each task with every episode's classes from one group (Omniglot: one alphabet, as "
                             "in Lake et al.'s one-shot runs)")
    parser.add_argument("--out", help="write the rows as JSON here")
    args = parser.parse_args()

    learner, run = load_learner(args.run)
    _, val = load_split(TrainConfig(**run["config"]), load_train=False)
    candidates = sorted((Path(args.run) / "checkpoints").glob("epoch*.weights.h5"))[args.every - 1 :: args.every] + [None]
    rows = []
    for checkpoint in candidates:
        start = time.time()
        if checkpoint is not None:
            learner.load_weights(checkpoint)
        else:
            learner, _ = load_learner(args.run)
        row = {"model": checkpoint.name if checkpoint else "final"}
        embeddings = embed_once(learner.backbone, val.images)  # every task's episodes index the same embeddings
        variants = [("", embeddings)]
        if args.center and checkpoint is None:
            train, _ = load_split(TrainConfig(**run["config"]))
            keep = np.concatenate([np.flatnonzero(train.labels == c)[: args.center] for c in range(train.num_classes)])
            variants.append(("centred ", embeddings - embed_once(learner.backbone, train.images.take(keep, axis=0)).mean(0)))
        if args.flip and checkpoint is None:
            mirrored = embed_once(learner.backbone, np.asarray(val.images)[:, :, ::-1].copy())
            unit = [v / np.linalg.norm(v, axis=1, keepdims=True) for v in (embeddings, mirrored)]
            variants.append(("flip-averaged ", unit[0] + unit[1]))
        for prefix, vectors in variants:
            for way, shot in args.tasks:
                for within in (False, True) if args.within_group else (False,):
                    sampler = EpisodeSampler(val, way, shot, args.query, within_group=within, seed=args.seed)
                    result = evaluate_embedding(lambda _, e=vectors: e, sampler, args.episodes, metric=run["metric"])
                    name = f"{prefix}{way}-way {shot}-shot" + (" within-group" if within else "")
                    row[name] = [round(100 * result.accuracy, 2), round(100 * result.ci95, 2)]
        row["seconds"] = round(time.time() - start, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"run": args.run, "episodes": args.episodes, "query": args.query,
                                              "within_group": args.within_group, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()

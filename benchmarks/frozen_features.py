"""Few-shot accuracy of a pretrained backbone's frozen features on mini-ImageNet `val`: the baseline that
episodic fine-tuning (issue 19's P>M>F recipe) has to beat.

    python benchmarks/frozen_features.py --backbone efficientnet_lite0 --image-size 224 --out runs/frozen

Every `val` image is embedded once by the Keras float model (ImageNet weights, no training), then the
project's episodes (`EpisodeIndices`, 15 queries) are classified by the nearest prototype: cosine (unit-length
embeddings, squared Euclidean distance between them) or Euclidean. Prints mean accuracy and its 95 %
interval for 5-way 1-shot, 5-way 5-shot and 16-way 1-shot.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from edgemeta.data.episodes import EpisodeIndices
from edgemeta.data.mini_imagenet import load_mini_imagenet
from edgemeta.format.preprocessing import Preprocessing, normalization
from edgemeta.runtime.evaluation import ci95

SETTINGS = ((5, 1), (5, 5), (16, 1))  # (way, shot); val has 16 classes


def embed_val(backbone: str, image_size: int, batch: int = 32) -> tuple[np.ndarray, object]:
    """`(embeddings (1600, D) float32, the val dataset)` of the frozen pretrained backbone."""
    from edgemeta.train.backbones import build_backbone, input_options

    mean, std = normalization("efficientnet-lite" if backbone == "efficientnet_lite0" else "unit")
    pre = Preprocessing(image_size, image_size, 3, mean=mean, std=std)  # squashed, as the reference was fed
    val = load_mini_imagenet("val", preprocessing=pre)
    normalize = "efficientnet-lite" if backbone == "efficientnet_lite0" else "unit"
    model = build_backbone(backbone, (image_size, image_size, 3), "imagenet", **input_options(backbone, normalize, "imagenet"))
    embeddings = np.concatenate([model(val.images[i : i + batch], training=False).numpy()
                                 for i in range(0, len(val.images), batch)])
    return embeddings.astype(np.float32), val


def episode_accuracies(embeddings: np.ndarray, val: object, way: int, shot: int, episodes: int, metric: str,
                       seed: int = 0) -> np.ndarray:
    """Accuracy of each of `episodes` episodes (15 queries per class) by the nearest prototype."""
    x = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True) if metric == "cosine" else embeddings
    sampler = EpisodeIndices(val, n_way=way, k_shot=shot, n_query=15, seed=seed)
    accuracies = []
    for support, support_labels, query, query_labels in sampler.take(episodes):
        protos = np.stack([x[support[support_labels == c]].mean(0) for c in range(way)])
        d = ((x[query][:, None, :] - protos[None]) ** 2).sum(-1)
        accuracies.append(float((d.argmin(1) == query_labels).mean()))
    return np.asarray(accuracies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--metric", choices=["cosine", "euclidean"], default="cosine")
    parser.add_argument("--out", default="runs/frozen")
    args = parser.parse_args()
    start = time.time()
    embeddings, val = embed_val(args.backbone, args.image_size)
    embedded = time.time() - start
    rows = []
    for way, shot in SETTINGS:
        acc = episode_accuracies(embeddings, val, way, shot, args.episodes, args.metric)
        rows.append({"way": way, "shot": shot, "accuracy": float(acc.mean()), "ci95": ci95(acc), "episodes": len(acc)})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"backbone": args.backbone, "image_size": args.image_size, "metric": args.metric, "rows": rows,
              "embed_seconds": round(embedded, 1), "machine": platform.processor() or platform.machine()}
    (out / f"frozen_{args.backbone}_{args.image_size}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"{args.backbone} at {args.image_size}, frozen ImageNet features, {args.metric} prototypes, "
          f"{args.episodes} episodes of mini-ImageNet val (embedding took {embedded:.0f} s):")
    for r in rows:
        print(f"  {r['way']}-way {r['shot']}-shot: {100 * r['accuracy']:.1f} % ± {100 * r['ci95']:.1f}")


if __name__ == "__main__":
    main()

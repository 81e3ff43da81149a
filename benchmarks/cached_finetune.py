"""Does episodic fine-tuning of a pretrained EfficientNet-Lite0's last blocks beat its frozen features on
mini-ImageNet `val`? A cheap probe for the P>M>F recipe (issue 19): the frozen trunk's activations are
computed once, and only the blocks from `--cut` on are fine-tuned with ProtoNet episodes (cosine prototypes).

    python benchmarks/cached_finetune.py --image-size 224 --per-class 100 --steps 400 --cut block6a_expand_conv

No augmentation (the trunk's activations are cached), `--per-class` training images of each of the 64
`train` classes, 5-way 5-shot 10-query episodes, Adam at 1e-4; `val` is evaluated on 300 episodes
(15 queries) at 5-way 1-shot and 5-shot before training and four times during it.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from edgemeta.data.episodes import EpisodeIndices
from edgemeta.data.mini_imagenet import load_mini_imagenet
from edgemeta.format.preprocessing import Preprocessing, normalization
from edgemeta.runtime.evaluation import ci95
from edgemeta.train.backbones import build_backbone
from edgemeta.train.backend import keras, tf

SCALE = 10.0  # logits = -SCALE x squared distance between unit vectors


def cached(model: keras.Model, images: np.ndarray, batch: int = 64) -> np.ndarray:
    return np.concatenate([model(images[i : i + batch], training=False).numpy() for i in range(0, len(images), batch)])


def val_accuracy(head: keras.Model, features: np.ndarray, val: object, episodes: int = 300) -> list[tuple[float, float]]:
    """(mean, 95 % half-width) at 5-way 1-shot and 5-way 5-shot, by the nearest cosine prototype."""
    e = cached(head, features, 128)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    rows = []
    for way, shot in ((5, 1), (5, 5)):
        accuracies = []
        for support, support_labels, query, query_labels in EpisodeIndices(val, way, shot, 15, seed=0).take(episodes):
            protos = np.stack([e[support[support_labels == c]].mean(0) for c in range(way)])
            accuracies.append(float((((e[query][:, None] - protos[None]) ** 2).sum(-1).argmin(1) == query_labels).mean()))
        rows.append((float(np.mean(accuracies)), ci95(accuracies)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--cut", default="block6a_expand_conv", help="the first layer that is fine-tuned")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    mean, std = normalization("efficientnet-lite")
    pre = Preprocessing(args.image_size, args.image_size, 3, mean=mean, std=std)
    start = time.time()
    val = load_mini_imagenet("val", preprocessing=pre)
    train = load_mini_imagenet("train", preprocessing=pre)
    keep = np.concatenate([np.flatnonzero(train.labels == c)[: args.per_class] for c in range(train.num_classes)])
    model = build_backbone("efficientnet_lite0", pre.input_shape, "imagenet", rescale=False)
    cut = model.get_layer(args.cut)
    trunk, head = keras.Model(model.input, cut.input), keras.Model(cut.input, model.output)
    train_features, train_labels = cached(trunk, train.images[keep]), train.labels[keep]
    val_features = cached(trunk, val.images)
    print(f"trunk activations {train_features.shape[1:]} cached in {time.time() - start:.0f} s", flush=True)

    def report(tag: str) -> None:
        print(tag, "  ".join(f"5-way {shot}-shot {100 * m:.1f} % ± {100 * h:.1f}"
                             for shot, (m, h) in zip((1, 5), val_accuracy(head, val_features, val))), flush=True)

    report("frozen:")
    optimizer = keras.optimizers.Adam(1e-4)
    rng = np.random.default_rng(args.seed)
    way, shot, n_query = 5, 5, 10
    labels = np.repeat(np.arange(way), n_query)
    for step in range(1, args.steps + 1):
        support, query = [], []
        for c in rng.choice(train.num_classes, way, replace=False):
            pool = rng.permutation(np.flatnonzero(train_labels == c))[: shot + n_query]
            support.append(pool[:shot])
            query.append(pool[shot:])
        with tf.GradientTape() as tape:
            s = tf.math.l2_normalize(head(train_features[np.concatenate(support)], training=True), -1)
            q = tf.math.l2_normalize(head(train_features[np.concatenate(query)], training=True), -1)
            protos = tf.reduce_mean(tf.reshape(s, (way, shot, -1)), 1)
            logits = -SCALE * tf.reduce_sum((q[:, None] - protos[None]) ** 2, -1)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
        optimizer.apply_gradients(zip(tape.gradient(loss, head.trainable_variables), head.trainable_variables))
        if step % max(1, args.steps // 4) == 0:
            report(f"step {step} (loss {float(loss):.3f}):")


if __name__ == "__main__":
    main()

"""The learn2learn side of benchmarks/training_throughput.py: times ProtoNet or MAML training in PyTorch.

Runs inside .venv-l2l (torch + learn2learn, made by benchmarks/l2l_venv.sh); imports neither TensorFlow
nor edgemeta. Reads the preprocessed images the main script wrote (`--data`, an .npz with `images`
float32 (n, 28, 28, 1) or (n, 1, 28, 28) and integer `labels`) and trains on them in one of two ways:

- `--pipeline l2l`: learn2learn's own input pipeline, as its examples build it: `MetaDataset` over a
  `TensorDataset`, a `TaskDataset` with `NWays`, `KShots`, `LoadData`, `RemapLabels`, `ConsecutiveLabels`
  (`--sampler fused`: `FusedNWaysKShots` in place of the first two, as learn2learn's Omniglot benchmark
  does), one `sample()` per episode.
- `--pipeline indices`: the exact episodes edgemeta trains on (`--episodes`, an .npy of shape
  (episodes, n_way * (k_shot + n_query)): class-major support indices, then class-major query indices),
  gathered straight from the image tensor.

Each round builds a fresh model and optimizer, runs `--warmup` untimed steps, then times `--steps` steps
(input pipeline included) and prints one JSON line with every round's episodes/s.

For benchmarks/l2l_accuracy.py it also trains to the end of a schedule: `--cosine-decay` decays the learning rate
as edgemeta's `fit_episodes` does (Keras `CosineDecay(lr, steps, alpha=0.01)`, here `CosineAnnealingLR` with
`eta_min = 0.01 lr` over warm-up plus timed steps), and `--embed TEST.npz --embed-out OUT.npy` writes the trained
model's embeddings (eval mode: BatchNorm's running statistics, as edgemeta's inference) of held-out images.

    .venv-l2l/bin/python benchmarks/l2l_train.py --data runs/throughput/omniglot28.npz --learner protonet \\
        --n-way 60 --k-shot 1 --n-query 5 --steps 40 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time

import learn2learn as l2l
import numpy as np
import torch
import torch.nn.functional as F
from learn2learn.data.transforms import ConsecutiveLabels, FusedNWaysKShots, KShots, LoadData, NWays, RemapLabels
from torch import nn


def conv4(n_way: int | None = None, track_running_stats: bool = True) -> nn.Module:
    """edgemeta's Conv-4 (edgemeta/train/learners/backbones.py) in PyTorch: 4 x [3x3 conv 64 'same' (with bias), BN,
    ReLU, 2x2 max-pool], flattened to 64-d on 28x28. Keras' BN momentum 0.9 is PyTorch's 0.1, epsilon 1e-3
    in both. `n_way` appends MAML's linear head."""
    layers: list[nn.Module] = []
    for i in range(4):
        layers += [nn.Conv2d(1 if i == 0 else 64, 64, 3, padding=1),
                   nn.BatchNorm2d(64, eps=1e-3, momentum=0.1, track_running_stats=track_running_stats),
                   nn.ReLU(), nn.MaxPool2d(2)]
    layers.append(nn.Flatten())
    if n_way is not None:
        layers.append(nn.Linear(64, n_way))
    return nn.Sequential(*layers)


def keras_init(model: nn.Module) -> None:
    """Keras' initialisation in place of PyTorch's (a diagnostic: does it explain an accuracy gap?): Glorot-uniform
    convolution kernels and zero biases, where PyTorch draws both from U(+-1/sqrt(fan_in))."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)


def pairwise_distances_logits(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Negative squared Euclidean distances, `(n, d)` x `(m, d)` -> `(n, m)`, as learn2learn's ProtoNet example."""
    n, m = a.shape[0], b.shape[0]
    return -((a.unsqueeze(1).expand(n, m, -1) - b.unsqueeze(0).expand(n, m, -1)) ** 2).sum(dim=2)


class L2LEpisodes:
    """learn2learn's pipeline: `sample()` gives one task as (support, support_labels, query, query_labels),
    support and query class-major, split as learn2learn's examples split a sorted task."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, n_way: int, k_shot: int, n_query: int, sampler: str):
        dataset = l2l.data.MetaDataset(torch.utils.data.TensorDataset(images, labels))
        if sampler == "fused":
            choose = [FusedNWaysKShots(dataset, n=n_way, k=k_shot + n_query)]
        else:
            choose = [NWays(dataset, n_way), KShots(dataset, k_shot + n_query)]
        transforms = choose + [LoadData(dataset), RemapLabels(dataset), ConsecutiveLabels(dataset)]
        self.tasks = l2l.data.TaskDataset(dataset, task_transforms=transforms, num_tasks=-1)
        self.n_way, self.k_shot, self.n_query = n_way, k_shot, n_query
        support = np.zeros(n_way * (k_shot + n_query), dtype=bool)
        for offset in range(k_shot):
            support[np.arange(n_way) * (k_shot + n_query) + offset] = True
        self.support_mask, self.query_mask = torch.from_numpy(support), torch.from_numpy(~support)

    def sample(self):
        data, labels = self.tasks.sample()
        order = torch.sort(labels).indices  # ConsecutiveLabels orders classes; the sort makes each class contiguous
        data, labels = data[order], labels[order]
        return (data[self.support_mask], labels[self.support_mask].long(),
                data[self.query_mask], labels[self.query_mask].long())


class FixedEpisodes:
    """edgemeta's episodes by index: the i-th `sample()` is row i of `episodes`, gathered from `images`."""

    def __init__(self, images: torch.Tensor, episodes: np.ndarray, n_way: int, k_shot: int, n_query: int):
        if episodes.ndim != 2 or episodes.shape[1] != n_way * (k_shot + n_query):
            raise ValueError(f"episodes must have shape (E, n_way * (k_shot + n_query)) = (E, {n_way * (k_shot + n_query)}). "
                             f"Received: {episodes.shape}")
        self.images, self.episodes, self.next = images, torch.from_numpy(episodes.astype(np.int64)), 0
        self.split = n_way * k_shot
        self.support_labels = torch.arange(n_way).repeat_interleave(k_shot)
        self.query_labels = torch.arange(n_way).repeat_interleave(n_query)

    def sample(self):
        if self.next >= len(self.episodes):
            raise IndexError(f"Ran out of episodes: the file has {len(self.episodes)}; "
                             "--steps, --warmup and --meta-batch need more.")
        row, self.next = self.episodes[self.next], self.next + 1
        return self.images[row[: self.split]], self.support_labels, self.images[row[self.split :]], self.query_labels


def protonet_step(model: nn.Module, optimizer, episodes, n_way: int, k_shot: int, memory_format, autocast: bool) -> float:
    support, _, query, query_labels = episodes.sample()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):  # one pass, as learn2learn's example (and edgemeta) do
        embeddings = model(torch.cat([support, query]).contiguous(memory_format=memory_format))
    embeddings = embeddings.float()  # distances and loss in float32, as edgemeta's mixed precision keeps them
    prototypes = embeddings[: len(support)].reshape(n_way, k_shot, -1).mean(dim=1)
    loss = F.cross_entropy(pairwise_distances_logits(embeddings[len(support) :], prototypes), query_labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


def maml_step(maml, optimizer, episodes, meta_batch: int, inner_steps: int, memory_format, autocast: bool) -> float:
    optimizer.zero_grad()
    total = 0.0
    for _ in range(meta_batch):
        support, support_labels, query, query_labels = episodes.sample()
        support, query = support.contiguous(memory_format=memory_format), query.contiguous(memory_format=memory_format)
        learner = maml.clone()
        for _ in range(inner_steps):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                logits = learner(support)
            learner.adapt(F.cross_entropy(logits.float(), support_labels))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logits = learner(query)
        loss = F.cross_entropy(logits.float(), query_labels) / meta_batch  # mean over the meta-batch, as edgemeta's loss
        loss.backward()
        total += loss.item()
    optimizer.step()
    return total


def run_round(args, images: torch.Tensor, labels: torch.Tensor, episode_file: np.ndarray | None, seed: int) -> dict:
    torch.manual_seed(seed)
    random.seed(seed)  # learn2learn's task transforms draw from `random`
    np.random.seed(seed)
    if episode_file is None:
        episodes = L2LEpisodes(images, labels, args.n_way, args.k_shot, args.n_query, args.sampler)
    else:
        episodes = FixedEpisodes(images, episode_file, args.n_way, args.k_shot, args.n_query)
    # channels_last is PyTorch's CPU tuning advice for convnets; which layout is faster per learner: training_throughput.py.
    memory_format = torch.channels_last if args.memory_format == "channels_last" else torch.contiguous_format
    autocast = args.precision == "bfloat16"  # the backbone in bfloat16 (torch.autocast), weights and loss float32
    if args.learner == "protonet":
        model = conv4().train().to(memory_format=memory_format)
        if args.init == "keras":
            keras_init(model)
        optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
        step = lambda: protonet_step(model, optimizer, episodes, args.n_way, args.k_shot, memory_format, autocast)  # noqa: E731
        if args.cosine_decay:
            schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.warmup + args.steps, eta_min=0.01 * args.lr)
            unscheduled = step

            def step() -> float:
                loss = unscheduled()
                schedule.step()
                return loss
    else:
        # Batch statistics in every pass, as edgemeta's functional MAML (the MAML paper's transductive BN).
        model = conv4(args.n_way, track_running_stats=False).train().to(memory_format=memory_format)
        maml = l2l.algorithms.MAML(model, lr=args.inner_lr, first_order=False)
        optimizer = torch.optim.Adam(maml.parameters(), lr=args.lr)
        step = lambda: maml_step(maml, optimizer, episodes, args.meta_batch, args.inner_steps, memory_format, autocast)  # noqa: E731
    for _ in range(args.warmup):
        step()
    start = time.perf_counter()
    losses = [step() for _ in range(args.steps)]
    seconds = time.perf_counter() - start
    if args.embed:
        embed_held_out(model, args.embed, args.embed_out, memory_format)
    return {"episodes_per_second": args.steps * args.meta_batch / seconds, "seconds": seconds,
            "first_loss": losses[0], "last_loss": losses[-1]}


@torch.no_grad()
def embed_held_out(model: nn.Module, images_npz: str, out: str, memory_format, batch: int = 512) -> None:
    """Writes the model's embeddings (eval mode) of the images in `images_npz` to `out` (.npy, float32)."""
    images, _ = load_images(images_npz)
    model.eval()
    chunks = [model(images[i : i + batch].contiguous(memory_format=memory_format)).float() for i in range(0, len(images), batch)]
    np.save(out, torch.cat(chunks).numpy().astype(np.float32))
    model.train()


def pipeline_rate(args, images: torch.Tensor, labels: torch.Tensor, count: int = 200) -> float:
    """Episodes/s of learn2learn's input pipeline alone (no model), for the profile."""
    random.seed(0)
    episodes = L2LEpisodes(images, labels, args.n_way, args.k_shot, args.n_query, args.sampler)
    for _ in range(10):
        episodes.sample()
    start = time.perf_counter()
    for _ in range(count):
        episodes.sample()
    return count / (time.perf_counter() - start)


def profile_ops(args, images: torch.Tensor, labels: torch.Tensor, episode_file: np.ndarray | None, rows: int = 12) -> list[dict]:
    """The `rows` operators with most self CPU time over `--steps` steps (torch.profiler), for the profile."""
    from torch.profiler import ProfilerActivity, profile

    quick = argparse.Namespace(**{**vars(args), "rounds": 1})
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run_round(quick, images, labels, episode_file, args.seed)
    total = sum(e.self_cpu_time_total for e in prof.key_averages())
    top = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:rows]
    return [{"op": e.key, "self_ms": round(e.self_cpu_time_total / 1000, 1), "share": round(e.self_cpu_time_total / total, 3),
             "calls": e.count} for e in top]


def load_images(path: str) -> tuple[torch.Tensor, torch.Tensor]:
    data = np.load(path)
    images, labels = data["images"].astype(np.float32), data["labels"].astype(np.int64)
    if images.ndim != 4 or 1 not in (images.shape[1], images.shape[3]):
        raise ValueError(f"images must be (n, H, W, 1) or (n, 1, H, W). Received: {images.shape}")
    if images.shape[1] != 1:
        images = images.transpose(0, 3, 1, 2)  # PyTorch's NCHW, once, outside the timed loop
    return torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help=".npz with images and labels")
    parser.add_argument("--learner", choices=("protonet", "maml"), default="protonet")
    parser.add_argument("--pipeline", choices=("l2l", "indices"), default="l2l")
    parser.add_argument("--sampler", choices=("fused", "separate"), default="separate",
                        help="l2l pipeline: NWays+KShots (separate) or FusedNWaysKShots (fused)")
    parser.add_argument("--episodes", help="indices pipeline: .npy of episode indices")
    parser.add_argument("--n-way", type=int, default=60)
    parser.add_argument("--k-shot", type=int, default=1)
    parser.add_argument("--n-query", type=int, default=5)
    parser.add_argument("--meta-batch", type=int, default=1, help="episodes per optimizer step")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--inner-lr", type=float, default=0.4)
    parser.add_argument("--inner-steps", type=int, default=1)
    parser.add_argument("--steps", type=int, default=40, help="timed optimizer steps per round")
    parser.add_argument("--warmup", type=int, default=5, help="untimed optimizer steps first in each round")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--memory-format", choices=("channels_last", "contiguous"), default="channels_last",
                        help="layout of the model and its inputs (contiguous = PyTorch's default NCHW)")
    parser.add_argument("--precision", choices=("float32", "bfloat16"), default="float32",
                        help="bfloat16: the model's forward under torch.autocast (mixed precision)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", action="store_true", help="also measure the pipeline alone and the top operators")
    parser.add_argument("--init", choices=("torch", "keras"), default="torch",
                        help="ProtoNet: PyTorch's default initialisation, or Keras' (Glorot kernels, zero biases)")
    parser.add_argument("--cosine-decay", action="store_true", help="ProtoNet: decay the learning rate as edgemeta does")
    parser.add_argument("--embed", help="after training: an .npz of held-out images to embed (ProtoNet, one round)")
    parser.add_argument("--embed-out", help="where --embed writes the embeddings (.npy)")
    args = parser.parse_args(argv)
    if bool(args.embed) != bool(args.embed_out) or (args.embed and (args.learner != "protonet" or args.rounds != 1)):
        parser.error("--embed and --embed-out go together, with --learner protonet and --rounds 1. Received: "
                     f"--embed {args.embed!r} --embed-out {args.embed_out!r} --learner {args.learner} --rounds {args.rounds}")
    if args.learner == "protonet" and args.meta_batch != 1:
        parser.error(f"ProtoNet trains on one episode per step. Received: --meta-batch {args.meta_batch}")
    if (args.pipeline == "indices") != bool(args.episodes):
        parser.error("--episodes is required with --pipeline indices, and only there")
    torch.set_num_threads(args.threads)
    images, labels = load_images(args.data)
    episode_file = np.load(args.episodes) if args.episodes else None
    rounds = []
    for _ in range(args.rounds):  # every round starts afresh on the same episodes, as edgemeta's rounds do
        rounds.append(run_round(args, images, labels, episode_file, args.seed))
    result = {
        "side": "learn2learn", "learner": args.learner, "pipeline": args.pipeline,
        "sampler": args.sampler if args.pipeline == "l2l" else None,
        "episode": {"n_way": args.n_way, "k_shot": args.k_shot, "n_query": args.n_query, "meta_batch": args.meta_batch},
        "steps": args.steps, "warmup": args.warmup, "threads": torch.get_num_threads(), "memory_format": args.memory_format,
        "precision": args.precision,
        "interop_threads": torch.get_num_interop_threads(),
        "episodes_per_second": [round(r["episodes_per_second"], 3) for r in rounds], "rounds": rounds,
        "versions": {"torch": torch.__version__, "learn2learn": l2l.__version__, "numpy": np.__version__,
                     "python": sys.version.split()[0]},
        "mkldnn": torch.backends.mkldnn.is_available(),
    }
    if args.profile:
        if args.pipeline == "l2l":
            result["pipeline_only_episodes_per_second"] = round(pipeline_rate(args, images, labels), 1)
        result["top_ops"] = profile_ops(args, images, labels, episode_file)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()

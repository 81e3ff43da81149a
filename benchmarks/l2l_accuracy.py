"""Held-out accuracy of edgemeta's ProtoNet against learn2learn's, trained on identical episodes, with both speeds.

The check behind a speed ratio: that edgemeta is faster at the same learning, not by learning less. Both sides
train the Conv-4 ProtoNet of benchmarks/training_throughput.py (60-way 1-shot 5-query, Adam 1e-3 with
edgemeta's cosine decay, float32 by default) for `--steps` steps on the same episodes of the fixed split's 5
training alphabets: edgemeta through `fit_episodes`, learn2learn in `.venv-l2l` (benchmarks/l2l_train.py) on
those episodes gathered by index. Each side's trained embedding (inference mode) is then measured on the same
episodes of the 3 held-out alphabets by the same nearest-prototype code (`edgemeta.train.evaluation`), and the
report says whether the 95 % intervals overlap. Episodes/s are over the whole training (the first steps, with
tracing, included), so they are lower than training_throughput.py's steady state.

    bash benchmarks/l2l_venv.sh
    python benchmarks/l2l_accuracy.py --data-dir ../shared/datasets/omniglot --steps 2000 --out runs/l2l-accuracy
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from report import write_report  # its sibling module (benchmarks run as scripts)
from training_throughput import (  # its sibling script (benchmarks run as scripts: this folder is on sys.path)
    L2L_SCRIPT,
    ROOT,
    SETTINGS,
    config_for,
    configure_tensorflow,
    default_omniglot_dir,
    write_episode_indices,
)

from edgemeta.cpu import cpu_line, describe_cpu

TASKS = ((5, 1), (5, 5), (20, 1), (20, 5))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=default_omniglot_dir())
    parser.add_argument("--out", default="runs/l2l-accuracy")
    parser.add_argument("--steps", type=int, default=2000, help="training steps of each side (one 60-way episode each)")
    parser.add_argument("--episodes", type=int, default=1000, help="held-out episodes per task")
    parser.add_argument("--query", type=int, default=5, help="query images per class in the held-out episodes")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="intra-op threads of both sides")
    parser.add_argument("--precision", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--seed", type=int, default=0, help="both sides' initialisation and the training episodes")
    parser.add_argument("--l2l-init", choices=("torch", "keras"), default="torch",
                        help="learn2learn's initialisation: PyTorch's default, or Keras' as edgemeta's (l2l_train.py --init)")
    parser.add_argument("--l2l-python", default=str(ROOT / ".venv-l2l" / "bin" / "python"))
    args = parser.parse_args(argv)
    if not Path(args.l2l_python).is_file():
        parser.error(f"--l2l-python {args.l2l_python!r} does not exist: run `bash benchmarks/l2l_venv.sh` first.")
    if args.steps < 2 or args.episodes < 2:
        parser.error(f"--steps and --episodes must be at least 2. Received: {args.steps}, {args.episodes}")
    return args


def train_edgemeta(train_set, config):
    """edgemeta's ProtoNet trained as `edgemeta train` does; returns (backbone, seconds)."""
    from edgemeta.train.backend import keras
    from edgemeta.train.training import build_for_training, fit_episodes

    keras.backend.clear_session()
    keras.utils.set_random_seed(config.seed)
    net = build_for_training(config, train_set.preprocessing.input_shape)
    start = time.perf_counter()
    fit_episodes(net, train_set, config, [], verbose=0)
    return net.backbone, time.perf_counter() - start


def train_l2l(args, npz: Path, episodes: Path, held_out: Path, embeddings: Path) -> tuple[dict, float]:
    """learn2learn's ProtoNet on the same episodes (all `--steps` of them: 1 warm-up + the rest); writes the held-out
    embeddings. Returns (its JSON line, wall seconds of the whole process)."""
    s = SETTINGS["protonet"]
    command = [args.l2l_python, str(L2L_SCRIPT), "--data", str(npz), "--learner", "protonet", "--pipeline", "indices",
               "--episodes", str(episodes), "--n-way", str(s["n_way"]), "--k-shot", str(s["k_shot"]),
               "--n-query", str(s["n_query"]), "--lr", str(s["learning_rate"]), "--cosine-decay",
               "--warmup", "1", "--steps", str(args.steps - 1), "--rounds", "1", "--threads", str(args.threads),
               "--memory-format", "channels_last", "--precision", args.precision,
               "--embed", str(held_out), "--embed-out", str(embeddings), "--seed", str(args.seed), "--init", args.l2l_init]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"learn2learn side failed ({shlex.join(command)}):\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["command"] = shlex.join(command)
    return result, time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    tf, _ = configure_tensorflow(args.threads)
    from dataclasses import replace

    from edgemeta.data.episodes import EpisodeIndices
    from edgemeta.train.evaluation import embed_once, evaluate_embedding
    from edgemeta.train.training import load_split

    out = Path(args.out)
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    config = replace(config_for("protonet", args.data_dir, args.steps, args.precision), seed=args.seed)
    train_set, test_set = load_split(config)
    npz, held_out = work / "train28.npz", work / "held_out28.npz"
    np.savez(npz, images=train_set.images, labels=train_set.labels)
    np.savez(held_out, images=test_set.images, labels=test_set.labels)
    episodes = work / "protonet_episodes.npy"
    write_episode_indices(train_set, config, episodes)
    print(cpu_line(), flush=True)

    backbone, edgemeta_seconds = train_edgemeta(train_set, config)
    sides = {"edgemeta": embed_once(backbone, test_set.images)}
    print(f"edgemeta trained {args.steps} steps in {edgemeta_seconds:.0f} s", flush=True)
    l2l_embeddings = work / "l2l_held_out_embeddings.npy"
    l2l, l2l_seconds = train_l2l(args, npz, episodes, held_out, l2l_embeddings)
    sides["learn2learn"] = np.load(l2l_embeddings)
    print(f"learn2learn trained {args.steps} steps in {l2l_seconds:.0f} s (process wall time)", flush=True)

    tasks = []
    for n_way, k_shot in TASKS:
        row = {"n_way": n_way, "k_shot": k_shot}
        for side, embeddings in sides.items():
            sampler = EpisodeIndices(test_set, n_way, k_shot, args.query, seed=1)  # the same episodes for both sides
            row[side] = evaluate_embedding(lambda _images, e=embeddings: e, sampler, args.episodes).to_dict()
        a, b = row["edgemeta"], row["learn2learn"]
        row["intervals_overlap"] = bool(abs(a["accuracy"] - b["accuracy"]) <= a["ci95"] + b["ci95"])
        tasks.append(row)
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "cpu": cpu_line(), "cpu_detail": describe_cpu(),
        "command": shlex.join([Path(sys.executable).name, *sys.argv]), "steps": args.steps, "precision": args.precision,
        "seed": args.seed, "l2l_init": args.l2l_init,
        "threads": args.threads, "held_out": {"classes": int(len(set(test_set.labels))), "images": int(len(test_set.labels))},
        "tensorflow": tf.__version__, "torch": l2l["versions"]["torch"], "learn2learn": l2l["versions"]["learn2learn"],
        "edgemeta_seconds": edgemeta_seconds, "l2l_seconds": l2l["rounds"][0]["seconds"] + 0.0,
        "edgemeta_episodes_per_second": args.steps / edgemeta_seconds,
        "l2l_episodes_per_second_after_first_step": l2l["episodes_per_second"][0],
        "l2l_command": l2l["command"], "tasks": tasks,
    }
    write_report(out, "l2l_accuracy", result, report(result))


def report(r: dict) -> str:
    lines = ["# ProtoNet held-out accuracy: edgemeta against learn2learn, identical episodes", "",
             f"{r['date']}, {r['cpu']}; {r['threads']} threads on both sides; {r['precision']}; TensorFlow {r['tensorflow']}, "
             f"torch {r['torch']}, learn2learn {r['learn2learn']}.", "", f"Command: `{r['command']}`", "",
             f"Both trained {r['steps']} steps of 60-way 1-shot 5-query episodes (the same episodes; seed {r.get('seed', 0)}); "
             "measured on the "
             f"{r['held_out']['classes']} classes of the 3 held-out alphabets, the same episodes for both, "
             "nearest prototype, mean ± 95 % interval.", "",
             "| task | edgemeta | learn2learn | intervals overlap |", "|---|---|---|---|"]
    def cell(result: dict) -> str:
        return f"{100 * result['accuracy']:.2f} ± {100 * result['ci95']:.2f} %"

    for t in r["tasks"]:
        lines.append(f"| {t['n_way']}-way {t['k_shot']}-shot ({t['edgemeta']['episodes']} episodes) | {cell(t['edgemeta'])} | "
                     f"{cell(t['learn2learn'])} | {'yes' if t['intervals_overlap'] else '**no**'} |")
    lines += ["", f"Training episodes/s over the whole run: edgemeta {r['edgemeta_episodes_per_second']:.2f} (tracing included); "
              f"learn2learn {r['l2l_episodes_per_second_after_first_step']:.2f} (after its first step). "
              "Steady-state speed: benchmarks/training_throughput.py.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

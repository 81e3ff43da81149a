"""Training throughput (episodes/s) of edgemeta's ProtoNet and MAML against learn2learn's, in one run.

Same CPU, same thread count, same preprocessed Omniglot images (the 5 training alphabets of the fixed split
at 28x28), same Conv-4, same episode shapes and optimizer. edgemeta trains in this process exactly as
`edgemeta.train.training.fit_episodes` does (its tf.data `EpisodeSampler` pipeline included); learn2learn trains
in `.venv-l2l` (made by benchmarks/l2l_venv.sh) through benchmarks/l2l_train.py, once with its own input
pipeline (`MetaDataset` + `TaskDataset` transforms) and once on edgemeta's exact episodes gathered by index.
Rounds are interleaved (edgemeta, learn2learn, learn2learn by index, then the next round), so all sides see
the same machine state; every round builds fresh models and excludes its first `--warmup` steps. Writes
`OUT/training_throughput.md` and `OUT/training_throughput.json`, with medians, spreads, ratios and a
profile of each learner's step (input pipeline against compute, and the top ops of both sides).

    bash benchmarks/l2l_venv.sh
    python benchmarks/training_throughput.py --data-dir ../shared/datasets/omniglot --out runs/throughput
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from edgemeta.cpu import cpu_line, describe_cpu

ROOT = Path(__file__).resolve().parents[1]
L2L_SCRIPT = ROOT / "benchmarks" / "l2l_train.py"
# The two settings. ProtoNet: the 60-way episodes edgemeta's Omniglot recipe trains on. MAML: the setting
# edgemeta's learner benchmark trains it with (edgemeta.train.recipes.LEARNER_SETTINGS: 5-way 1-shot 5-query
# tasks, 8 per meta-batch, 1 second-order inner step of 0.4), Finn et al.'s Omniglot inner step.
SETTINGS = {
    "protonet": {"n_way": 60, "k_shot": 1, "n_query": 5, "meta_batch": 1, "learning_rate": 1e-3, "options": {}},
    "maml": {"n_way": 5, "k_shot": 1, "n_query": 5, "meta_batch": 8, "learning_rate": 1e-3,
             "options": {"inner_steps": 1, "inner_lr": 0.4}},
}
# PyTorch's layout for each, measured here (2-core Xeon, torch 2.13): channels_last (PyTorch's CPU tuning advice
# for convnets) made the ProtoNet step 1.1x (quiet machine) to 1.35x (loaded) faster than the default NCHW; for
# MAML's 5- and 25-image batches neither was consistently faster, so it keeps PyTorch's default.
# `--l2l-memory-format` overrides it.
L2L_MEMORY_FORMAT = {"protonet": "channels_last", "maml": "contiguous"}


def default_omniglot_dir() -> str:
    """The fixed split's zips: $EDGEMETA_OMNIGLOT_DIR, else ../shared/datasets/omniglot beside the checkout."""
    return os.environ.get("EDGEMETA_OMNIGLOT_DIR", str(ROOT.parent / "shared/datasets/omniglot"))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=default_omniglot_dir())
    parser.add_argument("--out", default="runs/throughput")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per learner (medians over rounds)")
    parser.add_argument("--steps", type=int, default=20, help="timed ProtoNet steps per round (one 60-way episode each)")
    parser.add_argument("--maml-steps", type=int, default=6, help="timed MAML meta-batches per round (8 tasks each)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first in every round (tracing, allocation)")
    parser.add_argument("--learners", nargs="+", choices=sorted(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="intra-op threads of both TensorFlow and PyTorch (default: every core, TF's default)")
    parser.add_argument("--l2l-python", default=str(ROOT / ".venv-l2l" / "bin" / "python"),
                        help="the Python of the learn2learn venv (benchmarks/l2l_venv.sh)")
    parser.add_argument("--l2l-sampler", choices=("separate", "fused"), default="separate",
                        help="learn2learn pipeline: NWays+KShots, or FusedNWaysKShots (learn2learn's Omniglot benchmark)")
    parser.add_argument("--l2l-memory-format", choices=("auto", "channels_last", "contiguous"), default="auto",
                        help="PyTorch layout; auto: the faster one per learner (L2L_MEMORY_FORMAT)")
    parser.add_argument("--precision", choices=("default", "float32", "bfloat16"), default="default",
                        help="default: each library's own default (edgemeta's mixed_precision='auto', which is bfloat16 on "
                             "CPUs with AMX-BF16; PyTorch's float32); float32 or bfloat16: that on both sides "
                             "(edgemeta TrainConfig.mixed_precision, torch.autocast)")
    parser.add_argument("--no-profile", action="store_true", help="skip the profile (saves about 2 minutes)")
    args = parser.parse_args(argv)
    if not Path(args.l2l_python).is_file():
        parser.error(f"--l2l-python {args.l2l_python!r} does not exist: run `bash benchmarks/l2l_venv.sh` first.")
    if min(args.rounds, args.steps, args.maml_steps, args.warmup) < 1:
        parser.error("--rounds, --steps, --maml-steps and --warmup must be at least 1.")
    return args


def configure_tensorflow(threads: int):
    """Imports TensorFlow with `threads` intra-op threads (must happen before TF runs anything)."""
    from edgemeta.train.backend import keras, tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.get_logger().setLevel("ERROR")  # every round builds a fresh model: its retracing warnings are expected
    return tf, keras


def config_for(learner: str, data_dir: str, total_steps: int, precision: str = "default"):
    from edgemeta.train.training import TrainConfig

    s = SETTINGS[learner]
    return TrainConfig(dataset="omniglot", data_dir=data_dir, image_size=28, learner=learner, learner_options=s["options"],
                       n_way=s["n_way"], k_shot=s["k_shot"], n_query=s["n_query"], episodes_per_batch=s["meta_batch"],
                       steps=total_steps, epochs=1, learning_rate=s["learning_rate"], seed=0,
                       mixed_precision="auto" if precision == "default" else precision)


def l2l_precision(precision: str) -> str:
    return "float32" if precision == "default" else precision  # PyTorch's default is float32


def write_episode_indices(train_set, config, path: Path) -> np.ndarray:
    """Writes edgemeta's first episodes as indices: row i = episode i's class-major support, then query."""
    from edgemeta.train.episodes import EpisodeSampler

    sampler = EpisodeSampler(train_set, config.n_way, config.k_shot, config.n_query, seed=config.seed)
    count = config.steps * config.episodes_per_batch
    rows = [np.concatenate([support.numpy(), query.numpy()])
            for support, _, query, _ in sampler.indices().take(count)]
    indices = np.stack(rows).astype(np.int32)
    # The file must hold the episodes `fit_episodes` trains on: check the first batch against the pipeline itself.
    (support, _, query), _ = next(iter(sampler.episodes(config.episodes_per_batch)))
    split = config.n_way * config.k_shot
    for b in range(config.episodes_per_batch):
        if not (np.array_equal(support.numpy()[b], train_set.images[indices[b, :split]])
                and np.array_equal(query.numpy()[b], train_set.images[indices[b, split:]])):
            raise RuntimeError(f"The written episode indices do not match EpisodeSampler.episodes() (episode {b}).")
    np.save(path, indices)
    return indices


def batch_clock():
    """A Keras callback that records a timestamp at the end of every training batch (in `.ends`)."""
    from edgemeta.train.backend import keras

    class BatchClock(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.ends: list[float] = []

        def on_train_batch_end(self, batch, logs=None):
            self.ends.append(time.perf_counter())

    return BatchClock()


def edgemeta_round(learner: str, train_set, config, warmup: int, dataset=None) -> dict:
    """One round of edgemeta: a fresh learner, compiled and fitted as `fit_episodes` does; episodes/s over the
    batches after the first `warmup` (their end timestamps, so tracing and the first steps are excluded).
    `dataset` replaces the episode pipeline (the profile's compute-only run)."""
    from dataclasses import replace

    from edgemeta.train.backend import keras
    from edgemeta.train.training import build_for_training, fit_episodes

    keras.backend.clear_session()
    keras.utils.set_random_seed(config.seed)
    net = build_for_training(replace(config, learner=learner), train_set.preprocessing.input_shape)
    clock = batch_clock()
    if dataset is None:
        history = fit_episodes(net, train_set, config, [clock], verbose=0)
    else:
        fit_episodes_on(net, dataset, config, clock)
        history = net.history
    timed = config.steps - warmup
    seconds = clock.ends[-1] - clock.ends[warmup - 1]
    losses = history.history["loss"]
    return {"episodes_per_second": timed * config.episodes_per_batch / seconds, "seconds": seconds, "last_loss": losses[-1]}


def fit_episodes_on(net, dataset, config, clock) -> None:
    """`fit_episodes`' compile and fit on a given dataset (the profile's fixed-episode run)."""
    from edgemeta.train.backend import keras

    schedule = keras.optimizers.schedules.CosineDecay(config.learning_rate, config.steps, alpha=0.01)
    net.compile(optimizer=net.make_optimizer(schedule), loss=net.episode_loss(),
                metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    net.fit(dataset, steps_per_epoch=config.steps, epochs=1, callbacks=[clock], verbose=0)


def l2l_round(args, learner: str, npz: Path, steps: int, indices: Path | None, profile: bool = False) -> dict:
    s = SETTINGS[learner]
    command = [args.l2l_python, str(L2L_SCRIPT), "--data", str(npz), "--learner", learner,
               "--n-way", str(s["n_way"]), "--k-shot", str(s["k_shot"]), "--n-query", str(s["n_query"]),
               "--meta-batch", str(s["meta_batch"]), "--lr", str(s["learning_rate"]),
               "--steps", str(steps), "--warmup", str(args.warmup), "--threads", str(args.threads),
               "--sampler", args.l2l_sampler, "--memory-format", memory_format(args, learner),
               "--precision", l2l_precision(args.precision)]
    if learner == "maml":
        command += ["--inner-lr", str(s["options"]["inner_lr"]), "--inner-steps", str(s["options"]["inner_steps"])]
    command += ["--pipeline", "indices", "--episodes", str(indices)] if indices else ["--pipeline", "l2l"]
    if profile:
        command.append("--profile")
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"learn2learn side failed ({shlex.join(command)}):\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["command"] = shlex.join(command)
    return result


def memory_format(args, learner: str) -> str:
    return L2L_MEMORY_FORMAT[learner] if args.l2l_memory_format == "auto" else args.l2l_memory_format


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "rounds": values}


def profile_edgemeta(learner: str, train_set, config, warmup: int, trace_dir: Path, pairs: int = 2) -> dict:
    """Where edgemeta's `learner` step spends its time: the tf.data pipeline alone, the training step alone
    (one cached meta-batch repeated), and the TensorFlow ops of a traced training run."""
    from edgemeta.train.backend import tf
    from edgemeta.train.episodes import EpisodeSampler

    sampler = EpisodeSampler(train_set, config.n_way, config.k_shot, config.n_query, seed=config.seed)
    batch = config.episodes_per_batch
    it = iter(sampler.episodes(batch))
    for _ in range(10):
        next(it)
    count = 200
    start = time.perf_counter()
    for _ in range(count):
        next(it)
    pipeline_rate = count * batch / (time.perf_counter() - start)
    fixed = sampler.episodes(batch).take(1).cache().repeat()
    compute, full = [], []
    for _ in range(pairs):  # interleaved, as the rounds are
        compute.append(edgemeta_round(learner, train_set, config, warmup, dataset=fixed)["episodes_per_second"])
        full.append(edgemeta_round(learner, train_set, config, warmup)["episodes_per_second"])
    tf.profiler.experimental.start(str(trace_dir))
    try:
        edgemeta_round(learner, train_set, config, warmup)
    finally:
        tf.profiler.experimental.stop()
    compute_rate, full_rate = statistics.median(compute), statistics.median(full)
    return {"pipeline_only_episodes_per_second": pipeline_rate, "compute_only_episodes_per_second": compute_rate,
            "full_episodes_per_second": full_rate, "compute_only_rounds": compute, "full_rounds": full,
            # Share of a training step's time the input pipeline adds: 1 - (step alone) / (step with pipeline).
            "pipeline_share_of_step": max(0.0, 1.0 - full_rate / compute_rate),
            **ops_from_trace(trace_dir)}


def ops_from_trace(trace_dir: Path, rows: int = 12) -> dict:
    """Sums the TensorFlow op events ("name:Type") of the newest trace in `trace_dir` by op type: the training
    step's kernels (tf_Compute threads) and the input pipeline's (tf_data threads). Returns the top `rows`
    types and the pipeline's share of all op time."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    files = sorted(trace_dir.rglob("*.xplane.pb"), key=lambda p: p.stat().st_mtime)
    if not files:
        return {"top_ops": [], "pipeline_share_of_op_time": None}
    space = xplane_pb2.XSpace()
    space.ParseFromString(files[-1].read_bytes())
    totals: dict[str, list] = defaultdict(lambda: [0.0, 0])
    pipeline_ms = 0.0
    for plane in space.planes:
        if plane.name != "/host:CPU":
            continue
        names = {k: m.name for k, m in plane.event_metadata.items()}
        for line in plane.lines:
            if not line.name.startswith(("tf_Compute", "tf_data")):
                continue
            for event in line.events:
                name = names.get(event.metadata_id, "")
                if ":" not in name or "::" in name:  # executor and threadpool bookkeeping, not kernels
                    continue
                ms = event.duration_ps / 1e9
                kind = name.rsplit(":", 1)[1]
                totals[kind][0] += ms
                totals[kind][1] += 1
                if line.name.startswith("tf_data"):
                    pipeline_ms += ms
    grand = sum(t for t, _ in totals.values()) or 1.0
    top = sorted(totals.items(), key=lambda kv: kv[1][0], reverse=True)[:rows]
    return {"top_ops": [{"op": k, "ms": round(t, 1), "share": round(t / grand, 3), "calls": n} for k, (t, n) in top],
            "pipeline_share_of_op_time": pipeline_ms / grand}


def _mixed(precision: str | None) -> str:
    return f"mixed {precision}" if precision else "float32"


def machine() -> dict:
    """The CPU (model, kind, the flags speed depends on) and the platform: every figure is for one CPU kind."""
    cpu = describe_cpu()
    return {"cpu": cpu_line(), "cpu_kind": cpu["kind"], "flags": cpu["flags"], "cores": os.cpu_count(),
            "platform": platform.platform()}


def report(result: dict) -> str:
    lines = ["# Training throughput: edgemeta against learn2learn", "",
             f"Measured {result['date']} on {result['machine']['cpu']} ({result['machine']['cores']} cores), "
             f"{result['threads']} intra-op threads on both sides; precision ({result['precision']['requested']}): "
             f"edgemeta {result['precision']['edgemeta']}, learn2learn {result['precision']['learn2learn']}"
             + (" (mixed: the backbone computes in bfloat16, weights, distances and loss stay float32)"
                if "mixed" in result['precision']['edgemeta'] + result['precision']['learn2learn'] else "") + "; "
             f"PyTorch layout {result['l2l_memory_format']}; load average (1, 5, 15 min) before/after "
             f"{result['load_before']} / {result['load_after']}.", "",
             f"Versions: {', '.join(f'{k} {v}' for k, v in result['versions'].items())}.", "",
             f"Command: `{result['command']}`", ""]
    for learner, r in result["learners"].items():
        s = r["setting"]
        what = (f"{s['n_way']}-way {s['k_shot']}-shot {s['n_query']}-query, "
                + ("1 episode per step, Adam 1e-3" if learner == "protonet" else
                   f"{s['meta_batch']} tasks per meta-batch, {s['options']['inner_steps']} second-order inner step of "
                   f"{s['options']['inner_lr']}, Adam 1e-3"))
        lines += [f"## {learner}: {what}", "",
                  f"{r['rounds']} interleaved rounds of {r['timed_steps']} timed steps after {r['warmup']} warm-up steps.", "",
                  "| side | input pipeline | episodes/s (median) | min - max | edgemeta / side (ratio of medians) "
                  "| median of per-round ratios |",
                  "|---|---|---|---|---|---|"]
        for side, label in (("edgemeta", "edgemeta EpisodeSampler (tf.data)"),
                            ("l2l", f"learn2learn MetaDataset + TaskDataset ({result['l2l_sampler']})"),
                            ("l2l_indices", "edgemeta's exact episodes, gathered by index")):
            v = r[side]
            ratio = "" if side == "edgemeta" else f"{r['ratio'][side]:.2f}x"
            paired = "" if side == "edgemeta" else f"{r['paired_ratio'][side]:.2f}x"
            lines.append(f"| {'edgemeta' if side == 'edgemeta' else 'learn2learn'} | {label} | {v['median']:.2f} | "
                         f"{v['min']:.2f} - {v['max']:.2f} | {ratio} | {paired} |")
        lines.append("")
    for learner in (result.get("profile") or {}).get("learners", []):
        p = result["profile"]
        e = p[f"edgemeta_{learner}"]
        lines += [f"## Profile of the {'ProtoNet' if learner == 'protonet' else 'MAML'} step", "",
                  f"- edgemeta: tf.data pipeline alone {e['pipeline_only_episodes_per_second']:.0f} episodes/s; training "
                  f"step alone (one cached batch of episodes, repeated) {e['compute_only_episodes_per_second']:.2f}; both "
                  f"{e['full_episodes_per_second']:.2f}: the pipeline costs {100 * e['pipeline_share_of_step']:.0f} % of a step "
                  f"(within the rounds' noise); in the trace the pipeline's ops are "
                  f"{100 * (e.get('pipeline_share_of_op_time') or 0):.1f} % of all op time.",
                  ]
        l2l = p.get(f"l2l_{learner}", {})
        if "pipeline_only_episodes_per_second" in l2l:
            lines.append(f"- learn2learn: its pipeline alone {l2l['pipeline_only_episodes_per_second']:.0f} episodes/s.")
        for name, ops in (("edgemeta (TensorFlow trace, host ops)", e.get("top_ops", [])),
                          ("learn2learn (torch.profiler, self CPU time)", l2l.get("top_ops", []))):
            if ops:
                lines += ["", f"Top ops, {name}:", "", "| op | ms | share | calls |", "|---|---|---|---|"]
                lines += [f"| {o['op']} | {o.get('ms', o.get('self_ms'))} | {100 * o['share']:.1f} % | {o['calls']} |"
                          for o in ops]
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    tf, keras = configure_tensorflow(args.threads)
    from edgemeta import __version__ as edgemeta_version
    from edgemeta.train.training import load_split, resolve_mixed_precision

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    load_before = [round(x, 2) for x in os.getloadavg()]
    steps = {"protonet": args.steps, "maml": args.maml_steps}
    train_set, _ = load_split(config_for("protonet", args.data_dir, 1))
    work = out / "work"  # the shared images, episode indices and the profile's trace
    work.mkdir(exist_ok=True)
    npz = work / "omniglot28.npz"
    np.savez(npz, images=train_set.images, labels=train_set.labels)
    configs, index_files = {}, {}
    for learner in args.learners:
        configs[learner] = config_for(learner, args.data_dir, args.warmup + steps[learner], args.precision)
        index_files[learner] = work / f"{learner}_episodes.npy"
        write_episode_indices(train_set, configs[learner], index_files[learner])
    measured = {learner: defaultdict(list) for learner in args.learners}
    l2l_info = {}
    for r in range(args.rounds):
        for learner in args.learners:
            e = edgemeta_round(learner, train_set, configs[learner], args.warmup)
            own = l2l_round(args, learner, npz, steps[learner], None)
            fixed = l2l_round(args, learner, npz, steps[learner], index_files[learner])
            l2l_info[learner] = {"own": own, "indices": fixed}
            measured[learner]["edgemeta"].append(e["episodes_per_second"])
            measured[learner]["l2l"].append(own["episodes_per_second"][0])
            measured[learner]["l2l_indices"].append(fixed["episodes_per_second"][0])
            print(f"round {r + 1}/{args.rounds} {learner}: edgemeta {e['episodes_per_second']:.2f}, learn2learn "
                  f"{own['episodes_per_second'][0]:.2f} (own pipeline), "
                  f"{fixed['episodes_per_second'][0]:.2f} (by index) episodes/s",
                  flush=True)
    learners = {}
    for learner, m in measured.items():
        entry = {"setting": SETTINGS[learner], "rounds": args.rounds, "timed_steps": steps[learner], "warmup": args.warmup,
                 **{side: spread(v) for side, v in m.items()}}
        entry["ratio"] = {side: entry["edgemeta"]["median"] / entry[side]["median"] for side in ("l2l", "l2l_indices")}
        entry["paired_ratio"] = {side: statistics.median(a / b for a, b in zip(m["edgemeta"], m[side]))
                                 for side in ("l2l", "l2l_indices")}
        entry["l2l_commands"] = {k: v["command"] for k, v in l2l_info[learner].items()}
        learners[learner] = entry
    profile = None
    if not args.no_profile:
        profile = {"learners": list(args.learners)}
        for learner in args.learners:
            profile[f"edgemeta_{learner}"] = profile_edgemeta(learner, train_set, configs[learner], args.warmup,
                                                              work / f"trace-{learner}")
            profile[f"l2l_{learner}"] = l2l_round(args, learner, npz, steps[learner], None, profile=True)
    theirs = next(iter(l2l_info.values()))["own"]["versions"]
    versions = {"python": platform.python_version(), "edgemeta": edgemeta_version, "tensorflow": tf.__version__,
                "tf_keras": keras.__version__, "numpy": np.__version__, "torch": theirs["torch"],
                "learn2learn": theirs["learn2learn"], "numpy (.venv-l2l)": theirs["numpy"]}
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(), "threads": args.threads,
        "tf_threads": {"intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
                       "inter_op": tf.config.threading.get_inter_op_parallelism_threads() or "default (cores)"},
        "torch_threads": {k: next(iter(l2l_info.values()))["own"][k] for k in ("threads", "interop_threads")},
        "versions": versions, "l2l_sampler": args.l2l_sampler,
        "precision": {"requested": args.precision, "edgemeta": _mixed(resolve_mixed_precision(configs[args.learners[0]])),
                      "learn2learn": _mixed(None if l2l_precision(args.precision) == "float32" else "bfloat16")},
        "l2l_memory_format": {learner: memory_format(args, learner) for learner in args.learners},
        "command": shlex.join([(os.path.relpath(sys.executable, Path.cwd()) if sys.executable.startswith(str(Path.cwd()))
                                else sys.executable),
                               *sys.argv]),
        "load_before": load_before, "load_after": [round(x, 2) for x in os.getloadavg()],
        "learners": learners, "profile": profile,
    }
    (out / "training_throughput.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (out / "training_throughput.md").write_text(report(result))
    print(report(result))


if __name__ == "__main__":
    main()

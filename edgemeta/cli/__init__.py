"""The `edgemeta` command: train, evaluate, export, compress, adapt, device, deploy, rollback, status, preset, demo.

`adapt`, `device`, `deploy`, `rollback` and `status` need only the runtime (no TensorFlow); the other
commands import it lazily.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path

from edgemeta.format.bundle import QUANTIZATIONS


def _add_task_args(p: argparse.ArgumentParser, way: int | None = 5, shot: int | None = 1, query: int | None = 5) -> None:
    p.add_argument("--way", type=int, default=way, help="classes per episode (N)")
    p.add_argument("--shot", type=int, default=shot, help="support images per class (K)")
    p.add_argument("--query", type=int, default=query, help="query images per class")


def _parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    argv = list(argv or [])
    parser = argparse.ArgumentParser(prog="edgemeta", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="meta-train a learner on episodes; writes RUN_DIR")
    p.add_argument("--out", required=True, help="run directory to write (embedding.keras, learner.weights.h5, run.json)")
    p.add_argument("--learner", default="protonet",
                   help="protonet, matching, relation, maml, fomaml, anil, metasgd or reptile (default: protonet)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a learner option, e.g. --option inner_steps=5 --option inner_lr=0.1 (repeatable)")
    p.add_argument("--recipe", choices=["omniglot", "omniglot-split", "digits"], help="start from a named recipe")
    p.add_argument("--dataset", choices=["digits", "omniglot", "folder"])
    p.add_argument("--data-dir", help="Omniglot zip directory, or the training folder of class sub-folders")
    p.add_argument("--test-dir", help="folder dataset: held-out class sub-folders")
    p.add_argument("--train-alphabets", nargs="+")
    p.add_argument("--test-alphabets", nargs="*")
    p.add_argument("--rotations", action="store_true", default=None, help="add 90/180/270° rotations as classes")
    _add_task_args(p, None, None, None)  # None: the recipe's (or TrainConfig's) value
    p.add_argument("--steps", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--lr", type=float, dest="learning_rate")
    p.add_argument("--max-shift", type=float, help="augmentation: random translation (pixels)")
    p.add_argument("--max-rotation", type=float, help="augmentation: random rotation (degrees)")
    p.add_argument("--max-scale", type=float, help="augmentation: random scaling (fraction, e.g. 0.1)")
    p.add_argument("--max-shear", type=float, help="augmentation: random shear (radians)")
    p.add_argument("--seed", type=int)
    p.add_argument("--image-size", type=int, help="model input size (default 28)")
    p.add_argument("--invert", action=argparse.BooleanOptionalAction, default=None,
                   help="invert images (dark ink on light background -> ink high); default: the dataset's")
    p.add_argument("--tensorboard", help="write TensorBoard logs to this directory")
    p.add_argument("--checkpoints", action="store_true", help="save weights after every epoch in RUN_DIR/checkpoints")
    p.add_argument("--strategy", choices=["auto", "default", "mirrored", "multi-worker"], default="auto",
                   help="tf.distribute strategy: mirrored (this machine's GPUs), multi-worker (cluster from TF_CONFIG), "
                        "default (one device); auto picks multi-worker when TF_CONFIG is set, mirrored with several GPUs")
    p.add_argument("--cpu-replicas", type=int, help="mirrored without GPUs: split the CPU into N logical devices (for trying it out)")
    p.add_argument("--episodes-per-batch", type=int, help="global batch of episodes per step, split across replicas")
    p.add_argument("--mixed-precision", choices=["auto", "float32", "float16", "bfloat16"],
                   help="the backbone computes in float16 (with loss scaling; GPUs) or bfloat16; weights stay float32. "
                        "Default auto: bfloat16 on CPUs with AMX-BF16 (measured 3x faster, same accuracy), else float32")
    p.add_argument("--jit-compile", action="store_true", default=None, help="compile training steps with XLA (measure first: "
                   "benchmarks/jit_compile.py; slower for Conv-4 on CPU)")
    p.add_argument("--backup-dir", help="training-state backup, for resuming after a crash or a worker restart "
                   "(default: RUN_DIR/backup; removed when training completes)")
    p.add_argument("--no-backup", action="store_true", help="do not back up training state")

    p = sub.add_parser("evaluate", help="accuracy ± 95%% CI of a run (Keras) or a bundle (runtime) on held-out classes")
    p.add_argument("path", help="run directory or bundle directory")
    _add_task_args(p)
    p.add_argument("--episodes", type=int, default=600)
    p.add_argument("--within-alphabet", action="store_true", help="draw each episode from one alphabet (group)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--dataset", choices=["digits", "omniglot", "folder"])
    p.add_argument("--data-dir")
    p.add_argument("--alphabets", nargs="+", help="held-out Omniglot alphabets (default: the run's test split)")
    p.add_argument("--adaptation", choices=["prototypes", "own"], default="prototypes",
                   help="run directory only: nearest prototype over the embedding (what the board does, default) "
                        "or the learner's own adaptation (inner loop, attention, relation module)")

    p = sub.add_parser("export", help="convert a run to a bundle (model.tflite + manifest.json)")
    p.add_argument("run", help="run directory written by `edgemeta train`")
    p.add_argument("--out", required=True, help="bundle directory to write")
    p.add_argument("--quantization", choices=QUANTIZATIONS, default="int8")
    p.add_argument("--episodes", type=int, default=600, help="held-out episodes measured into the manifest (0: skip)")
    p.add_argument("--data-dir", help="where the run's dataset is now, if moved")

    p = sub.add_parser("compress", help="prune, cluster, quantize and/or distil a run; bundles + size/accuracy report")
    p.add_argument("run", help="run directory written by `edgemeta train` (the teacher)")
    p.add_argument("--out", required=True, help="directory: one bundle per variant, report.md/.json, pareto.png")
    p.add_argument("--config", help="JSON or TOML file of recipe fields or [variants.NAME] tables (see docs/compression.md)")
    p.add_argument("--prune", type=float, metavar="SPARSITY", help="magnitude pruning to this sparsity, e.g. 0.75")
    p.add_argument("--structured", action="store_true", help="2:4 structured sparsity (50 %%) instead of --prune")
    p.add_argument("--cluster", type=int, metavar="N", help="weight clustering: N unique values per kernel")
    p.add_argument("--qat", action="store_true", help="quantization-aware training, then int8")
    p.add_argument("--quantization", choices=QUANTIZATIONS,
                   help="conversion (default int8)")
    p.add_argument("--distill-width", type=float, metavar="W", help="distil into a student W times as wide, e.g. 0.5")
    p.add_argument("--separable", action="store_true", help="the distilled student uses depthwise-separable blocks")
    p.add_argument("--steps", type=int, help="episodic fine-tuning steps per stage (default 1000)")
    p.add_argument("--prune-steps", type=int, help="length of the pruning stage (default: --steps)")
    p.add_argument("--lr", type=float, dest="learning_rate", help="fine-tuning learning rate (default 1e-4)")
    p.add_argument("--distill-steps", type=int, help="student training steps (default 4000)")
    p.add_argument("--episodes", type=int, default=600, help="held-out episodes per task in the report (0: no report)")
    p.add_argument("--data-dir", help="where the run's dataset is now, if moved")

    p = sub.add_parser("preset", help="rebuild a shipped preset bundle from its recipe (train + export)")
    p.add_argument("name", choices=["omniglot"])
    p.add_argument("--data-dir", help="Omniglot zip directory")
    p.add_argument("--out", help="bundle directory (default: inside the installed package)")
    p.add_argument("--work-dir", default="runs/preset-omniglot")

    p = sub.add_parser("adapt", help="enroll classes from folders and classify image files, on the device")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--bundle")
    source.add_argument("--preset")
    p.add_argument("--support", help="folder with one sub-folder of example images per class to enroll")
    p.add_argument("--state", help="file keeping what was taught (loaded if present, saved after every change)")
    p.add_argument("--forget", nargs="+", default=[], help="labels to remove")
    p.add_argument("--json", action="store_true", help="print predictions as JSON lines")
    p.add_argument("--unknown-threshold", default="calibrated",
                   help="distance beyond which an image is 'unknown': 'calibrated' (the bundle's, default), a number, or 'none'")
    p.add_argument("--memory-budget", help="the process's memory budget, e.g. 96MB: enrolling past it fails and changes nothing")
    p.add_argument("images", nargs="*", help="image files to classify")

    p = sub.add_parser("device", help="board profiles: list them, or check that a bundle fits one (memory, Edge TPU)")
    device = p.add_subparsers(dest="device_command", required=True)
    device.add_parser("list", help="the known board profiles")
    q = device.add_parser("check", help="predict the adapter's memory for BUNDLE on a board; exit 0 fits, 1 does not")
    q.add_argument("bundle", help="bundle directory")
    q.add_argument("--device", required=True, help="a profile name (edgemeta device list) or a profile .json")
    q.add_argument("--classes", type=int, default=1000, help="classes you plan to enroll (default 1000)")
    q.add_argument("--shots", type=int, default=5, help="shots per class (default 5)")
    q.add_argument("--batch", type=int, default=8, help="images per interpreter call (default 8)")
    q.add_argument("--prototype-dtype", choices=["float32", "int8"], default="float32")
    q.add_argument("--keep-support", choices=["embeddings", "images"], default=None)
    q.add_argument("--budget", help="override the profile's memory budget, e.g. 48MB")
    q.add_argument("--json", action="store_true", help="print the plan as JSON")
    # The service's and deploy's options are added only when their command runs: importing those modules
    # costs the board's other commands memory and start-up time for nothing.
    serve = device.add_parser("serve", help="the on-board HTTP/JSON service (health, labels, enroll, classify, "
                                            "forget); see docs/service.md")
    if argv[:2] == ["device", "serve"]:
        from edgemeta.serve import add_serve_arguments

        add_serve_arguments(serve)
    for command, text in (("deploy", "push a bundle to boards over SSH: verified, switched atomically, rollback-able"),
                          ("rollback", "switch boards back to their previous version"),
                          ("status", "what runs where: each board's current version, versions kept, store")):
        p = sub.add_parser(command, help=text)
        if argv[:1] == [command]:
            from edgemeta.deploy import add_arguments

            add_arguments(p, command)

    p = sub.add_parser("demo", help="the whole path on a dataset, with a Keras vs int8-runtime table")
    p.add_argument("--dataset", choices=["digits", "omniglot"], default="digits")
    p.add_argument("--data-dir")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--steps", type=int, help="override the recipe's training steps")
    p.add_argument("--episodes", type=int, default=600)
    return parser


def _learner_options(pairs: list[str]) -> dict:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--option takes KEY=VALUE. Received: {pair!r}")
        try:
            options[key] = json.loads(value)  # numbers, true/false
        except json.JSONDecodeError:
            options[key] = value
    return options


def _train(args) -> None:
    from edgemeta.train.distribute import make_strategy

    # First: splitting the CPU into logical devices must precede TensorFlow's first use of a device.
    strategy = make_strategy(args.strategy, cpu_replicas=args.cpu_replicas)
    from edgemeta.train.pipeline import LEARNER_SETTINGS, recipe_for
    from edgemeta.train.training import TrainConfig, resolve_mixed_precision, train

    if args.recipe:
        base = recipe_for(args.recipe, args.learner)
    else:
        base = TrainConfig(dataset=args.dataset or "digits", learner=args.learner, **LEARNER_SETTINGS.get(args.learner, {}))
    if args.option:
        base = replace(base, learner_options={**base.learner_options, **_learner_options(args.option)})
    mapping = {"dataset": args.dataset, "data_dir": args.data_dir, "test_dir": args.test_dir,
               "train_groups": args.train_alphabets, "test_groups": args.test_alphabets, "rotations": args.rotations,
               "steps": args.steps, "epochs": args.epochs, "learning_rate": args.learning_rate,
               "max_shift": args.max_shift, "max_rotation": args.max_rotation, "max_scale": args.max_scale,
               "max_shear": args.max_shear, "n_way": args.way, "k_shot": args.shot, "n_query": args.query, "seed": args.seed, "image_size": args.image_size, "invert": args.invert,
               "episodes_per_batch": args.episodes_per_batch, "mixed_precision": args.mixed_precision,
               "jit_compile": args.jit_compile}
    config = replace(base, **{k: v for k, v in mapping.items() if v is not None})
    callbacks = []
    if args.tensorboard or args.checkpoints:
        from edgemeta.train.backend import keras

        if args.tensorboard:
            callbacks.append(keras.callbacks.TensorBoard(args.tensorboard))
        if args.checkpoints:
            callbacks.append(keras.callbacks.ModelCheckpoint(
                str(Path(args.out) / "checkpoints" / "epoch{epoch:03d}.weights.h5"), save_weights_only=True))
    backup = None if args.no_backup else (args.backup_dir or str(Path(args.out) / "backup"))
    with strategy.scope():
        _, train_set, _ = train(config, args.out, callbacks, backup_dir=backup)
    from edgemeta.train.distribute import describe

    cluster = describe(strategy)
    where = f" on {cluster.replicas} replicas ({cluster.strategy}, {cluster.workers} worker(s))" if cluster.replicas > 1 or cluster.workers > 1 else ""
    precision = resolve_mixed_precision(config)
    where += f" in mixed {precision}" if precision else ""
    if cluster.is_chief:
        print(f"Trained on {train_set}{where}. Run saved to {args.out}/ (config: {json.dumps(asdict(config), default=list)})")
    else:
        print(f"Worker {cluster.worker_index} done{where}; the chief saved the run.")


def _compress(args) -> None:
    from edgemeta.compress import CompressionRecipe, compress_variants, load_recipes

    flags = {"prune": args.prune, "structured": args.structured or None, "cluster": args.cluster, "qat": args.qat or None,
             "quantization": args.quantization, "distill_width": args.distill_width, "separable": args.separable or None,
             "steps": args.steps, "prune_steps": args.prune_steps, "learning_rate": args.learning_rate, "distill_steps": args.distill_steps}
    flags = {k: v for k, v in flags.items() if v is not None}
    if args.config:
        # Flags given with a config file apply to every variant in it (e.g. fewer --steps for a quick try).
        recipes = {name: CompressionRecipe.from_dict({**r.to_dict(), **flags}) for name, r in load_recipes(args.config).items()}
    else:
        recipe = CompressionRecipe(**flags)
        recipes = {recipe.name: recipe}
    command = "edgemeta " + " ".join(args.argv)
    report = compress_variants(args.run, recipes, args.out, args.data_dir, args.episodes, verbose=2, command=command)
    for v in report["variants"]:
        acc = "  ".join(f"{t} {100 * r['accuracy']:.2f} %" for t, r in v.get("accuracy", {}).items())
        size = f"{v['tflite_bytes']:,} bytes (gzip {v['gzip_bytes']:,})  " if "tflite_bytes" in v else ""
        print(f"{v['name']}: {v['bundle']}  {size}{acc}")
    if args.episodes:
        print(f"Report: {Path(args.out) / 'report.md'}")


def _device(args) -> int:
    from edgemeta.profiles import list_profiles, load_profile

    if args.device_command == "list":
        for key in list_profiles():
            profile = load_profile(key)
            print(f"{key:24s} {profile.name} — budget {profile.memory_budget_mb} MB, {profile.interpreter}"
                  + (f", delegate {profile.delegate}" if profile.delegate else ""))
        return 0
    from edgemeta.format.bundle import read_bundle
    from edgemeta.format.units import parse_bytes
    from edgemeta.runtime.memory import MB, plan_memory

    for name in ("classes", "shots", "batch"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be a positive integer. Received: {getattr(args, name)}")
    profile = load_profile(args.device)
    budget = parse_bytes(args.budget, "--budget") if args.budget else profile.budget_bytes
    _, manifest = read_bundle(args.bundle)
    plan = plan_memory(args.bundle, args.batch, args.shots, args.prototype_dtype, args.keep_support)
    need, fits = plan.predict(args.classes), plan.predict(args.classes) <= budget
    result = {"bundle": str(args.bundle), "device": profile.key, "budget_bytes": budget, "classes": args.classes,
              "predicted_bytes": need, "fits": fits, "max_classes": plan.max_classes(budget), "plan": plan.to_dict()}
    if profile.delegate == "edgetpu":
        from converters.edgetpu import check_edgetpu

        result["edgetpu"] = str(check_edgetpu(args.bundle))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0 if fits else 1
    quant = manifest.quantization.get("scheme", "?")
    print(f"Bundle {args.bundle}: {quant}, {plan.model // 2} B model, {manifest.embedding_size}-d embeddings")
    print(f"Device {profile.key}: {profile.name}; adapter budget {budget / MB:.1f} MB")
    print(f"Predicted resident memory (batch {args.batch}, {args.shots} shots per class, {args.prototype_dtype} "
          f"prototypes, support kept: {args.keep_support or 'none'}):")
    rows = [("runtime (measured on " + plan.runtime_measured_on + ")", plan.runtime), ("model", plan.model),
            (f"activations at batch {args.batch}", plan.arena), ("working arrays of one call", plan.working)]
    for label, value in rows:
        print(f"  {label:72s} {value / MB:7.2f} MB")
    print(f"  {'per class':72s} {plan.per_class:7d} B")
    print(f"  {f'total at {args.classes} classes':72s} {need / MB:7.2f} MB")
    verdict = "fits" if fits else "does NOT fit"
    print(f"{verdict}: {need / MB:.1f} MB of {budget / MB:.1f} MB; at most {plan.max_classes(budget):,} classes fit.")
    if profile.arch not in plan.runtime_measured_on:
        print(f"Note: the runtime's own memory was measured on this machine, not on a {profile.arch} board; run "
              "`edgemeta device check` on the board for its figure.")
    if "edgetpu" in result:
        print(result["edgetpu"])
    return 0 if fits else 1


def _adapt(args) -> None:
    from edgemeta.data.folder import list_image_folder
    from edgemeta.runtime import FewShotAdapter

    from edgemeta.runtime.threshold import parse_threshold

    threshold = parse_threshold(args.unknown_threshold)
    options = {"state": args.state, "unknown_threshold": threshold, "memory_budget": args.memory_budget}
    adapter = (FewShotAdapter.from_bundle(args.bundle, **options) if args.bundle
               else FewShotAdapter.from_preset(args.preset, **options))
    if args.support:
        for label, files in list_image_folder(args.support).items():
            total = adapter.enroll(label, files)
            print(f"enrolled {label!r}: {len(files)} image(s), {total} shot(s) in total", file=sys.stderr)
    for label in args.forget:
        adapter.forget(label)
        print(f"forgot {label!r}", file=sys.stderr)
    if args.images:
        for path, p in zip(args.images, adapter.classify(args.images)):
            if args.json:
                print(json.dumps({"image": path, "label": p.label, "nearest": p.nearest, "distance": p.distance,
                                  "score": p.score}))
            else:
                shown = p.label if not p.unknown else f"unknown (nearest {p.nearest!r})"
                print(f"{path}\t{shown}\tdistance={p.distance:.3f}\tscore={p.score:.3f}")
    elif not (args.support or args.forget):
        print(f"Enrolled labels: {adapter.labels}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser(argv).parse_args(argv)
    args.argv = argv
    try:
        if args.command == "train":
            _train(args)
        elif args.command == "evaluate":
            from edgemeta.train.pipeline import evaluate_path

            result = evaluate_path(args.path, args.way, args.shot, args.query, args.episodes, args.within_alphabet,
                                   args.seed, args.dataset, args.data_dir, args.alphabets, args.adaptation == "own")
            print(result)
        elif args.command == "export":
            from edgemeta.train.pipeline import export_run

            path, measured = export_run(args.run, args.out, args.quantization, args.episodes, args.data_dir)
            print(f"Bundle written to {path}/")
            for task, r in measured.items():
                if "runtime" in r:
                    own = f"own adaptation {100 * r['own_adaptation']['accuracy']:.2f} %, " if "own_adaptation" in r else ""
                    print(f"  {task}: {own}Keras float prototypes {100 * r['keras_float']['accuracy']:.2f} %, "
                          f"bundle via runtime {100 * r['runtime']['accuracy']:.2f} ± {100 * r['runtime']['ci95']:.2f} %")
        elif args.command == "compress":
            _compress(args)
        elif args.command == "preset":
            from edgemeta.train.pipeline import build_preset

            print(f"Preset written to {build_preset(args.name, args.data_dir, args.out, args.work_dir)}/")
        elif args.command == "adapt":
            _adapt(args)
        elif args.command == "device":
            if args.device_command == "serve":
                from edgemeta.serve import serve_from_args

                return serve_from_args(args)
            return _device(args)
        elif args.command in ("deploy", "rollback", "status"):
            from edgemeta.deploy import run_from_args

            return run_from_args(args)
        elif args.command == "demo":
            from edgemeta.train.pipeline import run_demo

            print(run_demo(args.dataset, args.data_dir, args.out, args.steps, args.episodes))
    except (ValueError, KeyError, FileNotFoundError, TypeError, RuntimeError) as e:
        print(f"edgemeta {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

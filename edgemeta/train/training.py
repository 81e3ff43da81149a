"""Meta-trains a learner from a `TrainConfig` and saves a run directory (embedding model + run.json).

This is the one workflow the CLI, the examples, the benchmarks and the preset recipe all call.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from edgemeta.data import ImageClassDataset

# The data split's home is edgemeta.data.splits (TensorFlow-free); its names stay importable from here.
from edgemeta.data.splits import DATASETS
from edgemeta.data.splits import OMNIGLOT_TEST as OMNIGLOT_TEST
from edgemeta.data.splits import OMNIGLOT_TRAIN as OMNIGLOT_TRAIN
from edgemeta.data.splits import load_split as load_split

EMBEDDING_FILE = "embedding.keras"
RUN_FILE = "run.json"
LEARNER_WEIGHTS_FILE = "learner.weights.h5"


@dataclass
class TrainConfig:
    """Everything that determines a training run; saved in run.json as provenance."""

    dataset: str = "digits"  # digits | omniglot | folder | mini-imagenet
    learner: str = "protonet"  # a name in edgemeta.train.learners.LEARNERS
    learner_options: dict[str, Any] = field(default_factory=dict)  # e.g. {"inner_steps": 5} for MAML
    data_dir: str | None = None  # omniglot or mini-imagenet zips dir, or the folder of class sub-folders (train)
    test_dir: str | None = None  # folder dataset: held-out classes
    train_groups: Sequence[str] | None = None  # omniglot alphabets to meta-train on
    test_groups: Sequence[str] | None = None  # omniglot alphabets held out
    train_classes: Sequence[int] | None = None  # digits: classes to meta-train on
    rotations: bool = False
    backbone: str = "conv4"  # a name in edgemeta.train.backbones.BACKBONES
    # its builder's options, e.g. {"width": 0.25} (backbone_options(name) lists them; training sets synchronized_bn)
    backbone_options: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None  # the backbone's initial weights: None/"none", "imagenet", or a Keras weights file's path
    # What of the backbone trains (`set_fine_tuned`): "all" | "batchnorm" (only BatchNorm's scales and offsets, on
    # batch statistics) | "from:LAYER" (that layer and every later one; the earlier layers frozen, BatchNorm in
    # inference mode). P>M>F chooses it on validation classes (docs/photos.md).
    fine_tune: str = "all"
    n_way: int = 5
    k_shot: int = 1
    n_query: int = 5
    episodes_per_batch: int = 1
    batch_size: int = 128  # images per step for learners that train on labelled batches (classifier), not episodes
    steps: int = 1000  # total training episodes batches
    epochs: int = 10  # steps are split into this many epochs (progress, checkpoints, callbacks)
    learning_rate: float = 1e-3
    max_shift: float = 0.0  # augmentation: random affine per image (pixels, degrees, fraction, radians)
    max_rotation: float = 0.0
    max_scale: float = 0.0
    max_shear: float = 0.0
    seed: int = 0
    deterministic: bool = False
    image_size: int | None = None  # model input is image_size x image_size (None: the dataset's, 84 for mini-ImageNet, else 28)
    invert: bool | None = None  # None: the dataset's default (Omniglot: True, digits/folders: False)
    # The input's channels, resize and normalization (edgemeta.data.splits.DataSplit); None: the dataset's choice,
    # which `train` resolves and records in run.json.
    channels: int | None = None  # 1 | 3; None: the dataset's (a folder's: 3 when its images are in colour)
    resize: str | None = None  # "squash" | "shorter" (the shorter side to resize_to, then the centre crop); None: squash
    resize_to: int | None = None
    normalize: str | None = None  # "none" | "imagenet" | "unit" | "efficientnet-lite"; None: none
    # Photo augmentation of training episodes (edgemeta.train.episodes.PhotoAugment: crop, flip, colour jitter);
    # None: on for photos (mini-ImageNet, a folder of colour images), off otherwise (Omniglot, digits, grayscale).
    augment: bool | None = None
    # "auto" (bfloat16 where it is native and measured to pay, see resolve_mixed_precision) | "float32" (or None)
    # | "float16" (with loss scaling; GPUs) | "bfloat16"
    mixed_precision: str | None = "auto"
    jit_compile: bool = False  # XLA; measured slower for Conv-4 on CPU (benchmarks/jit_compile.py): opt in on GPUs

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}. Received: {self.dataset!r}")
        if self.steps < 1 or self.epochs < 1:
            raise ValueError(f"steps and epochs must be positive. Received: steps={self.steps}, epochs={self.epochs}")
        if self.mixed_precision not in MIXED_PRECISIONS:
            raise ValueError(f"mixed_precision must be one of {MIXED_PRECISIONS}. Received: {self.mixed_precision!r}")
        if not (self.fine_tune in ("all", "batchnorm") or (self.fine_tune.startswith("from:") and self.fine_tune[5:])):
            raise ValueError("fine_tune must be 'all', 'batchnorm' or 'from:LAYER' (a layer name of the backbone). "
                             f"Received: {self.fine_tune!r}")


MIXED_PRECISIONS = ("auto", "float32", "float16", "bfloat16", None)
# The learners whose held-out accuracy was measured the same in mixed bfloat16 as in float32
# (benchmarks/learners.py --mixed-precision bfloat16; docs/distributed-training.md). "auto" keeps the others float32.
BFLOAT16_CHECKED = ("protonet", "matching", "maml")


def resolve_mixed_precision(config: TrainConfig) -> str | None:
    """The 16-bit type `config`'s backbone computes in, or None for float32.

    "auto" is bfloat16 for the learners in `BFLOAT16_CHECKED` on a CPU with AMX-BF16 and no GPU
    (`backend.amx_bfloat16_cpu`): there ProtoNet's training ran 1.7-3.1x faster, and ProtoNet, Matching
    and MAML reached the same held-out accuracy (docs/distributed-training.md has both). Elsewhere, for
    the other learners and for `deterministic` runs (whose float32 result must not depend on the CPU
    they ran on, e.g. the shipped preset's), "auto" is float32. GPU users choose float16 or bfloat16
    themselves.
    """
    if config.mixed_precision == "auto":
        if config.deterministic or config.learner not in BFLOAT16_CHECKED:
            return None
        from edgemeta.train.backend import amx_bfloat16_cpu

        return "bfloat16" if amx_bfloat16_cpu() else None
    return None if config.mixed_precision == "float32" else config.mixed_precision


def train(config: TrainConfig, out_dir: str | Path, callbacks: Sequence[Any] = (), verbose: int | str = "auto",
          train_set: ImageClassDataset | None = None, backup_dir: str | Path | None = None):
    """Meta-trains `config.learner` per `config`; writes `out_dir/embedding.keras` (the backbone, what is
    exported), `out_dir/learner.weights.h5` (everything the learner's own adaptation needs) and
    `out_dir/run.json`.

    Returns `(learner, train_set, test_set)`. Training runs inside the current `tf.distribute`
    strategy scope, whatever it is (`edgemeta.train.distribute.make_strategy`); under a multi-worker
    strategy every worker calls `train` and only the chief writes `out_dir`. With `backup_dir`,
    training state is backed up after every epoch and a restarted run resumes from it (see
    `fit_episodes`).
    """
    from edgemeta.cpu import describe_cpu
    from edgemeta.train.backbones import check_backbone_options, check_learner
    from edgemeta.train.backend import keras, kernels, tf
    from edgemeta.train.distribute import describe

    # Before the data loads: a mistyped backbone, option or weights path should not wait for a dataset.
    check_learner(config.backbone, config.learner)
    check_backbone_options(config.backbone, config.weights, **config.backbone_options)
    out_dir = Path(out_dir)
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    test_set = None
    if train_set is None:
        train_set, test_set = load_split(config)
    config = resolve_data(config, train_set)  # run.json records what the data's defaults chose
    if trains_on_batches(config.learner) and "num_classes" not in config.learner_options:
        config = replace(config, learner_options={**config.learner_options, "num_classes": train_set.num_classes})
    strategy = tf.distribute.get_strategy()
    cluster = describe(strategy)
    precision = resolve_mixed_precision(config)
    net = build_for_training(config, train_set.preprocessing.input_shape)
    start = time.time()
    history = fit_episodes(net, train_set, config, callbacks, verbose, backup_dir=backup_dir)
    net.finish_training(train_set.images)
    train_seconds = time.time() - start
    if precision or strategy.num_replicas_in_sync > 1:
        # What is exported is a plain float32 model with ordinary BatchNorm: the same weights, no training-time machinery.
        net.backbone = plain_backbone(net.backbone)
    # Under a multi-worker strategy saving reads synchronised variables (a collective every worker joins), so every
    # worker saves; the others into a scratch directory that is then removed.
    target = out_dir if cluster.is_chief else out_dir.parent / f".{out_dir.name}.worker{cluster.worker_index}"
    target.mkdir(parents=True, exist_ok=True)
    net.backbone.save(target / EMBEDDING_FILE)
    net.save_weights(target / LEARNER_WEIGHTS_FILE)
    if not cluster.is_chief:
        import shutil

        shutil.rmtree(target, ignore_errors=True)
        return net, train_set, test_set
    run = {
        "config": asdict(config),
        "learner": config.learner,
        "metric": net.metric,
        "train_set": {"name": train_set.name, "classes": train_set.num_classes, "images": len(train_set),
                      "groups": sorted(set(train_set.groups))},
        "preprocessing": train_set.preprocessing.to_dict(),
        "train_seconds": round(train_seconds, 1),
        "episodes_per_second": round(config.steps * config.episodes_per_batch / train_seconds, 2),
        "final_train_accuracy": float(history.history["accuracy"][-1]) if history.history else None,
        "distribution": cluster.to_dict(),
        "precision": f"mixed_{precision}" if precision else "float32",  # what "auto" resolved to on this machine
        "kernels": kernels(), "cpu": describe_cpu(),  # speed depends on both (docs/distributed-training.md)
    }
    (out_dir / RUN_FILE).write_text(json.dumps(run, indent=2, default=list) + "\n")
    return net, train_set, test_set


def resolve_data(config: TrainConfig, train_set: ImageClassDataset) -> TrainConfig:
    """`config` with the input choices it left to the dataset (None: image size, channels, resize, normalization)
    set to what `train_set` was preprocessed with, and `augment` decided (`augments_photos`), so that run.json
    says what the run did and export, evaluate and compress rebuild the same input from it."""
    from edgemeta.format.preprocessing import NORMALIZATIONS, normalization

    pre = train_set.preprocessing
    names = [n for n in NORMALIZATIONS if (n != "imagenet" or pre.channels == 3)
             and normalization(n, pre.channels) == (pre.mean, pre.std)]
    chosen = {"image_size": pre.height if pre.height == pre.width else None, "channels": pre.channels,
              "resize": pre.resize, "resize_to": pre.resize_to, "normalize": names[0] if names else None,
              "augment": augments_photos(config, pre)}
    return replace(config, **{k: v for k, v in chosen.items() if getattr(config, k) is None})


def augments_photos(config: TrainConfig, preprocessing: Any) -> bool:
    """Whether training episodes get the photo augmentation (`edgemeta.train.episodes.PhotoAugment`):
    `config.augment`, else on for photos (mini-ImageNet, a folder whose images are in colour) and off for
    grayscale symbols (Omniglot, digits, a grayscale folder), whose recipes and measured accuracy are without it."""
    if config.augment is not None:
        return bool(config.augment)
    return config.dataset in ("mini-imagenet", "folder") and preprocessing.channels == 3


def build_for_training(config: TrainConfig, input_shape: tuple[int, int, int]):
    """`config.learner` over a fresh `config.backbone`, in the current strategy's scope, as training needs it:
    the backbone computes in `resolve_mixed_precision(config)` (the learner's own parts, distances, losses and every
    weight stay float32), and with several replicas its BatchNorm is synchronised, so the statistics are
    those of all of a step's episodes, as on one device."""
    from edgemeta.train.backbones import build_backbone, check_learner, input_options
    from edgemeta.train.backend import keras, tf
    from edgemeta.train.learners import build_learner

    check_learner(config.backbone, config.learner)
    strategy = tf.distribute.get_strategy()
    policy = keras.mixed_precision.global_policy()
    precision = resolve_mixed_precision(config)
    with strategy.scope():
        try:
            if precision:
                keras.mixed_precision.set_global_policy(f"mixed_{precision}")
            # the input scaling the normalization calls for, unless the run's own options say otherwise
            options = {**input_options(config.backbone, config.normalize, config.weights), **config.backbone_options,
                       "synchronized_bn": strategy.num_replicas_in_sync > 1}
            backbone = build_backbone(config.backbone, input_shape, config.weights, **options)
        finally:
            keras.mixed_precision.set_global_policy(policy)
        set_fine_tuned(backbone, config.fine_tune)
        return build_learner(config.learner, backbone, **config.learner_options)


def trains_on_batches(learner: str) -> bool:
    """Whether learner `learner` trains on labelled batches of all training classes (`Classifier`), not episodes."""
    from edgemeta.train.learners.base import _builder

    return getattr(_builder(learner).learner_class, "trains_on", "episodes") == "batches"


def set_fine_tuned(backbone, fine_tune: str) -> None:
    """Makes the part of `backbone` that `fine_tune` names trainable and freezes the rest (see `TrainConfig.fine_tune`).
    A frozen BatchNorm runs in inference mode (tf_keras), so a frozen pretrained trunk computes what it was trained
    to; "batchnorm" leaves only BatchNorm trainable, on batch statistics."""
    from edgemeta.train.backend import keras

    if fine_tune == "all":
        backbone.trainable = True
        return
    if fine_tune == "batchnorm":
        for layer in backbone.layers:
            layer.trainable = isinstance(layer, keras.layers.BatchNormalization)
        return
    names = [layer.name for layer in backbone.layers]
    first = fine_tune[len("from:"):]
    if first not in names:
        raise ValueError(f"fine_tune {fine_tune!r} names no layer of backbone {backbone.name!r}. Expected 'from:' and one "
                         f"of its layers, e.g. {names[len(names) // 2]!r}. Received: {first!r}")
    start = names.index(first)
    for i, layer in enumerate(backbone.layers):
        layer.trainable = i >= start


def fit_episodes(net, train_set: ImageClassDataset, config: TrainConfig, callbacks: Sequence[Any] = (),
                 verbose: int | str = "auto", backup_dir: str | Path | None = None):
    """Compiles `net` (cosine-decayed `config.learning_rate`, the learner's episode loss) and fits it on
    `config`'s augmented episodes of `train_set`. Meta-training and compression fine-tuning both use it.
    Returns the Keras `History`.

    Under a `tf.distribute` strategy each step's `episodes_per_batch` episodes are split across the
    replicas (each input pipeline assembles only its own), and Keras scales the loss so gradients are
    those of the global batch. With `backup_dir`, `keras.callbacks.BackupAndRestore` saves the training
    state after every epoch; a run restarted with the same config and `backup_dir` (e.g. after a
    worker died) resumes at the last finished epoch, on the episodes the uninterrupted run would have
    seen next, and the backup is deleted when training completes.
    """
    from edgemeta.train.backend import keras, tf, training_stderr_filter
    from edgemeta.train.episodes import EpisodeSampler

    strategy = tf.distribute.get_strategy()
    check_global_batch(config.episodes_per_batch, strategy.num_replicas_in_sync)
    steps_per_epoch = max(1, config.steps // config.epochs)
    callbacks = list(callbacks)
    first_epoch = 0
    if backup_dir is not None:
        first_epoch = _prepare_backup(Path(backup_dir), config)
        callbacks.insert(0, keras.callbacks.BackupAndRestore(str(backup_dir)))
        if not net.built:  # a backup can only be restored into existing variables
            with strategy.scope():
                net.build_from_episode(train_set.preprocessing.input_shape)
    sampler = EpisodeSampler(train_set, config.n_way, config.k_shot, config.n_query, seed=config.seed)
    augment = dict(max_shift=config.max_shift, max_rotation=config.max_rotation, max_scale=config.max_scale,
                   max_shear=config.max_shear)
    if augments_photos(config, train_set.preprocessing):
        from edgemeta.train.episodes import PhotoAugment

        augment["photo"] = PhotoAugment()
    start = first_epoch * steps_per_epoch * config.episodes_per_batch

    def episodes(input_context=None):
        if getattr(net, "trains_on", "episodes") == "batches":
            from edgemeta.train.episodes import labelled_batches

            return labelled_batches(train_set, config.batch_size, config.seed, first_epoch * steps_per_epoch,
                                    input_context=input_context, **augment)
        return sampler.episodes(config.episodes_per_batch, start=start, input_context=input_context, **augment)

    # Inside a strategy's scope each input pipeline builds its own share (distribute_datasets_from_function).
    data = keras.utils.experimental.DatasetCreator(episodes) if tf.distribute.has_strategy() else episodes()
    with strategy.scope():
        schedule = keras.optimizers.schedules.CosineDecay(config.learning_rate, config.steps, alpha=0.01)
        optimizer = net.make_optimizer(schedule)
        if config.mixed_precision == "float16":  # float16 gradients underflow without it; bfloat16 has float32's range
            optimizer = keras.mixed_precision.LossScaleOptimizer(optimizer)
        net.compile(
            optimizer=optimizer,
            loss=net.episode_loss(),
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
            jit_compile=config.jit_compile,
        )
    if tf.distribute.has_strategy():
        # Metric results are already reduced across replicas; tf_keras' default ("sum") adds them up once more
        # per worker under MultiWorkerMirroredStrategy, so logs showed the loss times the worker count.
        net.distribute_reduction_method = "first"
    with training_stderr_filter():
        history = net.fit(data, steps_per_epoch=steps_per_epoch, epochs=config.epochs, callbacks=callbacks, verbose=verbose)
    if backup_dir is not None:  # BackupAndRestore removed its checkpoint: training completed
        (Path(backup_dir) / BACKUP_CONFIG_FILE).unlink(missing_ok=True)
        for leftover in (Path(backup_dir) / "chief", Path(backup_dir)):
            try:
                leftover.rmdir()
            except OSError:  # not empty (a user's own files) or already gone
                pass
    return history


def check_global_batch(episodes_per_batch: int, replicas: int) -> None:
    """Episodes are never cut across replicas: the global batch must divide evenly among them."""
    if episodes_per_batch % replicas:
        raise ValueError(f"episodes_per_batch ({episodes_per_batch}) must be a multiple of the {replicas} replicas in sync, "
                         "so every replica trains on whole episodes. Received: "
                         f"episodes_per_batch={episodes_per_batch}, replicas={replicas}.")


def plain_backbone(backbone):
    """A float32 copy of `backbone` with ordinary (unsynchronised) BatchNorm and the same weights."""
    from edgemeta.train.backend import keras

    def clone(layer):
        config = {**layer.get_config(), "dtype": "float32"}
        if "synchronized" in config:
            config["synchronized"] = False
        return layer.__class__.from_config(config)

    plain = keras.models.clone_model(backbone, clone_function=clone)
    plain.set_weights(backbone.get_weights())
    return plain


BACKUP_CONFIG_FILE = "config.json"


def _prepare_backup(backup_dir: Path, config: TrainConfig) -> int:
    """Returns the epoch a run resumes at (0 for a fresh run). A backup of another config is refused:
    resuming it would silently train a different run."""
    from edgemeta.train.backend import tf

    backup_dir.mkdir(parents=True, exist_ok=True)
    stamp = json.dumps(asdict(config), sort_keys=True, default=list)
    recorded = backup_dir / BACKUP_CONFIG_FILE
    # BackupAndRestore's chief writes under "chief/"; the other workers only into temporary directories.
    latest = tf.train.latest_checkpoint(str(backup_dir / "chief"))
    if latest is None:
        recorded.write_text(stamp + "\n")
        return 0
    if recorded.is_file() and recorded.read_text().strip() != stamp:
        raise ValueError(f"The backup in {str(backup_dir)!r} belongs to a run with another config; resuming it would train "
                         f"something else. Delete the directory to start afresh. Received config: {stamp}; "
                         f"backed-up config: {recorded.read_text().strip()}")
    reader = tf.train.load_checkpoint(latest)
    key = next((k for k in reader.get_variable_to_shape_map() if "ckpt_saved_epoch" in k), None)
    return int(reader.get_tensor(key)) + 1 if key else 0


def load_run(run_dir: str | Path):
    """Loads `(embedding_model, run_info)` from a run directory written by `train`."""
    from edgemeta.train.backend import keras

    run_dir = Path(run_dir)
    path = run_dir / EMBEDDING_FILE
    if not path.is_file():
        raise FileNotFoundError(f"No trained model in {str(run_dir)!r}: expected {EMBEDDING_FILE} (written by `edgemeta train`).")
    info = json.loads((run_dir / RUN_FILE).read_text())
    return keras.models.load_model(path, compile=False), info


def load_learner(run_dir: str | Path):
    """Rebuilds the trained learner of a run (backbone plus the learner's own weights, e.g. MAML's head or
    Meta-SGD's learning rates), for evaluation with its own adaptation. Returns `(learner, run_info)`."""
    from edgemeta.train.learners import build_learner

    backbone, info = load_run(run_dir)
    config = info["config"]
    learner = build_learner(info["learner"], backbone, **config.get("learner_options", {}))
    learner.build_from_episode(backbone.input_shape[1:])
    weights = Path(run_dir) / LEARNER_WEIGHTS_FILE
    if weights.is_file():
        learner.load_weights(weights)
    elif len(learner.weights) > len(backbone.weights):  # runs of edgemeta 0.1 (ProtoNet) have no such file
        raise FileNotFoundError(f"Run {str(run_dir)!r} has no {LEARNER_WEIGHTS_FILE}: the {info['learner']} learner needs it.")
    return learner, info

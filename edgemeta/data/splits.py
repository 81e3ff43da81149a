"""A run's data split: the classes it trains on and those it holds out, preprocessed for its model (TensorFlow-free)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from edgemeta.data.dataset import ImageClassDataset
from edgemeta.data.digits import PREPROCESSING as DIGITS_PREPROCESSING
from edgemeta.data.digits import load_digits
from edgemeta.data.folder import detect_channels, load_image_folder
from edgemeta.data.mini_imagenet import PREPROCESSING as MINI_IMAGENET_PREPROCESSING
from edgemeta.data.mini_imagenet import load_mini_imagenet
from edgemeta.data.omniglot import PREPROCESSING as OMNIGLOT_PREPROCESSING
from edgemeta.data.omniglot import load_omniglot
from edgemeta.format.preprocessing import NORMALIZATIONS, RESIZES, Preprocessing, normalization

# Omniglot's default split: 5 alphabets to meta-train on, 3 held out (never seen in training).
OMNIGLOT_TRAIN = ("Balinese", "Greek", "Japanese_(katakana)", "Korean", "Sanskrit")
OMNIGLOT_TEST = ("Early_Aramaic", "Latin", "Tagalog")
# The full background set's 30 alphabets (`images_background.zip`), the standard training set of Omniglot models.
OMNIGLOT_BACKGROUND = (
    "Alphabet_of_the_Magi", "Anglo-Saxon_Futhorc", "Arcadian", "Armenian", "Asomtavruli_(Georgian)", "Balinese",
    "Bengali", "Blackfoot_(Canadian_Aboriginal_Syllabics)", "Braille", "Burmese_(Myanmar)", "Cyrillic", "Early_Aramaic",
    "Futurama", "Grantha", "Greek", "Gujarati", "Hebrew", "Inuktitut_(Canadian_Aboriginal_Syllabics)",
    "Japanese_(hiragana)", "Japanese_(katakana)", "Korean", "Latin", "Malay_(Jawi_-_Arabic)", "Mkhedruli_(Georgian)",
    "N_Ko", "Ojibwe_(Canadian_Aboriginal_Syllabics)", "Sanskrit", "Syriac_(Estrangelo)", "Tagalog", "Tifinagh",
)
# Background alphabets held out to choose the Omniglot preset's recipe on (the evaluation alphabets judge it): every
# fifth in sorted order, from the fifth. All have >= 20 characters, so Lake et al.'s within-alphabet 20-way one-shot
# runs can be drawn from each.
OMNIGLOT_SELECTION = OMNIGLOT_BACKGROUND[4::5]
DATASETS = ("digits", "omniglot", "folder", "mini-imagenet")
# Each dataset's preprocessing before a split's choices: its input size and channels, its ink polarity.
# A folder's channels are its images' (`detect_channels`) unless a split says.
DATASET_PREPROCESSING = {"omniglot": OMNIGLOT_PREPROCESSING, "digits": DIGITS_PREPROCESSING, "folder": Preprocessing(),
                         "mini-imagenet": MINI_IMAGENET_PREPROCESSING}


@dataclass(frozen=True)
class DataSplit:
    """The fields of a `TrainConfig` (or of its saved copy in run.json or a bundle's provenance) that
    decide the data: the dataset, where it lives, which classes or groups train and which are held out,
    rotated copies, and the model's input: size, channels, ink polarity, resize and normalization (None: the
    dataset's choice, which `preprocessing()` resolves and `describe()` states)."""

    dataset: str = "digits"  # digits | omniglot | folder | mini-imagenet
    data_dir: str | None = None  # omniglot or mini-imagenet zips dir, or the folder of class sub-folders (train)
    test_dir: str | None = None  # folder dataset: held-out classes
    train_groups: Sequence[str] | None = None  # omniglot alphabets to meta-train on (None: OMNIGLOT_TRAIN)
    test_groups: Sequence[str] | None = None  # omniglot alphabets held out (None: OMNIGLOT_TEST; empty: none)
    train_classes: Sequence[int] | None = None  # digits: classes to meta-train on (None: 0-4)
    rotations: bool = False  # add the 90/180/270-degree copies of the training classes as new classes
    image_size: int | None = None  # model input is image_size x image_size (None: the dataset's, 84 for mini-ImageNet, else 28)
    invert: bool | None = None  # None: the dataset's default (Omniglot: True, digits/folders: False)
    channels: int | None = None  # 1 or 3; None: the dataset's (a folder's: 3 when its images are in colour)
    resize: str | None = None  # "squash" | "shorter" (edgemeta.format.preprocessing.RESIZES); None: squash
    resize_to: int | None = None  # resize="shorter": the shorter side before the centre crop (None: image_size)
    normalize: str | None = None  # a name in edgemeta.format.preprocessing.NORMALIZATIONS; None: "none"

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {', '.join(map(repr, DATASETS))}. Received: {self.dataset!r}")
        if self.channels not in (None, 1, 3) or isinstance(self.channels, bool):
            raise ValueError(f"channels must be 1, 3 or None (the dataset's). Received: {self.channels!r}")
        if self.resize not in (None, *RESIZES):
            raise ValueError(f"resize must be one of {', '.join(RESIZES)} or None (squash). Received: {self.resize!r}")
        if self.normalize not in (None, *NORMALIZATIONS):
            raise ValueError(f"normalize must be one of {', '.join(NORMALIZATIONS)} or None. Received: {self.normalize!r}")
        for name in ("image_size", "resize_to"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer or None. Received: {value!r}")

    @classmethod
    def of(cls, config: Any) -> DataSplit:
        """The split of `config`: a `DataSplit`, a `TrainConfig`, or a mapping such as the config saved in
        run.json (fields it lacks take their defaults; fields that are not about data are ignored)."""
        if isinstance(config, DataSplit):
            return config
        names = [f.name for f in fields(cls)]
        if isinstance(config, Mapping):
            return cls(**{n: config[n] for n in names if n in config})
        if all(hasattr(config, n) for n in names):
            return cls(**{n: getattr(config, n) for n in names})
        raise TypeError(f"Expected a DataSplit, a TrainConfig or a mapping of their fields. Received: "
                        f"{type(config).__name__}")

    def preprocessing(self) -> Preprocessing:
        """The dataset's preprocessing with this split's choices: input size, channels (a folder's found by
        `detect_channels` in `data_dir` when not given), ink polarity, resize and normalization."""
        base = DATASET_PREPROCESSING[self.dataset]
        size = base.height if self.image_size is None else self.image_size
        channels = self.channels
        if channels is None:
            channels = detect_channels(self.data_dir) if self.dataset == "folder" and self.data_dir else base.channels
        mean, std = normalization(self.normalize or "none", channels)
        resize = self.resize or "squash"
        return replace(base, height=size, width=size, channels=channels,
                       invert=base.invert if self.invert is None else self.invert, resize=resize,
                       resize_to=self.resize_to if resize == "shorter" else None, mean=mean, std=std)

    def describe(self, preprocessing: Preprocessing | None = None) -> str:
        """What this split feeds the model and why, e.g. "folder 'photos': 3 channels (colour images found),
        84x84, squash, no normalization"; `preprocessing`: this split's (computed when not given)."""
        pre = preprocessing or self.preprocessing()
        where = f" {Path(self.data_dir).name!r}" if self.dataset == "folder" and self.data_dir else ""
        if self.channels is not None:
            why = "as asked"
        elif self.dataset == "folder":
            why = "colour images found" if pre.channels == 3 else "grayscale images found"
        else:
            why = "the dataset's"
        size = f"{pre.width}x{pre.height}" + (" (the dataset's size)" if self.image_size is None else "")
        resize = (f"shorter side to {pre.resize_to} then the centre {pre.width}x{pre.height}" if pre.resize == "shorter"
                  else "squash")
        norm = "no normalization" if pre.mean is None else (
            f"normalized {self.normalize or 'per channel'} (mean {_numbers(pre.mean)}, std {_numbers(pre.std)})")
        colour = "colour" if pre.channels == 3 else "grayscale"
        invert = ", inverted" if pre.invert else ""
        return (f"{self.dataset}{where}: {pre.channels} channel{'s' if pre.channels > 1 else ''} ({colour}, {why}), "
                f"{size}, {resize}{invert}, {norm}")


def load_split(config: Any, load_train: bool = True) -> tuple[ImageClassDataset | None, ImageClassDataset | None]:
    """Returns (meta-train set with optional rotations, held-out test set or None) of `config`: anything
    `DataSplit.of` reads (a `DataSplit`, a `TrainConfig`, a saved config dict). With `load_train=False` the
    training set is None, and not loaded where the dataset allows it (mini-ImageNet: val alone, without the
    19,200 training images; a folder: `test_dir` alone)."""
    split = DataSplit.of(config)
    pre = split.preprocessing()
    train: ImageClassDataset | None
    if split.dataset == "mini-imagenet":
        # The standard split's training classes, and its validation classes held out (models are selected on them).
        train = load_mini_imagenet("train", split.data_dir, pre) if load_train else None
        test = load_mini_imagenet("val", split.data_dir, pre)
    elif split.dataset == "omniglot":
        full = load_omniglot(split.data_dir, preprocessing=pre)
        train_groups = list(split.train_groups or OMNIGLOT_TRAIN)
        test_groups = list(split.test_groups if split.test_groups is not None else OMNIGLOT_TEST)
        # Not the training alphabets when they are not asked for: a bundle trained on the full background set is
        # evaluated on other data (the small set's alphabets, say), where they are absent.
        train = full.subset(groups=train_groups) if load_train else None
        test = full.subset(groups=test_groups) if test_groups else None
    elif split.dataset == "digits":
        full = load_digits(pre)
        train_classes = list(split.train_classes if split.train_classes is not None else range(5))
        train = full.subset(classes=train_classes)
        rest = [c for c in range(full.num_classes) if c not in set(train_classes)]
        test = full.subset(classes=rest) if rest else None
    else:
        if not split.data_dir and (load_train or not split.test_dir):
            raise ValueError("dataset='folder' needs data_dir: a folder with one sub-folder per class. Received: "
                             f"data_dir={split.data_dir!r}")
        train = load_image_folder(split.data_dir, pre) if load_train else None
        test = load_image_folder(split.test_dir, pre) if split.test_dir else None
    if not load_train:
        return None, test
    if split.rotations:
        train = train.with_rotations()
    return train, test


def _numbers(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"

"""A run's data split: the classes it trains on and those it holds out, preprocessed for its model (TensorFlow-free)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

from edgemeta.data.dataset import ImageClassDataset
from edgemeta.data.digits import PREPROCESSING as DIGITS_PREPROCESSING
from edgemeta.data.digits import load_digits
from edgemeta.data.folder import load_image_folder
from edgemeta.data.omniglot import PREPROCESSING as OMNIGLOT_PREPROCESSING
from edgemeta.data.omniglot import load_omniglot
from edgemeta.format.preprocessing import Preprocessing

# Omniglot's default split: 5 alphabets to meta-train on, 3 held out (never seen in training).
OMNIGLOT_TRAIN = ("Balinese", "Greek", "Japanese_(katakana)", "Korean", "Sanskrit")
OMNIGLOT_TEST = ("Early_Aramaic", "Latin", "Tagalog")
DATASETS = ("digits", "omniglot", "folder")


@dataclass(frozen=True)
class DataSplit:
    """The fields of a `TrainConfig` (or of its saved copy in run.json or a bundle's provenance) that
    decide the data: the dataset, where it lives, which classes or groups train and which are held out,
    rotated copies, and the model's input size and ink polarity."""

    dataset: str = "digits"  # digits | omniglot | folder
    data_dir: str | None = None  # omniglot zips dir, or the folder of class sub-folders (train)
    test_dir: str | None = None  # folder dataset: held-out classes
    train_groups: Sequence[str] | None = None  # omniglot alphabets to meta-train on (None: OMNIGLOT_TRAIN)
    test_groups: Sequence[str] | None = None  # omniglot alphabets held out (None: OMNIGLOT_TEST; empty: none)
    train_classes: Sequence[int] | None = None  # digits: classes to meta-train on (None: 0-4)
    rotations: bool = False  # add the 90/180/270-degree copies of the training classes as new classes
    image_size: int = 28  # model input is image_size x image_size
    invert: bool | None = None  # None: the dataset's default (Omniglot: True, digits/folders: False)

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be 'digits', 'omniglot' or 'folder'. Received: {self.dataset!r}")

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
        """The dataset's preprocessing at this split's input size and ink polarity."""
        defaults = {"omniglot": OMNIGLOT_PREPROCESSING, "digits": DIGITS_PREPROCESSING, "folder": Preprocessing()}[self.dataset]
        return replace(defaults, height=self.image_size, width=self.image_size,
                       invert=defaults.invert if self.invert is None else self.invert)


def load_split(config: Any) -> tuple[ImageClassDataset, ImageClassDataset | None]:
    """Returns (meta-train set with optional rotations, held-out test set or None) of `config`: anything
    `DataSplit.of` reads (a `DataSplit`, a `TrainConfig`, a saved config dict)."""
    split = DataSplit.of(config)
    pre = split.preprocessing()
    if split.dataset == "omniglot":
        full = load_omniglot(split.data_dir, preprocessing=pre)
        train_groups = list(split.train_groups or OMNIGLOT_TRAIN)
        test_groups = list(split.test_groups if split.test_groups is not None else OMNIGLOT_TEST)
        train = full.subset(groups=train_groups)
        test = full.subset(groups=test_groups) if test_groups else None
    elif split.dataset == "digits":
        full = load_digits(pre)
        train_classes = list(split.train_classes if split.train_classes is not None else range(5))
        train = full.subset(classes=train_classes)
        rest = [c for c in range(full.num_classes) if c not in set(train_classes)]
        test = full.subset(classes=rest) if rest else None
    else:
        if not split.data_dir:
            raise ValueError("dataset='folder' needs data_dir: a folder with one sub-folder per class. Received: "
                             f"data_dir={split.data_dir!r}")
        train = load_image_folder(split.data_dir, pre)
        test = load_image_folder(split.test_dir, pre) if split.test_dir else None
    if split.rotations:
        train = train.with_rotations()
    return train, test

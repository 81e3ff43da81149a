"""Shared harness for learner tests: a toy few-shot dataset and a tiny backbone, so each test is short."""

from __future__ import annotations

import numpy as np

from edgemeta.data.dataset import ImageClassDataset
from edgemeta.format.preprocessing import Preprocessing


def toy_dataset(classes: int = 12, per_class: int = 12, size: int = 28, seed: int = 0) -> ImageClassDataset:
    """Classes are distinct random blob patterns plus noise: learnable, few-shot, novel at test."""
    rng = np.random.default_rng(seed)
    templates = (rng.random((classes, size, size, 1)) > 0.8).astype(np.float32)
    images = np.clip(np.repeat(templates, per_class, 0) + rng.normal(0, 0.3, (classes * per_class, size, size, 1)), 0, 1)
    return ImageClassDataset(images.astype(np.float32), np.repeat(np.arange(classes), per_class).astype(np.int32),
                             tuple(map(str, range(classes))), ("toy",) * classes,
                             Preprocessing(height=size, width=size), "toy")


def tiny_backbone(size: int = 16, filters: int = 8):
    from edgemeta.train.learners import conv4

    return conv4((size, size, 1), filters=filters, blocks=2)

"""Datasets as in-memory labelled image sets (TensorFlow-free); episodes live in `edgemeta.train.episodes`."""

from edgemeta.data.dataset import ImageClassDataset
from edgemeta.data.digits import load_digits
from edgemeta.data.folder import load_image_folder
from edgemeta.data.omniglot import load_omniglot

__all__ = ["ImageClassDataset", "load_digits", "load_image_folder", "load_omniglot"]

"""Datasets as in-memory labelled image sets, and the seeded episodes drawn from them (TensorFlow-free)."""

from edgemeta.data.dataset import ImageClassDataset
from edgemeta.data.digits import load_digits
from edgemeta.data.episodes import Episode, EpisodeIndices, OpenSetEpisodes
from edgemeta.data.folder import load_image_folder
from edgemeta.data.mini_imagenet import load_mini_imagenet
from edgemeta.data.omniglot import load_omniglot
from edgemeta.data.splits import DATASETS, DataSplit, load_split

__all__ = ["DATASETS", "DataSplit", "Episode", "EpisodeIndices", "ImageClassDataset", "OpenSetEpisodes", "load_digits",
           "load_image_folder", "load_mini_imagenet", "load_omniglot", "load_split"]

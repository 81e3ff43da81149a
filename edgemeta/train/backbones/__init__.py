"""The registry of embedding backbones (`edgemeta train --backbone NAME`): tf_keras functional models from image to embedding.

Every builder is `builder(input_shape, weights=None, **options) -> keras.Model`, a functional model whose output is
the embedding the board compares, int8-convertible. `build_backbone` checks the name, the options and `weights`
("imagenet", None/"none", or the path of a weights file) before building:

| name | embedding | parameters | learners | Edge TPU (full int8) |
|---|---|---|---|---|
| conv4 | 64 x (H/16) x (W/16): 64 at 28x28, 1600 at 84x84 | 0.11 M at 84x84x3 | all | all ops |
| resnet12 | 640 x width | 12.4 M at 84x84x3 | metric | LEAKY_RELU is not; activation="leaky_relu_max" or "relu" is |
| mobilenet_v3_small | 576 x width | 0.94 M (0.44 M minimalistic) | metric | HARD_SWISH is not; minimalistic=True is |
| mobilenet_v3_large | 960 x width | 3.0 M (1.44 M minimalistic) | metric | HARD_SWISH is not; minimalistic=True is |
| efficientnet_lite0 | 1280 | 3.4 M | metric | all ops (ReLU6, no squeeze-and-excitation) |

"metric" learners are those that only embed (protonet, matching, relation); the gradient-based ones (maml, fomaml,
anil, metasgd, reptile) run the backbone with fast weights (`learners.functional`), which needs a chain of
Conv2D/BatchNorm/Dense layers: `check_learner` refuses other combinations with the supported list.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from edgemeta.train.backbones.common import resolve_weights, set_batchnorm
from edgemeta.train.backbones.conv4 import conv4
from edgemeta.train.backbones.mobilenet_v3 import mobilenet_v3_large, mobilenet_v3_small
from edgemeta.train.backbones.resnet12 import resnet12
from edgemeta.train.backend import keras

Builder = Callable[..., keras.Model]
BACKBONES: dict[str, Builder] = {}
_FAST_WEIGHTS: set[str] = set()  # backbones the gradient-based learners can run layer by layer with fast weights
_NOT_OPTIONS = ("input_shape", "weights")  # arguments every builder takes, not options


def register_backbone(name: str, builder: Builder, fast_weights: bool = False) -> Builder:
    """Makes `builder(input_shape, weights=None, **options)` buildable by `name` (`--backbone NAME`). `fast_weights`:
    the model is a chain of Conv2D, BatchNorm, Dense and weightless layers, which the gradient-based learners run with
    fast weights (`learners.functional.check_backbone`)."""
    BACKBONES[name] = builder
    if fast_weights:
        _FAST_WEIGHTS.add(name)
    else:
        _FAST_WEIGHTS.discard(name)
    return builder


def efficientnet_lite0(input_shape: tuple[int, int, int] = (224, 224, 3), weights: str | None = None,
                       synchronized_bn: bool = False, **options: Any) -> keras.Model:
    """EfficientNet-Lite0 (`edgemeta.train.learners.efficientnet_lite`, imported on first use), without its classifier:
    a 1280-d embedding of RGB images of at least 32x32; ReLU6 and no squeeze-and-excitation, so every op is on Coral's
    list. Options: that builder's, except the classifier's (`backbone_options("efficientnet_lite0")`). Learners: the
    metric ones (depthwise convolutions and residual sums)."""
    from edgemeta.train.learners.efficientnet_lite import efficientnet_lite0 as build

    model = build(input_shape, weights=weights, **options)
    return set_batchnorm(model, None, synchronized_bn)


def _efficientnet_lite0_options() -> dict[str, Any]:
    from edgemeta.train.learners.efficientnet_lite import efficientnet_lite0 as build

    classifier = ("include_top", "classes", "dropout_rate", "name")  # an embedding backbone has no classifier
    params = inspect.signature(build).parameters
    return {**{k: p.default for k, p in params.items() if k not in (*_NOT_OPTIONS, *classifier)}, "synchronized_bn": False}


efficientnet_lite0.options = _efficientnet_lite0_options

register_backbone("conv4", conv4, fast_weights=True)
register_backbone("resnet12", resnet12)
register_backbone("mobilenet_v3_small", mobilenet_v3_small)
register_backbone("mobilenet_v3_large", mobilenet_v3_large)
# EfficientNet-Lite0: its builder lives in edgemeta/train/learners/efficientnet_lite.py (written alongside this
# registry); imported when first built, so this package never imports edgemeta.train.learners at load time.
register_backbone("efficientnet_lite0", efficientnet_lite0)


# What each pretrained backbone is fed, by the run's normalization (edgemeta.format.preprocessing.NORMALIZATIONS):
# the options that make the model take the preprocessed input as it is, so nothing is scaled twice.
_INPUT_OPTIONS: dict[str, dict[str | None, dict[str, Any]]] = {
    "mobilenet_v3_small": {None: {}, "none": {}, "unit": {"input_range": (-1.0, 1.0)}},
    "mobilenet_v3_large": {None: {}, "none": {}, "unit": {"input_range": (-1.0, 1.0)}},
    "efficientnet_lite0": {None: {}, "none": {}, "efficientnet-lite": {"rescale": False}},
}


def input_options(name: str, normalize: str | None, weights: Any = None) -> dict[str, Any]:
    """The backbone options that match its input scaling to the run's normalization: a MobileNetV3 fed
    `unit` ([-1, 1]) takes it as it is, as does an EfficientNet-Lite fed `efficientnet-lite`; with none, each
    rescales [0, 1] itself. With pretrained `weights`, a normalization the backbone was not trained with is
    refused (without them, the backbone learns on whatever it is fed)."""
    table = _INPUT_OPTIONS.get(name)
    if table is None:
        return {}
    if normalize not in table:
        if weights in (None, "none"):
            return {}
        expected = sorted(k for k in table if k)
        raise ValueError(f"--normalize {normalize} does not match {name}'s pretrained input scaling. Expected one of "
                         f"{expected}. Received: {normalize!r}")
    return dict(table[normalize])


def backbone_options(name: str) -> dict[str, Any]:
    """The options backbone `name` accepts, with their defaults (its builder's keyword arguments besides
    `input_shape` and `weights`)."""
    builder = _builder(name)
    if hasattr(builder, "options"):  # a builder that forwards **options says what they are
        return builder.options()
    params = inspect.signature(builder).parameters
    return {k: p.default for k, p in params.items()
            if k not in _NOT_OPTIONS and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def check_backbone_options(name: str, weights: Any = None, **options: Any) -> str | None:
    """Checks what needs no input shape: the name, the option names and `weights`. Returns `weights` resolved
    (None, "imagenet" or an existing file's path). Raises ValueError (FileNotFoundError for a missing file)."""
    allowed = backbone_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"Backbone {name!r} has no option(s) {unknown}. Expected some of {sorted(allowed)}. "
                         f"Received: {options}")
    return resolve_weights(weights)


def build_backbone(name: str, input_shape: tuple[int, int, int], weights: Any = None, **options: Any) -> keras.Model:
    """Builds backbone `name` for inputs of `input_shape` (height, width, channels) with `weights` ("imagenet",
    None or "none" for random initialisation, or the path of a weights file) and the builder's `options`.
    Unknown names, unknown options and bad values raise a ValueError saying what was received and expected."""
    weights = check_backbone_options(name, weights, **options)
    return BACKBONES[name](input_shape, weights=weights, **options)


def needs_fast_weights(learner: str) -> bool:
    """Whether learner `learner` runs its backbone with fast weights (MAML and the learners built on it)."""
    from edgemeta.train.learners.base import LEARNERS
    from edgemeta.train.learners.maml import MAML

    if learner not in LEARNERS:
        raise ValueError(f"Unknown learner {learner!r}. Expected one of {sorted(LEARNERS)}.")
    return issubclass(LEARNERS[learner].learner_class, MAML)


def supported_learners(name: str) -> list[str]:
    """The registered learners that can train backbone `name`."""
    from edgemeta.train.learners.base import LEARNERS

    _builder(name)
    return sorted(learner for learner in LEARNERS if name in _FAST_WEIGHTS or not needs_fast_weights(learner))


def check_learner(backbone: str, learner: str) -> None:
    """Raises a ValueError unless `learner` can train `backbone`."""
    _builder(backbone)
    if needs_fast_weights(learner) and backbone not in _FAST_WEIGHTS:
        raise ValueError(
            f"Learner {learner!r} adapts its backbone with fast weights, running it layer by layer "
            f"(learners.functional), which needs a chain of Conv2D, BatchNorm and Dense layers; backbone {backbone!r} "
            f"is not one. Backbone {backbone!r} trains with {supported_learners(backbone)}; {learner!r} trains "
            f"{sorted(_FAST_WEIGHTS)}. Received: backbone={backbone!r}, learner={learner!r}")


def _builder(name: str) -> Builder:
    if name not in BACKBONES:
        raise ValueError(f"Unknown backbone {name!r}. Expected one of {sorted(BACKBONES)}. Received: {name!r}")
    return BACKBONES[name]


__all__ = ["BACKBONES", "backbone_options", "build_backbone", "check_backbone_options", "check_learner", "conv4",
           "efficientnet_lite0", "mobilenet_v3_large", "mobilenet_v3_small", "needs_fast_weights", "register_backbone",
           "resnet12", "supported_learners"]

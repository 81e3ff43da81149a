"""The backbone registry's names where they were first imported from: its home is `edgemeta.train.backbones`."""

from edgemeta.train.backbones import (
    BACKBONES,
    backbone_options,
    build_backbone,
    check_learner,
    conv4,
    mobilenet_v3_large,
    mobilenet_v3_small,
    register_backbone,
    resnet12,
    supported_learners,
)

__all__ = ["BACKBONES", "backbone_options", "build_backbone", "check_learner", "conv4", "mobilenet_v3_large",
           "mobilenet_v3_small", "register_backbone", "resnet12", "supported_learners"]

"""Few-shot learners built with tf_keras (imports TensorFlow)."""

from edgemeta.learners.backbones import BACKBONES, conv4
from edgemeta.learners.protonet import ProtoNet

__all__ = ["BACKBONES", "ProtoNet", "conv4"]

"""Few-shot meta-learners built with tf_keras (imports TensorFlow), all behind one `Learner` interface
and a registry of names (`LEARNERS`, `build_learner`)."""

from edgemeta.learners.anil import ANIL
from edgemeta.learners.backbones import BACKBONES, conv4
from edgemeta.learners.base import LEARNERS, Learner, build_learner, learner_options, register_learner
from edgemeta.learners.maml import MAML
from edgemeta.learners.matching import MatchingNet
from edgemeta.learners.metasgd import MetaSGD
from edgemeta.learners.protonet import ProtoNet
from edgemeta.learners.relation import RelationNet
from edgemeta.learners.reptile import Reptile

__all__ = ["ANIL", "BACKBONES", "LEARNERS", "Learner", "MAML", "MatchingNet", "MetaSGD", "ProtoNet", "RelationNet",
           "Reptile", "build_learner", "conv4", "learner_options", "register_learner"]

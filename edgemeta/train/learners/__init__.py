"""Few-shot meta-learners built with tf_keras (imports TensorFlow), all behind one `Learner` interface
and a registry of names (`LEARNERS`, `build_learner`); the backbones' registry (`BACKBONES`, `build_backbone`) is
`edgemeta.train.backbones`, re-exported here."""

from edgemeta.train.learners.anil import ANIL
from edgemeta.train.learners.backbones import BACKBONES, build_backbone, check_learner, conv4, supported_learners
from edgemeta.train.learners.base import LEARNERS, Learner, build_learner, learner_options, register_learner
from edgemeta.train.learners.classifier import Classifier
from edgemeta.train.learners.distiller import Distiller
from edgemeta.train.learners.maml import MAML
from edgemeta.train.learners.matching import MatchingNet
from edgemeta.train.learners.metasgd import MetaSGD
from edgemeta.train.learners.protonet import ProtoNet
from edgemeta.train.learners.relation import RelationNet
from edgemeta.train.learners.reptile import Reptile

__all__ = ["ANIL", "BACKBONES", "Classifier", "Distiller", "LEARNERS", "Learner", "MAML", "MatchingNet", "MetaSGD",
           "ProtoNet", "RelationNet", "Reptile", "build_backbone", "build_learner", "check_learner", "conv4",
           "learner_options", "register_learner", "supported_learners"]

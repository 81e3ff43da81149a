"""Distillation of an embedding into a smaller student: `Distiller` (a learner, `edgemeta.train.learners.distiller`)."""

from edgemeta.train.learners.distiller import Distiller, relative_distances

__all__ = ["Distiller", "relative_distances"]

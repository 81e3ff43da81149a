"""ANIL (Raghu et al., 2020): MAML whose inner loop adapts only the classifier head."""

from __future__ import annotations

from edgemeta.train.backend import keras
from edgemeta.train.learners.base import register_learner
from edgemeta.train.learners.maml import MAML


@register_learner("anil")
class ANIL(MAML):
    """The body is meta-learned but frozen within a task; only the head takes inner steps, so the
    inner loop is cheap (support features are computed once) and second order costs little.
    Defaults follow the ANIL paper's Omniglot setting (more, smaller inner steps than MAML)."""

    def __init__(self, backbone: keras.Model, inner_steps: int = 5, eval_inner_steps: int = 10, inner_lr: float = 0.4,
                 first_order: bool = False, head_init: str = "meta", **kwargs) -> None:
        super().__init__(backbone, inner_steps, eval_inner_steps, inner_lr, first_order, head_init, adapt="head", **kwargs)

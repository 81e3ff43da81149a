"""Meta-SGD (Li et al., 2017): MAML that also meta-learns a learning rate for every parameter element."""

from __future__ import annotations

from edgemeta.train.backend import keras
from edgemeta.train.learners.base import register_learner
from edgemeta.train.learners.maml import MAML


@register_learner("metasgd")
class MetaSGD(MAML):
    """The inner update is `w - alpha * grad` with `alpha` a trainable tensor shaped like `w`
    (initialised to `inner_lr`), learned by the outer loop together with the initialisation."""

    def __init__(self, backbone: keras.Model, inner_steps: int = 1, eval_inner_steps: int = 1, inner_lr: float = 0.4,
                 first_order: bool = False, head_init: str = "meta", **kwargs) -> None:
        super().__init__(backbone, inner_steps, eval_inner_steps, inner_lr, first_order, head_init, **kwargs)
        init = keras.initializers.Constant(inner_lr)
        shapes = [w.shape for w in self.backbone.trainable_weights] + [(self.embedding_dim, 1), (1,)]
        # Head rates are shared across classes (shape (D, 1), (1,)): like the head itself, one model, any way.
        self.alphas = [self.add_weight(name=f"alpha_{i}", shape=s, initializer=init) for i, s in enumerate(shapes)]

    def step_sizes(self, params):
        return list(self.alphas)

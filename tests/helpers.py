"""Shared test helpers: the velocity-only objective around a stub or tiny model."""
from vco.config import DiffusionConfig, ModelConfig
from vco.diffusion.flow import SameTime
from vco.losses.base import BuildContext, WeightOnly
from vco.losses.velocity import PixelVLoss, SemanticVLoss
from vco.train.objective import Objective


def velocity_loss(model, x, y, cfg: DiffusionConfig, num_classes, generator, semantic=None,
                  semantic_weight=0.1, semantic_time=SameTime()):
    """The objective's terms for L_pix (+ semantic_weight * L_sem when ``semantic`` is given)."""
    ctx = BuildContext(ModelConfig(), cfg)
    terms = {"pix": PixelVLoss(WeightOnly(1.0), ctx)}
    if semantic is not None:
        terms["sem"] = SemanticVLoss(WeightOnly(semantic_weight), ctx)
    return Objective(model, terms, cfg, num_classes, semantic_time)(x, y, semantic, generator)

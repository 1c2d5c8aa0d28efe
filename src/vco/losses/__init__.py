"""The loss terms of the training objective, chosen by name.

Every run has the pixel v-loss; a co-denoising run adds the semantic v-loss (weight
``semantic.loss_weight``) and the auxiliary loss named by ``semantic.aux_loss`` (V-Co Table 3),
with that loss's own options (``--set aux_loss.gate_tau=5``). A term declares the step tensors it
reads (vco.losses.base); adding one is its file plus a line in ``AUX_LOSSES``.
"""
from __future__ import annotations

from ..components import choose, resolved
from ..config import Config
from .base import BuildContext, LossTerm, StepTensors, WeightOnly
from .drifting import DriftingLoss
from .hybrid import HybridLoss, hybrid_field, hybrid_loss_from_features, hybrid_regression_loss
from .perceptual import PerceptualLoss
from .repa import RepaLoss
from .velocity import PixelVLoss, SemanticVLoss

# semantic.aux_loss name -> term ("none": no auxiliary loss)
AUX_LOSSES: dict[str, type[LossTerm] | None] = {
    "hybrid": HybridLoss,
    "repa": RepaLoss,
    "perceptual": PerceptualLoss,
    "drifting": DriftingLoss,
    "none": None,
}


def aux_loss(cfg: Config) -> tuple[type[LossTerm] | None, object]:
    """(the configured auxiliary loss's class, its filled options); (None, None) for "none"."""
    _, cls, options = choose(AUX_LOSSES, cfg.semantic.aux_loss, "semantic.aux_loss", "hybrid")
    return cls, options


def resolved_aux_loss(cfg: Config) -> dict:
    """semantic.aux_loss with every option of its loss spelled out (what config.yaml records)."""
    return resolved(AUX_LOSSES, cfg.semantic.aux_loss, "semantic.aux_loss", "hybrid")


def reads_pooled_positives(cfg: Config) -> bool:
    """Whether the configured auxiliary loss compares x_pred's pooled features with the real
    images' (hybrid, drifting): a feature cache then stores those too."""
    cls, _ = aux_loss(cfg) if cfg.model.co_denoising else (None, None)
    return cls is not None and "x_pooled" in cls.optional_inputs


def build_loss_terms(cfg: Config, encoder=None) -> dict[str, LossTerm]:
    """The objective's terms by slot: "pix" always; "sem" and "aux" for co-denoising models."""
    context = BuildContext(cfg.model, cfg.diffusion, encoder)
    terms: dict[str, LossTerm] = {"pix": PixelVLoss(WeightOnly(1.0), context)}
    if not cfg.model.co_denoising:
        return terms
    terms["sem"] = SemanticVLoss(WeightOnly(cfg.semantic.loss_weight), context)
    cls, options = aux_loss(cfg)
    if cls is not None:
        terms["aux"] = cls(options, context)
    return terms


__all__ = ["AUX_LOSSES", "BuildContext", "LossTerm", "StepTensors", "build_loss_terms",
           "aux_loss", "reads_pooled_positives", "resolved_aux_loss", "HybridLoss", "RepaLoss",
           "PerceptualLoss", "DriftingLoss", "PixelVLoss", "SemanticVLoss", "hybrid_field", "hybrid_regression_loss",
           "hybrid_loss_from_features"]

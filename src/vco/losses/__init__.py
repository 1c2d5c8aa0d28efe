"""Auxiliary losses on the predicted clean image (V-Co Table 3), chosen by ``semantic.aux_loss``.

Each is a module called as ``loss(x_pred, x, labels, semantic=..., hidden=...)`` that uses what it
needs; ``tap_block`` names the backbone block whose pixel tokens it reads (REPA) and
``default_weight`` is the paper's coefficient (used unless ``semantic.aux_weight`` is set).
"""
from __future__ import annotations

from .drifting import DriftingLoss
from .hybrid import HybridLoss, drift_field, drifting_regression_loss, hybrid_loss_from_features
from .perceptual import PerceptualLoss
from .repa import RepaLoss

AUX_LOSSES = {
    "hybrid": lambda cfg, encoder: HybridLoss(encoder, cfg.semantic.gate_tau, cfg.semantic.repulsion_tau),
    "repa": lambda cfg, encoder: RepaLoss(cfg.model.hidden_size, cfg.model.semantic_dim),
    "perceptual": lambda cfg, encoder: PerceptualLoss(encoder),
    "drifting": lambda cfg, encoder: DriftingLoss(encoder),
    "none": lambda cfg, encoder: None,
}


def build_aux_loss(cfg, encoder):
    """The auxiliary loss named by ``cfg.semantic.aux_loss`` (None for 'none')."""
    name = cfg.semantic.aux_loss
    if name not in AUX_LOSSES:
        raise ValueError(f"unknown semantic.aux_loss '{name}'; choose one of {', '.join(AUX_LOSSES)}")
    return AUX_LOSSES[name](cfg, encoder)


__all__ = ["AUX_LOSSES", "build_aux_loss", "HybridLoss", "RepaLoss", "PerceptualLoss", "DriftingLoss",
           "drift_field", "drifting_regression_loss", "hybrid_loss_from_features"]

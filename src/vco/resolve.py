"""A config with every component's options spelled out and checked: what a run records.

``semantic.aux_loss`` and ``semantic.calibration`` name components whose options live beside
their code (vco.losses, vco.semantic.calibration). Resolving fills in each option's default and
rejects unknown ones, so a run's config.yaml says exactly what it ran with.
"""
from __future__ import annotations

import copy
import dataclasses

from .config import Config
from .losses import resolved_aux_loss
from .semantic.calibration import resolved_calibration


def resolve_config(cfg: Config) -> Config:
    """A new Config: ``cfg`` with its components' options resolved (``cfg`` is unchanged)."""
    cfg = copy.deepcopy(cfg)
    semantic = dataclasses.replace(cfg.semantic, aux_loss=resolved_aux_loss(cfg),
                                   calibration=resolved_calibration(cfg.semantic.calibration))
    return dataclasses.replace(cfg, semantic=semantic)

"""Model registry: ``ModelConfig.fusion`` -> constructor (V-Co Table 1)."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..config import ModelConfig
from .fusions import FUSIONS, SharedTrunk
from .jit import JiT
from .vco import VCo

MODELS = {"none": JiT, "dual_stream": VCo, **{name: SharedTrunk for name in FUSIONS}}


def build_model(cfg: ModelConfig, device: str | torch.device | None = None) -> nn.Module:
    if cfg.fusion not in MODELS:
        raise ValueError(f"unknown model.fusion '{cfg.fusion}'; choose one of {', '.join(MODELS)}")
    with torch.device(device or "cpu"):
        return MODELS[cfg.fusion](cfg)


def count_params(cfg: ModelConfig) -> int:
    """Trainable parameters, counted on the meta device (no memory is allocated)."""
    model = build_model(cfg, device="meta")
    return sum(p.numel() for p in model.parameters() if p.requires_grad)

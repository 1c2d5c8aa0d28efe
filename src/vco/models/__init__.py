"""Model registry: ``ModelConfig.arch`` -> constructor."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..config import ModelConfig
from .jit import JiT
from .vco import VCo

MODELS = {"jit": JiT, "vco": VCo}


def build_model(cfg: ModelConfig, device: str | torch.device | None = None) -> nn.Module:
    if cfg.arch not in MODELS:
        raise ValueError(f"unknown model arch '{cfg.arch}'; choose one of {', '.join(MODELS)}")
    with torch.device(device or "cpu"):
        return MODELS[cfg.arch](cfg)


def count_params(cfg: ModelConfig) -> int:
    """Trainable parameters, counted on the meta device (no memory is allocated)."""
    model = build_model(cfg, device="meta")
    return sum(p.numel() for p in model.parameters() if p.requires_grad)

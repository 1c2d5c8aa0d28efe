"""Perceptual loss in a frozen encoder's patch space (V-Co Table 3 ablation, `--aux_dinov2_loss`).

With f = encoder.perceptual_features (DINOv2: affine-LayerNorm patch tokens, (B, N, C)):

    loss = mean_b mean_n [ 1 - cos(f(x_pred)_bn, stopgrad f(x)_bn) ]

computed in float32. Gradients flow through the frozen encoder into x_pred; the encoder's weights never
receive any. The official "low-similarity gate" (threshold 1.0) keeps every sample, so it is omitted.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .base import BuildContext, LossTerm


def perceptual_loss_from_features(f_pred: torch.Tensor, f_real: torch.Tensor) -> torch.Tensor:
    """1 - cos per token, averaged over tokens then samples; f_pred, f_real (B, N, C), f_real constant."""
    a = F.normalize(f_pred.float(), dim=-1, eps=1e-12)
    b = F.normalize(f_real.detach().float(), dim=-1, eps=1e-12)
    return (1 - (a * b).sum(-1)).mean(-1).mean()


@dataclass
class PerceptualOptions:
    weight: float = 0.01              # the official --aux_dinov2_loss coefficient


class PerceptualLoss(LossTerm):
    """1 - cos between the encoder's patch tokens of the predicted and the real clean image."""
    inputs = ("x_pred", "x")
    Options = PerceptualOptions
    uses_encoder = True

    def __init__(self, options: PerceptualOptions, context: BuildContext):
        super().__init__(options, context)
        self.encoder = self.needs_encoder(context)

    def forward(self, *, x_pred: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """x_pred (B, 3, H, W) with grad, x (B, 3, H, W) real, in [-1, 1]."""
        f_pred = self.encoder.perceptual_features(x_pred.float())  # (B, N, C), with grad to x_pred
        with torch.no_grad():
            f_real = self.encoder.perceptual_features(x)
        return perceptual_loss_from_features(f_pred, f_real)

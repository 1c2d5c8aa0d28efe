"""Perceptual loss in a frozen encoder's patch space (V-Co Table 3 ablation, `--aux_dinov2_loss`).

With f = encoder.perceptual_features (DINOv2: affine-LayerNorm patch tokens, (B, N, C)):

    loss = mean_b mean_n [ 1 - cos(f(x_pred)_bn, stopgrad f(x)_bn) ]

computed in float32. Gradients flow through the frozen encoder into x_pred; the encoder's weights never
receive any. The official "low-similarity gate" (threshold 1.0) keeps every sample, so it is omitted.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def perceptual_loss_from_features(f_pred: torch.Tensor, f_real: torch.Tensor) -> torch.Tensor:
    """1 - cos per token, averaged over tokens then samples; f_pred, f_real (B, N, C), f_real constant."""
    a = F.normalize(f_pred.float(), dim=-1, eps=1e-12)
    b = F.normalize(f_real.detach().float(), dim=-1, eps=1e-12)
    return (1 - (a * b).sum(-1)).mean(-1).mean()


class PerceptualLoss(nn.Module):
    """1 - cos between the encoder's patch tokens of the predicted and the real clean image."""
    tap_block = None
    default_weight = 0.01

    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, x_pred: torch.Tensor, x: torch.Tensor, labels: torch.Tensor, *,
                semantic: torch.Tensor | None = None, hidden: torch.Tensor | None = None) -> torch.Tensor:
        """x_pred (B, 3, H, W) with grad, x (B, 3, H, W) real, in [-1, 1]; labels, semantic, hidden unused."""
        f_pred = self.encoder.perceptual_features(x_pred)  # (B, N, C), with grad to x_pred
        with torch.no_grad():
            f_real = self.encoder.perceptual_features(x)
        return perceptual_loss_from_features(f_pred, f_real)

"""Perceptual-drifting hybrid loss (V-Co's final auxiliary loss, "drifting_v3").

On L2-normalised pooled features g (of the predicted clean image, with grad) and p (of the paired
real image, no grad), per class present in the local batch:

    s_i = exp(-|g_i - p_i|^2 / tau_g)                      similarity gate
    A_i = s_i (p_i - g_i)                                   attraction to the paired real image
    k_ij = exp(-|g_i - g_j|^2 / tau_r), k_ii = 0; w = k / max(sum_j k_ij, 1e-8)
    R_i = (1 - s_i) (sum_j w_ij g_j - g_i)                  pull toward same-class neighbours,
    V_i = A_i - R_i                                         subtracted: a repulsion
    loss_c = MSE(g, stopgrad(g + V))  ( = mean V^2, gradient -2V / numel )

with attraction only for a class with a single sample; the class losses are averaged.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .base import PooledFeatureLoss


def hybrid_field(g: torch.Tensor, p: torch.Tensor, gate_tau: float = 10.0,
                repulsion_tau: float = 0.2) -> torch.Tensor:
    """V for one class: g, p (N, C) unit-norm features -> (N, C)."""
    s = torch.exp(-(g - p).pow(2).sum(-1) / gate_tau)                          # (N,)
    field = s[:, None] * (p - g)
    if g.shape[0] >= 2:
        k = torch.exp(-torch.cdist(g, g).pow(2) / repulsion_tau)
        k = k * (1 - torch.eye(g.shape[0], device=g.device, dtype=k.dtype))
        w = k / k.sum(-1, keepdim=True).clamp(min=1e-8)
        field = field - (1 - s)[:, None] * (w @ g - g)
    return field


def hybrid_regression_loss(g: torch.Tensor, p: torch.Tensor, labels: torch.Tensor,
                             gate_tau: float = 10.0, repulsion_tau: float = 0.2) -> torch.Tensor:
    """Mean over the classes present of MSE(g_c, stopgrad(g_c + V_c)); g, p unit-norm (B, C)."""
    losses = []
    for c in labels.unique(sorted=True):
        idx = (labels == c).nonzero(as_tuple=True)[0]
        gc = g[idx]
        with torch.no_grad():
            target = gc + hybrid_field(gc, p[idx], gate_tau, repulsion_tau)
        losses.append(F.mse_loss(gc, target))
    return torch.stack(losses).mean()


def hybrid_loss_from_features(g: torch.Tensor, p: torch.Tensor, labels: torch.Tensor,
                              gate_tau: float = 10.0, repulsion_tau: float = 0.2) -> torch.Tensor:
    """g: (B, C) generated features (grad), p: (B, C) real features; L2-normalised in fp32 here."""
    g = F.normalize(g.float(), dim=-1, eps=1e-12)
    p = F.normalize(p.float(), dim=-1, eps=1e-12).detach()
    return hybrid_regression_loss(g, p, labels, gate_tau, repulsion_tau)


@dataclass
class HybridOptions:
    weight: float = 10.0              # the paper's coefficient (drifting_v3_loss_coef)
    gate_tau: float = 10.0            # attraction gate temperature tau_g
    repulsion_tau: float = 0.2        # repulsion kernel temperature tau_r


class HybridLoss(PooledFeatureLoss):
    """The hybrid loss in a frozen encoder's pooled feature space (gradients flow through the
    encoder into x_pred; the encoder's own weights stay frozen)."""
    Options = HybridOptions

    def forward(self, *, x_pred: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                x_pooled: torch.Tensor | None = None) -> torch.Tensor:
        """x_pred (B, 3, H, W) with grad, x (B, 3, H, W) real, y (B,) true labels, x_pooled
        (B, C') x's pooled features if cached."""
        g, p = self.pooled_pair(x_pred, x, x_pooled)
        return hybrid_loss_from_features(g, p, y, self.options.gate_tau, self.options.repulsion_tau)

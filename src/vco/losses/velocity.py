"""The two diffusion terms: the v-loss of each stream (JiT's objective, and V-Co's semantic one).

    L_pix = mean_b mean ||v - v_hat||^2,   v = (x - z) / max(1 - t, t_eps),  v_hat likewise from x_pred
    L_sem = the same on the semantic stream (at its own clock t_f), averaged over the samples that
            kept their semantic pathway only (a dropped sample's features are not its to predict)
"""
from __future__ import annotations

import torch

from ..diffusion.flow import masked_mean, v_loss
from .base import BuildContext, LossTerm


class PixelVLoss(LossTerm):
    inputs = ("x_pred", "x", "z", "t")

    def __init__(self, options, context: BuildContext):
        super().__init__(options, context)
        self.t_eps = context.diffusion.t_eps

    def forward(self, *, x_pred: torch.Tensor, x: torch.Tensor, z: torch.Tensor,
                t: torch.Tensor) -> torch.Tensor:
        return v_loss(x_pred, x, z, t, self.t_eps).mean()


class SemanticVLoss(LossTerm):
    inputs = ("f_pred", "f", "z_f", "t_f", "f_kept")

    def __init__(self, options, context: BuildContext):
        super().__init__(options, context)
        self.t_eps = context.diffusion.t_eps

    def forward(self, *, f_pred: torch.Tensor, f: torch.Tensor, z_f: torch.Tensor,
                t_f: torch.Tensor, f_kept: torch.Tensor) -> torch.Tensor:
        return masked_mean(v_loss(f_pred, f, z_f, t_f, self.t_eps), f_kept)

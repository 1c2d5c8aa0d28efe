"""REPA alignment loss (V-Co Table 3 ablation, `table3_vco_repa.sh`; Yu et al., arXiv 2410.06940).

The pixel stream's hidden tokens h (B, N, H) after block `tap_block` (0-based, in-context tokens
excluded) go through a trainable per-token MLP projector (REPA's build_mlp) and are aligned with the clean
calibrated semantic target features y (B, N, C) of the same tokens:

    z_n  = W3 silu(W2 silu(W1 h_n))                     H -> 2048 -> 2048 -> C
    loss = -mean_b mean_n <z_bn / |z_bn|, y_bn / |y_bn|>  (negative cosine similarity)

The target is stop-grad; the gradient reaches the projector and, through h, the backbone blocks up to
`tap_block`. The cosine is computed in float32.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def build_projector(hidden_size: int, feature_dim: int, projector_dim: int = 2048) -> nn.Sequential:
    """REPA's build_mlp: Linear(H, P) - SiLU - Linear(P, P) - SiLU - Linear(P, C), applied per token."""
    return nn.Sequential(
        nn.Linear(hidden_size, projector_dim), nn.SiLU(),
        nn.Linear(projector_dim, projector_dim), nn.SiLU(),
        nn.Linear(projector_dim, feature_dim),
    )


def negative_cosine(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """-cos(z, y) per token, averaged over tokens then samples; z, y (B, N, C), y treated as constant."""
    z = F.normalize(z.float(), dim=-1, eps=1e-12)
    y = F.normalize(y.detach().float(), dim=-1, eps=1e-12)
    return -(z * y).sum(-1).mean(-1).mean()


class RepaLoss(nn.Module):
    """Negative cosine between projected pixel-stream hidden tokens and the semantic target features."""
    tap_block: int | None = 4
    default_weight = 0.1

    def __init__(self, hidden_size: int, feature_dim: int, projector_dim: int = 2048, tap_block: int = 4):
        super().__init__()
        if tap_block < 0:
            raise ValueError(f"tap_block is a 0-based block index, got {tap_block}")
        self.hidden_size, self.feature_dim, self.tap_block = hidden_size, feature_dim, tap_block
        self.projector = build_projector(hidden_size, feature_dim, projector_dim)

    def forward(self, x_pred: torch.Tensor, x: torch.Tensor, labels: torch.Tensor, *,
                semantic: torch.Tensor | None = None, hidden: torch.Tensor | None = None) -> torch.Tensor:
        """hidden (B, N, hidden_size) tapped pixel tokens, semantic (B, N, feature_dim) clean targets."""
        if hidden is None or semantic is None:
            raise ValueError(
                "RepaLoss needs hidden= (the pixel tokens after block tap_block) and semantic= (the clean "
                f"semantic target features); got hidden={'None' if hidden is None else 'a tensor'}, "
                f"semantic={'None' if semantic is None else 'a tensor'}"
            )
        if hidden.ndim != 3 or semantic.ndim != 3 or hidden.shape[:2] != semantic.shape[:2]:
            raise ValueError(
                f"hidden {tuple(hidden.shape)} and semantic {tuple(semantic.shape)} must be (B, N, .) with the "
                "same batch and token count; exclude the in-context tokens from hidden"
            )
        if hidden.shape[-1] != self.hidden_size or semantic.shape[-1] != self.feature_dim:
            raise ValueError(
                f"RepaLoss was built for hidden size {self.hidden_size} and feature dim {self.feature_dim}, got "
                f"hidden {tuple(hidden.shape)} and semantic {tuple(semantic.shape)}"
            )
        return negative_cosine(self.projector(hidden), semantic)

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

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import BuildContext, LossTerm


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


@dataclass
class RepaOptions:
    weight: float = 0.1               # table3_vco_repa.sh
    tap_block: int = 4                # 0-based block whose pixel tokens are aligned
    projector_dim: int = 2048         # width of the projector MLP


class RepaLoss(LossTerm):
    """Negative cosine between projected pixel-stream hidden tokens and the semantic target features."""
    inputs = ("hidden", "f")
    Options = RepaOptions

    def __init__(self, options: RepaOptions, context: BuildContext):
        super().__init__(options, context)
        if options.tap_block < 0:
            raise ValueError(f"aux_loss.tap_block is a 0-based block index, got {options.tap_block}")
        if options.tap_block >= context.model.depth:
            raise ValueError(f"aux_loss.tap_block={options.tap_block} but the model has "
                             f"{context.model.depth} blocks")
        self.hidden_size, self.feature_dim = context.model.hidden_size, context.model.semantic_dim
        self.projector = build_projector(self.hidden_size, self.feature_dim, options.projector_dim)

    @property
    def tap_block(self) -> int:
        return self.options.tap_block

    def forward(self, *, hidden: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        """hidden (B, N, hidden_size) tapped pixel tokens, f (B, N, feature_dim) clean targets."""
        if hidden.ndim != 3 or f.ndim != 3 or hidden.shape[:2] != f.shape[:2]:
            raise ValueError(
                f"hidden {tuple(hidden.shape)} and f {tuple(f.shape)} must be (B, N, .) with the "
                "same batch and token count; exclude the in-context tokens from hidden"
            )
        if hidden.shape[-1] != self.hidden_size or f.shape[-1] != self.feature_dim:
            raise ValueError(
                f"RepaLoss was built for hidden size {self.hidden_size} and feature dim {self.feature_dim}, got "
                f"hidden {tuple(hidden.shape)} and f {tuple(f.shape)}"
            )
        return negative_cosine(self.projector(hidden), f)

"""V-Co: the fully dual-stream co-denoising transformer (Lin et al. 2026, final recipe).

Pixels and semantic patch features (one token per pixel patch) are embedded separately, share
positions (sin-cos and RoPE), the conditioning c = t_emb + y_emb and the in-context class tokens,
and interact only through joint attention. Two x-prediction heads: pixels and features.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..config import ModelConfig
from ..nn.dual_stream import DualStreamBlock
from ..nn.layers import FinalLayer, init_jit_weights, unpatchify
from .jit import PixelDiffusionTransformer, in_context_tokens


class SemanticEmbed(nn.Module):
    """Per-token C -> bottleneck (no bias) -> H, the official pair of 1x1 convs as linears."""

    def __init__(self, dim: int, bottleneck: int, hidden: int):
        super().__init__()
        self.proj1 = nn.Linear(dim, bottleneck, bias=False)
        self.proj2 = nn.Linear(bottleneck, hidden)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.proj2(self.proj1(f))


class VCo(PixelDiffusionTransformer):
    """forward(x_t, t, y, f_t, drop) -> (x_pred (B, C, H, W), f_pred (B, N, semantic_dim)).

    ``drop`` (B,) bool marks the structurally unconditional samples: their pixel queries are
    masked from every semantic key in every block.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        h = cfg.hidden_size
        self.s_embedder = SemanticEmbed(cfg.semantic_dim, cfg.semantic_bottleneck or cfg.bottleneck_dim, h)
        self.blocks = nn.ModuleList([
            DualStreamBlock(h, cfg.num_heads, cfg.mlp_ratio, *self.block_dropouts(i))
            for i in range(cfg.depth)])
        self.pixel_head = FinalLayer(h, cfg.patch_size ** 2 * cfg.in_channels)
        self.semantic_head = FinalLayer(h, cfg.semantic_dim)
        init_jit_weights(self)
        # The official code leaves the semantic input projections at PyTorch's default init.
        self.s_embedder.proj1.reset_parameters()
        self.s_embedder.proj2.reset_parameters()

    def stream_shapes(self, batch: int) -> list[tuple[int, ...]]:
        return super().stream_shapes(batch) + [(batch, self.grid ** 2, self.cfg.semantic_dim)]

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, f: torch.Tensor,
                drop: torch.Tensor | None = None):
        cfg = self.cfg
        y_emb = self.y_embedder(y)                                    # (B, H)
        c = self.t_embedder(t) + y_emb                                # (B, H) shared by both streams
        xs = [self.x_embedder(x) + self.pos_embed,                    # (B, N, H) pixels
              self.s_embedder(f) + self.pos_embed]                    # (B, N, H) semantic
        rope = self.rope.tables()
        for i, block in enumerate(self.blocks):
            if self.uses_in_context and i == cfg.in_context_start:
                ctx = in_context_tokens(y_emb, self.in_context_posemb)   # (B, L, H), one copy each
                xs = [torch.cat([ctx, s], dim=1) for s in xs]
                rope = self.rope.tables(prefix=cfg.in_context_len)
            xs = block(xs, c, rope, drop)
        if self.uses_in_context:
            xs = [s[:, cfg.in_context_len:] for s in xs]
        x_pred = unpatchify(self.pixel_head(xs[0], c), cfg.patch_size, cfg.in_channels)
        return x_pred, self.semantic_head(xs[1], c)

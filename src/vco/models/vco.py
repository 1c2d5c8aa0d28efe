"""V-Co: the fully dual-stream co-denoising transformer (Lin et al. 2026, final recipe).

Pixels and semantic patch features (one token per pixel patch) are embedded separately, share
positions (sin-cos and RoPE), the conditioning c = t_emb + y_emb and the in-context class tokens,
and interact only through joint attention. Two x-prediction heads: pixels and features.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..config import ModelConfig
from ..nn.attention import Rope2D
from ..nn.dual_stream import DualStreamBlock
from ..nn.layers import (BottleneckPatchEmbed, FinalLayer, LabelEmbedder, TimestepEmbedder,
                         init_jit_weights, sincos_pos_embed_2d, unpatchify)
from .jit import in_context_tokens, middle_half


class SemanticEmbed(nn.Module):
    """Per-token C -> bottleneck (no bias) -> H, the official pair of 1x1 convs as linears."""

    def __init__(self, dim: int, bottleneck: int, hidden: int):
        super().__init__()
        self.proj1 = nn.Linear(dim, bottleneck, bias=False)
        self.proj2 = nn.Linear(bottleneck, hidden)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.proj2(self.proj1(f))


class VCo(nn.Module):
    """forward(x_t, t, y, f_t, drop) -> (x_pred (B, C, H, W), f_pred (B, N, semantic_dim)).

    ``drop`` (B,) bool marks the structurally unconditional samples: their pixel queries are
    masked from every semantic key in every block.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        h, p = cfg.hidden_size, cfg.patch_size
        if cfg.image_size % p:
            raise ValueError(f"image_size {cfg.image_size} is not a multiple of patch_size {p}")
        self.grid = cfg.image_size // p
        self.t_embedder = TimestepEmbedder(h)
        self.y_embedder = LabelEmbedder(cfg.num_classes, h)
        self.x_embedder = BottleneckPatchEmbed(p, cfg.in_channels, cfg.bottleneck_dim, h)
        self.s_embedder = SemanticEmbed(cfg.semantic_dim, cfg.semantic_bottleneck or cfg.bottleneck_dim, h)
        self.register_buffer("pos_embed", sincos_pos_embed_2d(h, self.grid))    # (1, N, H), fixed
        self.in_context_posemb = nn.Parameter(torch.randn(1, cfg.in_context_len, h) * 0.02)
        self.rope = Rope2D(h // cfg.num_heads, self.grid)
        self.blocks = nn.ModuleList([
            DualStreamBlock(h, cfg.num_heads, cfg.mlp_ratio,
                            cfg.attn_dropout if middle_half(i, cfg.depth) else 0.0,
                            cfg.proj_dropout if middle_half(i, cfg.depth) else 0.0)
            for i in range(cfg.depth)])
        self.pixel_head = FinalLayer(h, p * p * cfg.in_channels)
        self.semantic_head = FinalLayer(h, cfg.semantic_dim)
        init_jit_weights(self)
        # The official code leaves the semantic input projections at PyTorch's default init.
        self.s_embedder.proj1.reset_parameters()
        self.s_embedder.proj2.reset_parameters()

    @property
    def uses_in_context(self) -> bool:
        return self.cfg.in_context_len > 0 and self.cfg.in_context_start < self.cfg.depth

    def stream_shapes(self, batch: int) -> list[tuple[int, ...]]:
        c = self.cfg
        return [(batch, c.in_channels, c.image_size, c.image_size),
                (batch, self.grid ** 2, c.semantic_dim)]

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

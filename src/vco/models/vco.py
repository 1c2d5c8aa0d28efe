"""V-Co: the fully dual-stream co-denoising transformer (Lin et al. 2026, final recipe).

Pixels and semantic patch features (one token per pixel patch) are embedded separately, share
positions (sin-cos and RoPE), the conditioning c = t_emb + y_emb and the in-context class tokens,
and interact only through joint attention. Two x-prediction heads: pixels and features.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..config import ModelConfig
from .unconditional import build_unconditional
from ..nn.dual_stream import DualStreamBlock
from ..nn.layers import FinalLayer, init_jit_weights
from ..nn.pixel_heads import build_pixel_head
from .jit import PixelDiffusionTransformer, in_context_tokens


class SemanticEmbed(nn.Module):
    """Per-token C -> bottleneck (no bias) -> H, the official pair of 1x1 convs as linears."""

    def __init__(self, dim: int, bottleneck: int, hidden: int):
        super().__init__()
        self.proj1 = nn.Linear(dim, bottleneck, bias=False)
        self.proj2 = nn.Linear(bottleneck, hidden)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.proj2(self.proj1(f))


class CoDenoisingTransformer(PixelDiffusionTransformer):
    """What every co-denoising model adds to the pixel transformer: the semantic embedding, the
    two x-prediction heads and the definition of the unconditional branch (``cfg.uncond``).
    Subclasses build ``self.blocks``, then call ``init_weights()``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        h = cfg.hidden_size
        self.s_embedder = SemanticEmbed(cfg.semantic_dim, cfg.semantic_bottleneck or cfg.bottleneck_dim, h)
        self.pixel_head = build_pixel_head(cfg)
        self.semantic_head = FinalLayer(h, cfg.semantic_dim)
        self.unconditional = build_unconditional(cfg.uncond, cfg.semantic_dim)

    def init_weights(self) -> None:
        init_jit_weights(self)
        # The official code leaves the semantic input projections at PyTorch's default init.
        self.s_embedder.proj1.reset_parameters()
        self.s_embedder.proj2.reset_parameters()

    def stream_shapes(self, batch: int) -> list[tuple[int, ...]]:
        return super().stream_shapes(batch) + [(batch, self.grid ** 2, self.cfg.semantic_dim)]

    def embed(self, x, t, y, f, drop):
        """-> c (B, H), y_emb (B, H), pixel tokens (B, N, H), semantic tokens (B, N, H)."""
        y_emb = self.y_embedder(y)
        c = self.t_embedder(t) + y_emb                                # shared by both streams
        f = self.unconditional.semantic_input(f, drop)
        return c, y_emb, self.x_embedder(x) + self.pos_embed, self.s_embedder(f) + self.pos_embed

    def heads(self, pixel: torch.Tensor, semantic: torch.Tensor, c: torch.Tensor):
        """Token states (B, N, H) of each stream -> (x_pred (B, C, H, W), f_pred (B, N, C_s))."""
        return self.pixel_head(pixel, c), self.semantic_head(semantic, c)


class VCo(CoDenoisingTransformer):
    """forward(x_t, t, y, f_t, drop) -> (x_pred (B, C, H, W), f_pred (B, N, semantic_dim)).

    ``drop`` (B,) bool marks the samples whose semantic pathway is removed (the structurally
    unconditional ones); what that means is ``self.unconditional``'s choice.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.blocks = nn.ModuleList([
            DualStreamBlock(cfg.hidden_size, cfg.num_heads, cfg.mlp_ratio, *self.block_dropouts(i))
            for i in range(cfg.depth)])
        self.init_weights()

    def pixel_tokens(self, i: int, out) -> torch.Tensor:
        return super().pixel_tokens(i, out[0])

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, f: torch.Tensor,
                drop: torch.Tensor | None = None):
        cfg = self.cfg
        c, y_emb, pixel, semantic = self.embed(x, t, y, f, drop)
        xs = [pixel, semantic]                                        # (B, N, H) each
        rope = self.rope.tables()
        mask = self.unconditional.structural_mask(drop, self.grid ** 2)
        for i, block in enumerate(self.blocks):
            if self.uses_in_context and i == cfg.in_context_start:
                ctx = in_context_tokens(y_emb, self.in_context_posemb)   # (B, L, H), one copy each
                xs = [torch.cat([ctx, s], dim=1) for s in xs]
                rope = self.rope.tables(prefix=cfg.in_context_len)
                n = xs[0].shape[1]                                    # each stream's ctx on its side
                mask = self.unconditional.structural_mask(drop, n)
            xs = block(xs, c, rope, mask)
        if self.uses_in_context:
            xs = [s[:, cfg.in_context_len:] for s in xs]
        return self.heads(xs[0], xs[1], c)

"""JiT: the single-stream pixel diffusion transformer (Li & He 2025), x-prediction."""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn as nn

from ..config import ModelConfig
from ..nn.attention import JiTBlock, Rope2D
from ..nn.layers import (BottleneckPatchEmbed, LabelEmbedder, TimestepEmbedder, init_jit_weights,
                         sincos_pos_embed_2d)
from ..nn.pixel_heads import build_pixel_head
from .unconditional import LabelDropout


def in_context_tokens(y_emb: torch.Tensor, posemb: torch.Tensor) -> torch.Tensor:
    """(B, H) label embedding -> (B, L, H): L copies plus a learned positional embedding."""
    return y_emb.unsqueeze(1) + posemb


def middle_half(i: int, depth: int) -> bool:
    """JiT applies dropout only to blocks depth/4 .. 3*depth/4."""
    return depth // 4 <= i < depth // 4 * 3


class PixelDiffusionTransformer(nn.Module):
    """What JiT and V-Co share: conditioning (t, label), the pixel patch embedding, the fixed
    sin-cos position embedding, the in-context token embedding and the RoPE tables."""

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
        self.register_buffer("pos_embed", sincos_pos_embed_2d(h, self.grid))    # (1, N, H), fixed
        self.in_context_posemb = nn.Parameter(torch.randn(1, cfg.in_context_len, h) * 0.02)
        self.rope = Rope2D(h // cfg.num_heads, self.grid)

    def block_dropouts(self, i: int) -> tuple[float, float]:
        """(attention, projection) dropout of block i: JiT uses it in the middle half only."""
        cfg = self.cfg
        return (cfg.attn_dropout, cfg.proj_dropout) if middle_half(i, cfg.depth) else (0.0, 0.0)

    @property
    def uses_in_context(self) -> bool:
        return self.cfg.in_context_len > 0 and self.cfg.in_context_start < self.cfg.depth

    def stream_shapes(self, batch: int) -> list[tuple[int, ...]]:
        """Shapes of the states the sampler integrates, pixels first."""
        c = self.cfg
        return [(batch, c.in_channels, c.image_size, c.image_size)]

    def has_in_context(self, i: int) -> bool:
        """Whether the output of block i carries the in-context tokens (in front)."""
        return self.uses_in_context and i >= self.cfg.in_context_start

    def pixel_tokens(self, i: int, out) -> torch.Tensor:
        """The pixel tokens (B, N, H) in the output of ``self.blocks[i]``, in-context excluded."""
        return out[:, self.cfg.in_context_len:] if self.has_in_context(i) else out

    @contextmanager
    def tapping(self, i: int | None):
        """Collects the pixel tokens after block i of the next forward into the yielded dict
        (key "hidden"), for losses on the backbone's hidden state (REPA). i = None: nothing."""
        found: dict = {}
        if i is None:
            yield found
            return
        if not 0 <= i < len(self.blocks):
            raise ValueError(f"cannot tap block {i}: the model has {len(self.blocks)} blocks")
        handle = self.blocks[i].register_forward_hook(
            lambda _m, _inp, out: found.__setitem__("hidden", self.pixel_tokens(i, out)))
        try:
            yield found
        finally:
            handle.remove()


class JiT(PixelDiffusionTransformer):
    """forward(x_t, t, y) -> (x_pred, None); x_t: (B, C, H, W) noisy image, t: (B,), y: (B,).
    The semantic arguments of the co-denoising models' signature (f, drop) are ignored."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        h = cfg.hidden_size
        self.blocks = nn.ModuleList([JiTBlock(h, cfg.num_heads, cfg.mlp_ratio, *self.block_dropouts(i))
                                     for i in range(cfg.depth)])
        self.final_layer = build_pixel_head(cfg)
        self.unconditional = LabelDropout()
        init_jit_weights(self)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, f=None, drop=None):
        cfg = self.cfg
        y_emb = self.y_embedder(y)                          # (B, H)
        c = self.t_embedder(t) + y_emb                      # (B, H) shared conditioning
        h = self.x_embedder(x) + self.pos_embed             # (B, N, H)
        rope = self.rope.tables()
        for i, block in enumerate(self.blocks):
            if self.uses_in_context and i == cfg.in_context_start:
                h = torch.cat([in_context_tokens(y_emb, self.in_context_posemb), h], dim=1)
                rope = self.rope.tables(prefix=cfg.in_context_len)
            h = block(h, c, rope)
        if self.uses_in_context:
            h = h[:, cfg.in_context_len:]                   # strip before the head
        return self.final_layer(h, c), None                 # (B, C, H, W)

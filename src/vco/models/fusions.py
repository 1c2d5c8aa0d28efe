"""Table 1's alternatives to the dual-stream block: one shared trunk for both streams.

Each stream keeps its own embedding, its own ``stream_blocks`` JiT blocks after the trunk and its
own head; the ``depth - stream_blocks`` trunk blocks are shared. The official shared-JiT variants
have this layout ("K separate post-blocks per stream"), and with K = 2 at B/16 it reproduces the
official parameter counts exactly: direct addition 154,355,712, channel concat 156,717,312. The
fusion says how the trunk merges the two embedded streams and splits them again:

  direct_add      h = pixel + semantic;                  both streams continue from h
  channel_concat  h = Linear(2H->H)([pixel, semantic]);  Linear(H->2H)(h) split in two
  token_concat    h = [pixel ; semantic] along tokens, at shared positions; split in halves

Structural CFG: token_concat keeps the dual-stream token layout (each side its own copy of the
in-context tokens) and is masked exactly like the dual-stream model. direct_add and channel_concat
mix the streams before any attention, so there the semantic -> pixel pathway of a dropped sample
is removed at its only entrance: its semantic embedding is zeroed before the merge.
"""
from __future__ import annotations

import abc

import torch
import torch.nn as nn

from ..config import ModelConfig
from ..nn.attention import JiTBlock
from .jit import in_context_tokens
from .vco import CoDenoisingTransformer


class Fusion(nn.Module, metaclass=abc.ABCMeta):
    """merge (B, N, H) x 2 -> trunk sequence; split trunk sequence -> 2 x (B, ctx + N, H)."""
    separate_tokens = False         # the trunk keeps pixel and semantic tokens apart (maskable)

    def __init__(self, hidden: int):
        super().__init__()

    @abc.abstractmethod
    def merge(self, pixel: torch.Tensor, semantic: torch.Tensor) -> torch.Tensor:
        """The embedded streams (B, N, H) each -> the trunk's input sequence."""

    @abc.abstractmethod
    def split(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The trunk's output -> (pixel, semantic) sequences for the per-stream blocks."""

    def add_context(self, h, ctx):
        """Prepend the in-context tokens ctx (B, L, H) to the trunk sequence."""
        return torch.cat([ctx, h], dim=1)

    def rope(self, tables):
        """RoPE tables (cos, sin) of [ctx ; N grid tokens] -> those of the trunk sequence."""
        return tables

    def pixel_part(self, h, n):
        """The pixel tokens of a trunk sequence whose in-context tokens were stripped."""
        return h


class DirectAdd(Fusion):
    def merge(self, pixel, semantic):
        return pixel + semantic

    def split(self, h):
        return h, h


class ChannelConcat(Fusion):
    def __init__(self, hidden: int):
        super().__init__(hidden)
        self.fuse_in = nn.Linear(2 * hidden, hidden)
        self.fuse_out = nn.Linear(hidden, 2 * hidden)

    def merge(self, pixel, semantic):
        return self.fuse_in(torch.cat([pixel, semantic], dim=-1))

    def split(self, h):
        return tuple(self.fuse_out(h).chunk(2, dim=-1))


class TokenConcat(Fusion):
    """[pixel side ; semantic side] along tokens, each side [its in-context copy ; N grid tokens],
    both sides at the same positions (the dual-stream layout, with shared weights)."""
    separate_tokens = True

    def merge(self, pixel, semantic):
        return torch.cat([pixel, semantic], dim=1)                  # (B, 2N, H)

    def add_context(self, h, ctx):
        pixel, semantic = self.split(h)
        return torch.cat([ctx, pixel, ctx, semantic], dim=1)

    def rope(self, tables):
        cos, sin = tables
        return torch.cat([cos, cos]), torch.cat([sin, sin])

    def split(self, h):
        return tuple(h.chunk(2, dim=1))

    def pixel_part(self, h, n):
        return h[:, :n]


FUSIONS = {"direct_add": DirectAdd, "channel_concat": ChannelConcat, "token_concat": TokenConcat}


class SharedTrunk(CoDenoisingTransformer):
    """forward(x_t, t, y, f_t, drop) -> (x_pred, f_pred), like VCo, for the fusion ``cfg.fusion``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        k = cfg.stream_blocks
        if not 0 <= k < cfg.depth:
            raise ValueError(f"model.stream_blocks must be in 0..depth-1 ({cfg.depth - 1}), got {k}")
        if cfg.fusion not in FUSIONS:
            raise ValueError(f"unknown fusion '{cfg.fusion}' for a shared trunk: {', '.join(FUSIONS)}")
        self.fusion = FUSIONS[cfg.fusion](cfg.hidden_size)
        if self.unconditional.blocks_semantic and not self.fusion.separate_tokens:
            raise ValueError(f"uncond={cfg.uncond} needs separate token streams but fusion="
                             f"{cfg.fusion} merges them before the blocks: use dual_stream or token_concat")
        make = lambda i: JiTBlock(cfg.hidden_size, cfg.num_heads, cfg.mlp_ratio, *self.block_dropouts(i))
        trunk = cfg.depth - k
        self.blocks = nn.ModuleList([make(i) for i in range(trunk)])            # shared
        self.pixel_blocks = nn.ModuleList([make(i) for i in range(trunk, cfg.depth)])
        self.semantic_blocks = nn.ModuleList([make(i) for i in range(trunk, cfg.depth)])
        self.init_weights()

    def pixel_tokens(self, i: int, out) -> torch.Tensor:
        return self.fusion.pixel_part(super().pixel_tokens(i, out), self.grid ** 2)

    def _trunk_mask(self, drop, n_ctx: int):
        if not self.fusion.separate_tokens:
            return None
        return self.unconditional.structural_mask(drop, n_ctx + self.grid ** 2)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, f: torch.Tensor,
                drop: torch.Tensor | None = None):
        cfg = self.cfg
        c, y_emb, pixel, semantic = self.embed(x, t, y, f, drop)
        gate = self.unconditional.pixel_reads_semantics(drop, semantic)
        if gate is not None and not self.fusion.separate_tokens:
            semantic = semantic * gate                               # the only way in: closed
        h = self.fusion.merge(pixel, semantic)
        n_ctx = 0
        rope, mask = self.fusion.rope(self.rope.tables()), self._trunk_mask(drop, 0)
        ctx = lambda: in_context_tokens(y_emb, self.in_context_posemb)   # (B, L, H)
        for i, block in enumerate(self.blocks):
            if self.uses_in_context and i == cfg.in_context_start:
                h, n_ctx = self.fusion.add_context(h, ctx()), cfg.in_context_len
                rope = self.fusion.rope(self.rope.tables(prefix=n_ctx))
                mask = self._trunk_mask(drop, n_ctx)
            h = block(h, c, rope, mask)
        streams = self.fusion.split(h)                               # 2 x (B, n_ctx + N, H)
        rope = self.rope.tables(prefix=n_ctx)
        for j, pair in enumerate(zip(self.pixel_blocks, self.semantic_blocks)):
            if self.uses_in_context and len(self.blocks) + j == cfg.in_context_start:
                streams, n_ctx = [torch.cat([ctx(), s], dim=1) for s in streams], cfg.in_context_len
                rope = self.rope.tables(prefix=n_ctx)
            streams = [blk(s, c, rope) for blk, s in zip(pair, streams)]
        return self.heads(streams[0][:, n_ctx:], streams[1][:, n_ctx:], c)

"""The MMDiT-style dual-stream block: separate weights per stream, joint attention.

Each stream (pixels, semantic features) has its own norms, adaLN, qkv, q/k norms, output
projection and MLP; the only interaction is one attention over the concatenated sequence
[pixel tokens ; semantic tokens], in every block. Which pathways an unconditional sample loses
is the structural mask the model's CFG definition gives (vco.models.unconditional), applied
without a dense mask.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .attention import BlockLayers, StructuralMask, joint_attention
from .layers import modulate


class DualStreamBlock(nn.Module):
    """forward(xs, c, rope, mask) with xs = [pixel (B, Np, H), semantic (B, Ns, H)] and mask the
    optional structural mask over the joint sequence [pixel ; semantic]."""

    def __init__(self, hidden: int, num_heads: int, mlp_ratio: float = 4.0,
                 attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        self.pixel = BlockLayers(hidden, num_heads, mlp_ratio, attn_drop, proj_drop)
        self.semantic = BlockLayers(hidden, num_heads, mlp_ratio, attn_drop, proj_drop)
        self.attn_drop = attn_drop

    def forward(self, xs: list[torch.Tensor], c: torch.Tensor, rope, mask: StructuralMask | None):
        streams = (self.pixel, self.semantic)
        mods = [s.adaLN_modulation(c).chunk(6, dim=-1) for s in streams]
        qkv = [s.attn.qkv_heads(modulate(s.norm1(x), m[0], m[1]), rope)
               for s, x, m in zip(streams, xs, mods)]
        q, k, v = (torch.cat(parts, dim=2) for parts in zip(*qkv))      # (B, heads, Np + Ns, d)
        n_pixel = xs[0].shape[1]
        o = joint_attention(q, k, v, mask, self.attn_drop if self.training else 0.0)
        outs = (o[:, :, :n_pixel], o[:, :, n_pixel:])
        result = []
        for s, x, m, o_s in zip(streams, xs, mods, outs):
            shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = m
            x = x + gate_msa.unsqueeze(1) * s.attn.output(o_s)
            x = x + gate_mlp.unsqueeze(1) * s.mlp(modulate(s.norm2(x), shift_mlp, scale_mlp))
            result.append(x)
        return result

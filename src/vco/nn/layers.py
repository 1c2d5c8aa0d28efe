"""Backbone building blocks of JiT (Li & He 2025): norms, MLP, embedders, position codes, head.

Numerical conventions follow the released JiT/V-Co code, so that released weights run unchanged
(tests/test_interop.py checks them; "What is verified" in docs/official-checkpoints.md): raw t in
[0, 1] with cos-first frequencies, sin-first 2-D position embedding with the column in the first
half, (c, kh, kw) patch order at the input and (kh, kw, c) at the output, adaLN chunks
(shift, scale, gate) x (attention, MLP).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class RMSNorm(nn.Module):
    """y = w * x / sqrt(mean(x^2) + eps), computed in fp32 and cast back (as the official code)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight.float() * x).to(dtype)


class SwiGLU(nn.Module):
    """w3(SiLU(a) * g) with [a; g] = w12(x); hidden = int(int(mlp_ratio * dim) * 2 / 3)."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0, drop: float = 0.0):
        super().__init__()
        hidden = int(int(dim * mlp_ratio) * 2 / 3)
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, g = self.w12(x).chunk(2, dim=-1)
        return self.w3(self.drop(F.silu(a) * g))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x * (1 + scale) + shift, broadcast over tokens. x: (B, N, H), shift/scale: (B, H)."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class TimestepEmbedder(nn.Module):
    """t in [0, 1] (raw, not x1000) -> [cos(t w), sin(t w)] (256 wide) -> Linear-SiLU-Linear."""

    def __init__(self, hidden: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    @staticmethod
    def frequencies(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32,
                                                               device=t.device) / half)
        args = t.float()[:, None] * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, dim)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.frequencies(t, self.freq_dim))


class LabelEmbedder(nn.Module):
    """num_classes + 1 rows; the last row is the null (unconditional) class."""

    def __init__(self, num_classes: int, hidden: int):
        super().__init__()
        self.num_classes = num_classes
        self.embedding_table = nn.Embedding(num_classes + 1, hidden)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(y)


class BottleneckPatchEmbed(nn.Module):
    """p x p stride-p conv to a low rank (no bias), then a 1x1 conv to the hidden width.

    (B, C, H, W) -> (B, N, hidden), tokens row-major over the (H/p, W/p) grid.
    """

    def __init__(self, patch: int, in_ch: int, bottleneck: int, hidden: int):
        super().__init__()
        self.proj1 = nn.Conv2d(in_ch, bottleneck, patch, stride=patch, bias=False)
        self.proj2 = nn.Conv2d(bottleneck, hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj2(self.proj1(x)).flatten(2).transpose(1, 2)


class FinalLayer(nn.Module):
    """RMSNorm -> adaLN (shift, scale; no gate) -> zero-initialised Linear."""

    def __init__(self, hidden: int, out_dim: int):
        super().__init__()
        self.norm_final = RMSNorm(hidden)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))
        self.linear = nn.Linear(hidden, out_dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


def unpatchify(x: torch.Tensor, patch: int, channels: int) -> torch.Tensor:
    """(B, N, p*p*C) in (kh, kw, c) order -> (B, C, H, W)."""
    b, n, _ = x.shape
    g = int(math.isqrt(n))
    x = x.reshape(b, g, g, patch, patch, channels)
    return torch.einsum("bijkwc->bcikjw", x).reshape(b, channels, g * patch, g * patch)


def sincos_pos_embed_2d(hidden: int, grid: int) -> torch.Tensor:
    """Fixed 2-D sin-cos embedding (1, grid*grid, hidden), MAE convention.

    Token n = i*grid + j (row i, column j); the first hidden/2 dims encode the column,
    each half is [sin, cos]; computed in float64 like the reference.
    """
    def one_axis(dim: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1).astype(np.float64), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    rows, cols = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
    emb = np.concatenate([one_axis(hidden // 2, cols), one_axis(hidden // 2, rows)], axis=1)
    return torch.from_numpy(emb).float().unsqueeze(0)


def init_jit_weights(model: nn.Module) -> None:
    """JiT initialisation: Xavier-uniform linears (zero bias), patch convs as linears,
    N(0, 0.02) label table and t-MLP, zero adaLN modulation and final layer (all done here)."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, BottleneckPatchEmbed):
            for conv in (m.proj1, m.proj2):
                nn.init.xavier_uniform_(conv.weight.view(conv.weight.shape[0], -1))
                if conv.bias is not None:
                    nn.init.zeros_(conv.bias)
        elif isinstance(m, LabelEmbedder):
            nn.init.normal_(m.embedding_table.weight, std=0.02)
    for name, m in model.named_modules():
        if isinstance(m, TimestepEmbedder):
            nn.init.normal_(m.mlp[0].weight, std=0.02)
            nn.init.normal_(m.mlp[2].weight, std=0.02)
        elif name.rsplit(".", 1)[-1].startswith("adaLN_modulation"):
            nn.init.zeros_(m[-1].weight)
            nn.init.zeros_(m[-1].bias)
        elif isinstance(m, FinalLayer):
            nn.init.zeros_(m.linear.weight)
            nn.init.zeros_(m.linear.bias)

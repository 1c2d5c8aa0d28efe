"""Pixel heads: the last token states (B, N, H) -> the predicted clean image (B, C, H, W).

``model.pixel_head`` chooses one by name (a component: ``--set pixel_head=conv``,
``--set pixel_head.features=32``). ``linear`` is JiT's and V-Co's head and the default; its
parameters keep the released checkpoints' names. ``conv`` is an opt-in for small budgets: each
patch is still decoded on its own, but to ``features`` channels per pixel, and a convolution
across the whole image then maps them to pixels, so neighbouring patches can agree at their
border (U-ViT's extra 3 x 3 convolution after the patch decoder, Bao et al. 2023). An
under-trained linear head leaves the patch grid visible in its samples.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from ..components import choose
from .layers import FinalLayer, unpatchify


class LinearPixelHead(FinalLayer):
    """JiT's head: FinalLayer -> p*p*C values per token, unpatchified; patches are independent."""

    @dataclass
    class Options:
        pass

    def __init__(self, hidden: int, patch: int, channels: int, options: Options | None = None):
        super().__init__(hidden, patch * patch * channels)
        self.patch, self.channels = patch, channels

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return unpatchify(super().forward(x, c), self.patch, self.channels)   # (B, C, H, W)


@dataclass
class ConvHeadOptions:
    features: int = 16        # channels per pixel the patches decode to
    kernel: int = 3           # odd: the convolution keeps the image size


class ConvPixelHead(nn.Module):
    """FinalLayer -> ``features`` channels per pixel (unpatchified), then a k x k convolution
    across patch borders to C channels. The FinalLayer is zero-initialised as JiT's, so the
    model's first output is 0 as with the linear head; the convolution keeps PyTorch's default
    (random) weights, with zero bias, so that the gradient reaches every feature channel."""

    Options = ConvHeadOptions

    def __init__(self, hidden: int, patch: int, channels: int, options: ConvHeadOptions):
        super().__init__()
        if options.kernel % 2 != 1 or options.kernel < 1:
            raise ValueError(f"model.pixel_head.kernel must be odd and positive, got {options.kernel}")
        if options.features < 1:
            raise ValueError(f"model.pixel_head.features must be positive, got {options.features}")
        self.decode = LinearPixelHead(hidden, patch, options.features)
        self.mix = nn.Conv2d(options.features, channels, options.kernel, padding=options.kernel // 2)
        nn.init.zeros_(self.mix.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.mix(self.decode(x, c))                                      # (B, C, H, W)


PIXEL_HEADS: dict[str, Any] = {"linear": LinearPixelHead, "conv": ConvPixelHead}


def build_pixel_head(cfg) -> nn.Module:
    """The head ``cfg.pixel_head`` (a ModelConfig) names, decoding to ``cfg.in_channels``."""
    _, cls, options = choose(PIXEL_HEADS, cfg.pixel_head, "model.pixel_head", "linear")
    return cls(cfg.hidden_size, cfg.patch_size, cfg.in_channels, options)

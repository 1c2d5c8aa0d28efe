"""Pixel values: uint8 images in [0, 255] <-> the model's float range [-1, 1]."""
from __future__ import annotations

import torch


def to_model_range(images: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """uint8 images (any shape) -> float32 x / 127.5 - 1 in [-1, 1], on ``device`` if given
    (moved while still uint8, a quarter of the bytes of float32)."""
    if device is not None:
        images = images.to(device, non_blocking=True)
    return images.float() / 127.5 - 1.0  # not in place: .float() of a float32 input is the input


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float images -> uint8, round(clip(127.5 (x + 1), 0, 255)): the inverse of
    to_model_range up to rounding."""
    return (127.5 * (x.float() + 1)).clamp(0, 255).round().to(torch.uint8)

"""The interface every frozen semantic encoder of the co-denoising stream implements.

V-Co denoises pixels jointly with the patch features of a frozen encoder, so the feature grid has to
line up with the pixel token grid: token n = i * grid + j (row-major) of both streams describes the same
image region. The auxiliary losses (hybrid, drifting, perceptual) need a second, pooled view of the same
encoder through which gradients reach the generated image. Each encoder owns its preprocessing: callers
always pass images in [-1, 1].
"""
from __future__ import annotations

import abc
import hashlib

import torch
import torch.nn as nn
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_normalize(u: torch.Tensor) -> torch.Tensor:
    """(u - mean) / std per channel for u in [0, 1], (B, 3, H, W); keeps u's dtype and device."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=u.dtype, device=u.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=u.dtype, device=u.device).view(1, 3, 1, 1)
    return (u - mean) / std


def resize(images: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """Resize to size x size with align_corners=False and no antialias (the official convention).

    Skipped when the size already matches: interpolation at scale 1 is the identity anyway.
    """
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode=mode, align_corners=False, antialias=False)


def check_images(images: torch.Tensor) -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(
            f"expected images of shape (B, 3, H, W) in [-1, 1], got {tuple(images.shape)}; "
            "convert uint8 images with x / 127.5 - 1 and add a batch dimension"
        )


class SemanticEncoder(nn.Module, metaclass=abc.ABCMeta):
    """A frozen feature extractor with a patch view (co-denoising target) and a pooled view (losses).

    Subclasses set `feature_dim`, `pooled_dim` and `name`, build their network, then call `_freeze()`.
    The parameters never train: `requires_grad` is False and the module stays in eval mode even when a
    parent calls `.train()` (BatchNorm statistics and dropout must not change). Gradients still flow
    through the network to the *input* images, which the auxiliary losses rely on.
    """

    feature_dim: int  # C of patch_features
    pooled_dim: int  # C' of pooled_features
    name: str  # identifies architecture + weights source; recorded in stats files and caches

    def __init__(self, grid: int):
        super().__init__()
        if grid < 1:
            raise ValueError(f"grid must be a positive integer (image_size // patch), got {grid}")
        self.grid = grid

    @property
    def num_tokens(self) -> int:
        """N = grid * grid, the number of patch tokens (same as the pixel stream)."""
        return self.grid * self.grid

    @abc.abstractmethod
    def patch_features(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) in [-1, 1] -> (B, grid * grid, feature_dim), row-major tokens."""

    @abc.abstractmethod
    def pooled_features(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) in [-1, 1] -> (B, pooled_dim), differentiable w.r.t. images."""

    def perceptual_features(self, images: torch.Tensor) -> torch.Tensor:
        """The patch view used by the perceptual auxiliary loss: images (B, 3, H, W) in [-1, 1] ->
        (B, N', C), differentiable w.r.t. images.

        Defaults to `patch_features`; an encoder whose official loss reads other patch tokens (DINOv2:
        bilinear input, LayerNorm affine kept) overrides it.
        """
        return self.patch_features(images)

    def _freeze(self) -> None:
        for p in self.parameters():
            p.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> "SemanticEncoder":
        # Always eval: a frozen encoder in train mode would update BatchNorm running stats
        # (MobileNetV2) or apply dropout, silently changing the co-denoising targets.
        return super().train(False)

    def fingerprint(self) -> str:
        """Short hash of the weights, so caches and stats can tell a pretrained encoder from another.

        Hashes the first 4096 values of every parameter and buffer (cheap even for DINOv2-B, and any
        different checkpoint differs there).
        """
        h = hashlib.sha1(self.name.encode())
        for key, t in self.state_dict().items():
            h.update(key.encode())
            h.update(t.detach().flatten()[:4096].float().cpu().numpy().tobytes())
        return h.hexdigest()[:16]

    def extra_repr(self) -> str:
        return f"name={self.name!r}, grid={self.grid}, feature_dim={self.feature_dim}, pooled_dim={self.pooled_dim}"

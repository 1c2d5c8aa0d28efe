"""FD-DINOv2 (Stein et al. 2023, "Exposing flaws of generative model evaluation metrics"): the
Frechet distance in the feature space of DINOv2 ViT-L/14 instead of Inception's.

Features as that paper's evaluation code computes them: the image in [0, 1] resized to 224 x 224
(PIL's bicubic, clamped back to [0, 1] like an 8-bit image), ImageNet
mean/std, the network, and the CLS token after the final LayerNorm (1024 values for ViT-L/14;
``pooler_output`` of HF ``Dinov2Model``). The weights are the user's: a local folder saved with
``save_pretrained`` or a hub id (``facebook/dinov2-large``), read with HF transformers.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..semantic.base import imagenet_normalize
from .inception import _as_uint8_nchw, batched

DEFAULT_FD_DINOV2 = "facebook/dinov2-large"
INPUT_SIZE = 224


def preprocess(images, device, size: int = INPUT_SIZE) -> torch.Tensor:
    """uint8 (B, 1|3, H, W) -> float32 (B, 3, size, size), ImageNet-normalised."""
    u = _as_uint8_nchw(images).to(device).float() / 255.0
    if u.shape[-2:] != (size, size):
        # antialias=True is PIL's bicubic (a = -0.5, widened when shrinking), which the paper's
        # code applies to PIL images; plain torch bicubic (a = -0.75) differs
        u = F.interpolate(u, size=(size, size), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    return imagenet_normalize(u)


class DINOv2Features:
    """``extract(uint8 images) -> float64 (N, hidden)``: CLS tokens of a frozen HF DINOv2."""

    def __init__(self, source: str = DEFAULT_FD_DINOV2, device="cpu", model=None):
        from ..semantic.dinov2 import import_transformers
        self.device, self.source = torch.device(device), source
        if model is None:
            try:
                model = import_transformers().AutoModel.from_pretrained(source)
            except OSError as e:
                raise FileNotFoundError(
                    f"cannot load DINOv2 weights from '{source}' ({e}). Pass --fd-dinov2 a local folder "
                    f"saved with save_pretrained, or a hub id with the network or HF cache available "
                    f"(e.g. {DEFAULT_FD_DINOV2})") from None
        self.model = model.to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.inference_mode()
    def features(self, images) -> torch.Tensor:
        out = self.model(pixel_values=preprocess(images, self.device))
        return out.pooler_output.float()                       # (B, hidden): the normed CLS token

    def extract(self, images, batch_size: int = 32, progress: bool = False) -> np.ndarray:
        feats = [self.features(b).cpu().double().numpy() for b in batched(images, batch_size, progress, "dinov2")]
        if not feats:
            raise ValueError("no images to extract DINOv2 features from")
        return np.concatenate(feats)

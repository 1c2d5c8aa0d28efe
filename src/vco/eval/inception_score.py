"""Inception Score from the user's local weights: the 2015 Inception-v3 with its 1008-way head.

The offline FID graph (vco.eval.inception) has no classifier. The common PyTorch FID packages
ship the same TF 2015-12-05 network, head included, as a plain state dict
(``pt_inception-2015-12-05-6726825d.pth``): torchvision's Inception-v3 layout (``Conv2d_1a_3x3``
... ``Mixed_7c``, ``fc``) with 1008 classes and the FID variants of its blocks (average pools that
do not count the padding; the last block's pool branch a max pool), BatchNorm eps 1e-3.
``InceptionClassifier.from_file`` builds that network here (torchvision is not needed), loads
the file with ``weights_only=True`` after checking every key and shape, and gives the logits
of uint8 images; the input is prepared as for the FID graph (resize to 299 the TF way, then
(x - 128) / 128). IS = exp(E_x KL(p(y|x) || p(y))) over the 1008-way softmax, 10 splits, mean and
standard deviation over the splits (as the ADM evaluation suite reports it).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .inception import batched, preprocess

NUM_LOGITS = 1008
WEIGHTS_ENV = "VCO_INCEPTION_CLASSIFIER"


class Conv(nn.Module):
    """Conv (no bias) -> BatchNorm (eps 1e-3) -> ReLU: torchvision's BasicConv2d."""

    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def avg_pool(x):
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class BlockA(nn.Module):           # Mixed_5b..5d: 224 + pool_features channels out
    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = Conv(cin, 64, 1)
        self.branch5x5_1, self.branch5x5_2 = Conv(cin, 48, 1), Conv(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = Conv(cin, 64, 1)
        self.branch3x3dbl_2, self.branch3x3dbl_3 = Conv(64, 96, 3, padding=1), Conv(96, 96, 3, padding=1)
        self.branch_pool = Conv(cin, pool_features, 1)

    def forward(self, x):
        return torch.cat([self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
                          self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          self.branch_pool(avg_pool(x))], 1)


class BlockB(nn.Module):           # Mixed_6a: 17 x 17, 768 channels out
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = Conv(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = Conv(cin, 64, 1)
        self.branch3x3dbl_2, self.branch3x3dbl_3 = Conv(64, 96, 3, padding=1), Conv(96, 96, 3, stride=2)

    def forward(self, x):
        return torch.cat([self.branch3x3(x), self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          F.max_pool2d(x, 3, stride=2)], 1)


class BlockC(nn.Module):           # Mixed_6b..6e: factorised 7 x 7 convolutions
    def __init__(self, cin: int, c7: int):
        super().__init__()
        self.branch1x1 = Conv(cin, 192, 1)
        self.branch7x7_1 = Conv(cin, c7, 1)
        self.branch7x7_2 = Conv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = Conv(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = Conv(cin, c7, 1)
        self.branch7x7dbl_2 = Conv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = Conv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = Conv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = Conv(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = Conv(cin, 192, 1)

    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for k in range(1, 6):
            d = getattr(self, f"branch7x7dbl_{k}")(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(avg_pool(x))], 1)


class BlockD(nn.Module):           # Mixed_7a: 8 x 8, 1280 channels out
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1, self.branch3x3_2 = Conv(cin, 192, 1), Conv(192, 320, 3, stride=2)
        self.branch7x7x3_1 = Conv(cin, 192, 1)
        self.branch7x7x3_2 = Conv(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = Conv(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = Conv(192, 192, 3, stride=2)

    def forward(self, x):
        b7 = x
        for k in range(1, 5):
            b7 = getattr(self, f"branch7x7x3_{k}")(b7)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, 3, stride=2)], 1)


class BlockE(nn.Module):           # Mixed_7b, 7c: 2048 channels out; the last one pools by max
    def __init__(self, cin: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = Conv(cin, 320, 1)
        self.branch3x3_1 = Conv(cin, 384, 1)
        self.branch3x3_2a = Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = Conv(cin, 448, 1)
        self.branch3x3dbl_2 = Conv(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = Conv(cin, 192, 1)

    def forward(self, x):
        a = self.branch3x3_1(x)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pool = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else avg_pool(x)
        return torch.cat([self.branch1x1(x), self.branch3x3_2a(a), self.branch3x3_2b(a),
                          self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d), self.branch_pool(pool)], 1)


class InceptionV3FID(nn.Module):
    """(B, 3, 299, 299) in [-1, 1] -> (pool3 features (B, 2048), logits (B, 1008))."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = Conv(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = Conv(32, 32, 3)
        self.Conv2d_2b_3x3 = Conv(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = Conv(64, 80, 1)
        self.Conv2d_4a_3x3 = Conv(80, 192, 3)
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = BlockA(192, 32), BlockA(256, 64), BlockA(288, 64)
        self.Mixed_6a = BlockB(288)
        self.Mixed_6b, self.Mixed_6c = BlockC(768, 128), BlockC(768, 160)
        self.Mixed_6d, self.Mixed_6e = BlockC(768, 160), BlockC(768, 192)
        self.Mixed_7a = BlockD(768)
        self.Mixed_7b, self.Mixed_7c = BlockE(1280, max_pool=False), BlockE(2048, max_pool=True)
        self.fc = nn.Linear(2048, NUM_LOGITS)

    def forward(self, x):
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        pool = F.adaptive_avg_pool2d(x, 1).flatten(1)                     # (B, 2048)
        return pool, self.fc(pool)                                        # (B, 1008)


def weights_mismatch(state: dict, model: nn.Module) -> list[str]:
    """Why ``state`` is not the layout of ``model`` (BatchNorm's num_batches_tracked may be absent)."""
    from ..train.checkpoint import state_mismatch
    return state_mismatch(model.state_dict(), state, optional=("num_batches_tracked",))


class InceptionClassifier:
    """The 2015 Inception with its head, from a local ``pt_inception-2015-12-05`` state dict."""

    def __init__(self, net: InceptionV3FID, device, path: Path):
        self.net, self.device, self.path = net.to(device).eval(), torch.device(device), path

    @classmethod
    def from_file(cls, path: str | os.PathLike | None = None, device="cpu") -> "InceptionClassifier":
        path = Path(path or os.environ.get(WEIGHTS_ENV, ""))
        if not path.is_file():
            raise FileNotFoundError(
                f"Inception classifier weights not found at '{path}': pass --inception-weights "
                f"(or set ${WEIGHTS_ENV}) to pt_inception-2015-12-05-6726825d.pth, the state dict "
                f"the PyTorch FID packages download")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"{path} is not a PyTorch state dict that loads with weights_only=True ({e})") from None
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        net = InceptionV3FID()
        lines = weights_mismatch(state, net) if isinstance(state, dict) else ["not a dict of tensors"]
        if lines:
            raise ValueError(f"{path} is not the 2015 Inception-v3 with its 1008-way head "
                             f"(pt_inception-2015-12-05 layout):\n  " + "\n  ".join(lines))
        net.load_state_dict(state, strict=False)       # strictness checked above
        for p in net.parameters():
            p.requires_grad_(False)
        return cls(net, device, path)

    @torch.inference_mode()
    def logits(self, images) -> torch.Tensor:
        """uint8 (B, 1|3, H, W) -> (B, 1008) float32 logits."""
        return self.net(preprocess(images, self.device))[1].float()

    def extract_logits(self, images, batch_size: int = 32, progress: bool = False) -> np.ndarray:
        out = [self.logits(b).cpu().double().numpy() for b in batched(images, batch_size, progress, "IS")]
        if not out:
            raise ValueError("no images to classify")
        return np.concatenate(out)

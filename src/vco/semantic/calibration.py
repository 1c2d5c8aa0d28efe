"""Calibrating semantic features against pixels: RAE variance normalisation and RMS rescaling.

V-Co noises the semantic stream with the same t and unit-variance noise as the pixels, so both streams
only see the same signal-to-noise ratio if their signals have the same scale:

    normalize(f) = (f - mean) / sqrt(var + eps) * scale       (mean is None in V-Co: no subtraction)

`var` (and the optional `mean`) are per (token position, channel) statistics over the data (RAE's
`stat.pt`); `scale` = RMS(pixels) / RMS(variance-normalised features), 0.485 for DINOv2-B on ImageNet.

Layout: statistics are stored as (N, C), matching patch tokens (B, N, C) with row-major n = i * G + j.
RAE stores (C, G, G); `from_rae_layout` / `to_rae_layout` convert.
"""
from __future__ import annotations

import abc
import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import torch

from ..components import choose, resolved
from ..diffusion.flow import SameTime
from ..files import atomic_write

FORMAT = "vco.feature_stats.v1"


def from_rae_layout(t: torch.Tensor) -> torch.Tensor:
    """(C, G, G) -> (G*G, C), token n = i * G + j at (h = i, w = j)."""
    if t.ndim != 3 or t.shape[1] != t.shape[2]:
        raise ValueError(f"RAE statistics must have shape (C, G, G), got {tuple(t.shape)}")
    return t.permute(1, 2, 0).reshape(t.shape[1] * t.shape[2], t.shape[0])


def to_rae_layout(t: torch.Tensor) -> torch.Tensor:
    """(G*G, C) -> (C, G, G), the inverse of from_rae_layout."""
    grid = math.isqrt(t.shape[0])
    if t.ndim != 2 or grid * grid != t.shape[0]:
        raise ValueError(f"statistics must have shape (G*G, C) with a square token count, got {tuple(t.shape)}")
    return t.reshape(grid, grid, t.shape[1]).permute(2, 0, 1).contiguous()


@dataclass(frozen=True, eq=False)  # eq on tensors would be ambiguous
class FeatureStats:
    """Per-(position, channel) statistics of raw patch features plus the global RMS scale.

    var: (N, C) float32; mean: (N, C) or None (no subtraction, as V-Co); scale: the RMS factor.
    pixel_rms / feature_rms are the measured data RMS of pixels and of the variance-normalised
    (unscaled) features when the statistics were computed here; None for imported files.
    """

    var: torch.Tensor
    mean: torch.Tensor | None = None
    scale: float = 1.0
    eps: float = 1e-5
    encoder: str = ""
    pixel_rms: float | None = None
    feature_rms: float | None = None

    def __post_init__(self):
        if self.var.ndim != 2:
            raise ValueError(f"var must be (N, C), got {tuple(self.var.shape)}; use from_rae_layout for (C, G, G)")
        if self.mean is not None and self.mean.shape != self.var.shape:
            raise ValueError(f"mean {tuple(self.mean.shape)} and var {tuple(self.var.shape)} shapes differ")

    @property
    def num_tokens(self) -> int:
        return self.var.shape[0]

    @property
    def feature_dim(self) -> int:
        return self.var.shape[1]

    def check_matches(self, num_tokens: int, feature_dim: int) -> None:
        """Raise if these statistics were made for a different grid or feature width."""
        if (num_tokens, feature_dim) != tuple(self.var.shape):
            raise ValueError(
                f"feature statistics are for (N, C) = {tuple(self.var.shape)} but the features are "
                f"({num_tokens}, {feature_dim}); recompute them for this encoder and grid (vco stats)"
            )

    def with_scale(self, scale: float) -> "FeatureStats":
        """Same statistics, another RMS factor (e.g. PAPER_DINOV2_B_SCALE, or 1.0 for 'no rescaling')."""
        return dataclasses.replace(self, scale=float(scale))

    def to(self, device: torch.device | str) -> "FeatureStats":
        mean = None if self.mean is None else self.mean.to(device)
        return dataclasses.replace(self, var=self.var.to(device), mean=mean)

    def normalize(self, features: torch.Tensor) -> torch.Tensor:
        """(B, N, C) raw features -> calibrated features, same shape and dtype."""
        self.check_matches(features.shape[-2], features.shape[-1])
        var = self.var.to(features.device, torch.float32)
        f = features.float()
        if self.mean is not None:
            f = f - self.mean.to(features.device, torch.float32)
        return (f * torch.rsqrt(var + self.eps) * self.scale).to(features.dtype)


class StatsAccumulator:
    """Streaming per-(position, channel) mean/variance of features and RMS of pixels, in float64.

    Batches are merged with Chan et al.'s parallel update (batch mean and M2, then combine), which stays
    accurate where a running sum of squares would cancel catastrophically.
    """

    def __init__(self):
        self.count = 0
        self.mean: torch.Tensor | None = None  # (N, C) float64
        self.m2: torch.Tensor | None = None  # (N, C) float64, sum of squared deviations
        self.pixel_sq_sum = 0.0
        self.pixel_count = 0

    def update(self, features: torch.Tensor, images: torch.Tensor | None = None) -> None:
        """features (B, N, C) raw; images (B, 3, H, W) in [-1, 1] of the same samples (for the pixel RMS)."""
        f = features.detach().to(torch.float64).cpu()
        b = f.shape[0]
        b_mean = f.mean(0)
        b_m2 = ((f - b_mean) ** 2).sum(0)
        if self.mean is None:
            self.mean, self.m2 = b_mean, b_m2
        else:
            if b_mean.shape != self.mean.shape:
                raise ValueError(f"feature shape changed from {tuple(self.mean.shape)} to {tuple(b_mean.shape)}")
            total = self.count + b
            delta = b_mean - self.mean
            self.mean = self.mean + delta * (b / total)
            self.m2 = self.m2 + b_m2 + delta**2 * (self.count * b / total)
        self.count += b
        if images is not None:
            self.pixel_sq_sum += images.detach().to(torch.float64).pow(2).sum().item()
            self.pixel_count += images.numel()

    def finalize(self, subtract_mean: bool = False, scale: float | None = None, eps: float = 1e-5,
                 encoder: str = "") -> FeatureStats:
        """Population variance (ddof 0) and scale = RMS(pixels) / RMS(normalised features).

        The feature RMS follows from the moments without a second pass:
        E[((f - m?) / sqrt(var + eps))^2] = (var + [mean^2 if no subtraction]) / (var + eps), averaged over
        (N, C). `scale` overrides the measured ratio (the measured RMS values are still recorded).
        """
        if self.count == 0:
            raise ValueError("no feature batches were seen; pass a non-empty iterable of image batches")
        var = self.m2 / self.count
        second_moment = var if subtract_mean else var + self.mean**2
        feature_rms = math.sqrt((second_moment / (var + eps)).mean().item())
        pixel_rms = math.sqrt(self.pixel_sq_sum / self.pixel_count) if self.pixel_count else None
        if scale is None:
            if pixel_rms is None:
                raise ValueError("cannot measure the RMS scale without images; pass images to update() or scale=")
            scale = pixel_rms / feature_rms
        return FeatureStats(
            var=var.float(),
            mean=self.mean.float() if subtract_mean else None,
            scale=float(scale),
            eps=eps,
            encoder=encoder,
            pixel_rms=pixel_rms,
            feature_rms=feature_rms,
        )


@torch.no_grad()
def compute_stats(encoder, image_batches: Iterable[torch.Tensor], *, subtract_mean: bool = False,
                  scale: float | None = None, eps: float = 1e-5,
                  device: torch.device | str | None = None) -> FeatureStats:
    """One pass over image batches (B, 3, H, W) in [-1, 1]: feature statistics and the RMS scale.

    The pixel RMS is measured on the same images, so after `normalize` the features' RMS on this data
    equals the pixels' RMS (unless `scale` overrides it, e.g. scale=PAPER_DINOV2_B_SCALE).
    Include flipped copies in the batches if training uses flips.
    """
    acc = StatsAccumulator()
    for images in image_batches:
        if device is not None:
            images = images.to(device)
        acc.update(encoder.patch_features(images), images)
    return acc.finalize(subtract_mean=subtract_mean, scale=scale, eps=eps, encoder=getattr(encoder, "name", ""))


def save_stats(stats: FeatureStats, path: str | os.PathLike) -> None:
    """Write a safetensors file: tensors var (N, C) [, mean (N, C)], scale (scalar); metadata describes the rest."""
    from safetensors.torch import save_file

    tensors = {"var": stats.var.float().contiguous().cpu(), "scale": torch.tensor(stats.scale, dtype=torch.float64)}
    if stats.mean is not None:
        tensors["mean"] = stats.mean.float().contiguous().cpu()
    meta = {
        "format": FORMAT,
        "layout": "(N, C), token n = i * G + j",
        "encoder": stats.encoder,
        "eps": repr(stats.eps),
        "pixel_rms": json.dumps(stats.pixel_rms),
        "feature_rms": json.dumps(stats.feature_rms),
    }
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def _load_ours(path: Path) -> FeatureStats:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        keys = set(f.keys())
        if meta.get("format") != FORMAT or not {"var", "scale"} <= keys:
            raise ValueError(f"{path} is a safetensors file but not vco feature statistics (keys {sorted(keys)})")
        return FeatureStats(
            var=f.get_tensor("var"),
            mean=f.get_tensor("mean") if "mean" in keys else None,
            scale=f.get_tensor("scale").item(),
            eps=float(meta.get("eps", "1e-5")),
            encoder=meta.get("encoder", ""),
            pixel_rms=json.loads(meta.get("pixel_rms", "null")),
            feature_rms=json.loads(meta.get("feature_rms", "null")),
        )


def _load_rae(path: Path) -> FeatureStats:
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or "var" not in obj:
        raise ValueError(
            f"{path} is not an RAE stat.pt: expected a dict with 'var' (C, G, G) and 'mean' (None or (C, G, G))"
        )
    mean = obj.get("mean")
    return FeatureStats(
        var=from_rae_layout(obj["var"].float()),
        mean=None if mean is None else from_rae_layout(mean.float()),
        scale=1.0,
        encoder=f"rae:{path.name}",
    )


def load_stats(path: str | os.PathLike, scale: float | None = None) -> FeatureStats:
    """Read our safetensors statistics or RAE's `stat.pt` (torch.load, weights_only).

    RAE files carry no RMS factor: they load with scale 1.0; V-Co uses scale=PAPER_DINOV2_B_SCALE with
    RAE's DINOv2-B statistics. `scale` overrides the stored value for either format.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"feature statistics not found: {path}")
    with open(path, "rb") as fh:
        head = fh.read(16)
    # A safetensors file starts with a little-endian u64 header length followed by '{'.
    stats = _load_ours(path) if head[8:9] == b"{" else _load_rae(path)
    return stats if scale is None else stats.with_scale(scale)


# --------------------------------------------------------------------------- Table 4
# How the measured RMS ratio s = RMS(pixels) / RMS(normalised features) is used to give both
# streams the same signal-to-noise ratio (config ``semantic.calibration``, a component: a name and
# its options). Each calibration answers two questions: by what the features are multiplied, and
# at which noise level (clock) the semantic stream runs.

class ShiftedTime:
    """t' = a t / (1 + (a - 1) t): the noise level at which unscaled features have the SNR that
    features scaled by a have at t, since t' / (1 - t') = a t / (1 - t). Maps 0 -> 0, 1 -> 1."""

    def __init__(self, alpha: float):
        self.alpha = float(alpha)

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        return self.alpha * t / (1 + (self.alpha - 1) * t)


@dataclass
class NoOptions:
    pass


@dataclass
class TimeShiftOptions:
    alpha: Optional[float] = None     # the shift's a; None: the measured RMS ratio s


class Calibration(abc.ABC):
    """Base: features multiplied by ``feature_scale()``, semantic stream on ``stream_time()``."""
    Options = NoOptions

    def __init__(self, ratio: float, options=None):
        self.ratio = float(ratio)
        self.options = options if options is not None else self.Options()

    @abc.abstractmethod
    def feature_scale(self) -> float:
        """What the variance-normalised features are multiplied by."""

    def stream_time(self):
        return SameTime()

    def clock_needs_ratio(self) -> bool:
        """Whether the sampler needs the measured ratio to rebuild this calibration's clock."""
        return False


class RMSScaling(Calibration):
    """V-Co's choice: features multiplied by s; the semantic stream is noised at t."""

    def feature_scale(self) -> float:
        return self.ratio


class NoCalibration(Calibration):
    """Features only variance-normalised (scale 1), noised at t: mismatched SNR."""

    def feature_scale(self) -> float:
        return 1.0


class TimeShift(Calibration):
    """Features unscaled; the semantic stream is noised at t' = ShiftedTime(alpha)(t), in training
    (input, target and predicted velocity alike) and in sampling. alpha defaults to s."""
    Options = TimeShiftOptions

    def feature_scale(self) -> float:
        return 1.0

    def stream_time(self):
        alpha = self.options.alpha if self.options.alpha is not None else self.ratio
        return ShiftedTime(alpha)

    def clock_needs_ratio(self) -> bool:
        return self.options.alpha is None


CALIBRATIONS = {"rms": RMSScaling, "none": NoCalibration, "time_shift": TimeShift}


def resolved_calibration(spec) -> dict:
    """semantic.calibration with every option of its calibration spelled out."""
    return resolved(CALIBRATIONS, spec, "semantic.calibration", "rms")


def build_calibration(spec, ratio: float | None) -> Calibration:
    """The calibration ``spec`` names (a name or {name, options}) for the measured ratio s."""
    name, cls, options = choose(CALIBRATIONS, spec, "semantic.calibration", "rms")
    if ratio is None or not ratio > 0:
        raise ValueError(f"semantic.calibration={name} needs the RMS ratio semantic.scale > 0 "
                         f"(measured by `vco stats` or at the start of training), got {ratio}")
    return cls(float(ratio), options)

"""The JiT diffusion process: logit-normal t, linear noising, x-prediction with the v-loss.

Convention: t = 1 is clean data, t = 0 is pure noise; z_t = t * x + (1 - t) * noise_scale * eps.
The network predicts the clean sample x_hat; velocities are v = (x - z) / max(1 - t, t_eps).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..config import DiffusionConfig
from .randomness import as_stream


def expand_like(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, ..., 1) broadcastable against x."""
    return t.reshape(-1, *([1] * (x.dim() - 1)))


def sample_t(n: int, cfg: DiffusionConfig, generator=None, device: torch.device | str = "cpu") -> torch.Tensor:
    """t = sigmoid(N(P_mean, P_std)): (n,), skewed toward noise for P_mean < 0. ``generator``: a
    torch.Generator or a stream of vco.diffusion.randomness."""
    return torch.sigmoid(as_stream(generator, device).randn((n,)) * cfg.P_std + cfg.P_mean)


def add_noise(x: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, noise_scale: float = 1.0):
    """z_t = t * x + (1 - t) * noise_scale * eps."""
    t = expand_like(t, x)
    return t * x + (1 - t) * noise_scale * eps


def velocity(x_pred: torch.Tensor, z: torch.Tensor, t: torch.Tensor, t_eps: float) -> torch.Tensor:
    """v = (x_pred - z) / max(1 - t, t_eps)."""
    return (x_pred - z) / expand_like((1 - t).clamp(min=t_eps), z)


def v_loss(x_pred: torch.Tensor, x: torch.Tensor, z: torch.Tensor, t: torch.Tensor,
           t_eps: float) -> torch.Tensor:
    """Per-sample v-loss (B,): mean over all non-batch dims of (v - v_hat)^2, in fp32."""
    err = velocity(x.float(), z.float(), t, t_eps) - velocity(x_pred.float(), z.float(), t, t_eps)
    return err.pow(2).flatten(1).mean(1)


def masked_mean(per_sample: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean of per-sample losses over the kept samples only; 0 when none is kept."""
    keep = keep.to(per_sample.dtype)
    return (per_sample * keep).sum() / keep.sum().clamp(min=1)


def drop_labels(y: torch.Tensor, drop: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Replace the labels of dropped samples by the null class (index num_classes)."""
    return torch.where(drop, torch.full_like(y, num_classes), y)


@dataclass
class Drops:
    """Which samples of a training batch lose what, for classifier-free guidance."""
    label: torch.Tensor       # (B,) bool: the label is replaced by the null class
    semantic: torch.Tensor    # (B,) bool: the semantic pathway is removed (and L_sem ignores it)


class SameTime:
    """A stream's clock: its noise level as a function of the shared t, here t itself. (The
    time-shift calibration gives the semantic stream its own t'.)"""

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        return t


@dataclass
class Noised:
    """A batch placed on its noising path: what the model sees and what the losses compare."""
    t: torch.Tensor                           # (B,) noise level, 1 = clean
    z: torch.Tensor                           # (B, C, H, W) noisy images
    y_in: torch.Tensor                        # (B,) labels, the null class where dropped
    drops: Drops                              # which samples drop their label / semantics
    t_f: Optional[torch.Tensor] = None        # (B,) the semantic stream's clock
    z_f: Optional[torch.Tensor] = None        # (B, N, C_s) noisy semantic features


def noise_batch(x: torch.Tensor, y: torch.Tensor, f: torch.Tensor | None, drops: Drops,
                cfg: DiffusionConfig, num_classes: int, rng, semantic_time=SameTime()) -> Noised:
    """Noise clean images x (B, C, H, W) and, for co-denoising, clean semantic features f
    (B, N, C_s) at one shared t ~ logit-normal, each with its own Gaussian noise; null the labels
    of the label-dropped samples. ``drops`` were drawn first from ``rng``; the draws follow in the
    official order: t, pixel noise, semantic noise."""
    b = x.shape[0]
    t = sample_t(b, cfg, rng, x.device)
    z = add_noise(x, t, rng.randn(x.shape, x.dtype), cfg.noise_scale)
    noised = Noised(t, z, drop_labels(y, drops.label, num_classes), drops)
    if f is not None:
        noised.t_f = semantic_time(t)
        noised.z_f = add_noise(f, noised.t_f, rng.randn(f.shape, f.dtype), cfg.noise_scale)
    return noised

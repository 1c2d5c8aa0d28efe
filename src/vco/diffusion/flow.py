"""The JiT diffusion process: logit-normal t, linear noising, x-prediction with the v-loss.

Convention: t = 1 is clean data, t = 0 is pure noise; z_t = t * x + (1 - t) * noise_scale * eps.
The network predicts the clean sample x_hat; velocities are v = (x - z) / max(1 - t, t_eps).
"""
from __future__ import annotations

import torch

from ..config import DiffusionConfig


def expand_like(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, ..., 1) broadcastable against x."""
    return t.reshape(-1, *([1] * (x.dim() - 1)))


def sample_t(n: int, cfg: DiffusionConfig, generator: torch.Generator | None = None,
             device: torch.device | str = "cpu") -> torch.Tensor:
    """t = sigmoid(N(P_mean, P_std)): (n,), skewed toward noise for P_mean < 0."""
    return torch.sigmoid(torch.randn(n, generator=generator, device=device) * cfg.P_std + cfg.P_mean)


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


def training_loss(model, x: torch.Tensor, y: torch.Tensor, cfg: DiffusionConfig,
                  num_classes: int, generator: torch.Generator | None = None) -> dict:
    """One JiT training objective on clean images x (B, C, H, W) in [-1, 1] and labels y (B,).

    Random draws in the official order: CFG drop, t, noise. Returns {"loss": scalar, "pix": ...}.
    """
    b, dev = x.shape[0], x.device
    drop = torch.rand(b, generator=generator, device=dev) < cfg.label_drop_prob
    t = sample_t(b, cfg, generator, dev)
    eps = torch.randn(x.shape, generator=generator, device=dev, dtype=x.dtype)
    z = add_noise(x, t, eps, cfg.noise_scale)
    x_pred, _ = model(z, t, drop_labels(y, drop, num_classes))
    pix = v_loss(x_pred, x, z, t, cfg.t_eps).mean()
    return {"loss": pix, "pix": pix.detach()}

"""The JiT diffusion process: logit-normal t, linear noising, x-prediction with the v-loss.

Convention: t = 1 is clean data, t = 0 is pure noise; z_t = t * x + (1 - t) * noise_scale * eps.
The network predicts the clean sample x_hat; velocities are v = (x - z) / max(1 - t, t_eps).
"""
from __future__ import annotations

from contextlib import nullcontext

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


class SameTime:
    """A stream's clock: its noise level as a function of the shared t, here t itself. (The
    time-shift calibration gives the semantic stream its own t'.)"""

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        return t


def training_loss(model, x: torch.Tensor, y: torch.Tensor, cfg: DiffusionConfig, num_classes: int,
                  generator=None, semantic: torch.Tensor | None = None,
                  semantic_weight: float = 0.1, semantic_time=SameTime(), aux=None,
                  aux_weight: float = 0.0) -> dict:
    """The training objective on clean images x (B, C, H, W) in [-1, 1] and labels y (B,).

    JiT: L = L_pix, with Bernoulli(label_drop_prob) label dropout. Co-denoising (``semantic`` =
    clean calibrated features (B, N, C)): the model's CFG definition (``model.unconditional``)
    draws which samples lose the label and which the semantic pathway (V-Co: one draw for both);
    both streams are noised at the same t (the semantic stream at ``semantic_time(t)``, t itself
    unless calibrated by a time shift) with their own noise; L = L_pix + w_d L_sem + w_a L_aux,
    where L_sem averages only over the samples that kept their semantics. Random draws in the
    official order: drops, t, pixel noise, semantic noise. Returns the total "loss" and each
    term (detached).
    """
    b, dev = x.shape[0], x.device
    rng = as_stream(generator, dev)
    net = getattr(model, "module", model)              # the model itself under DDP
    if semantic is None:
        drop = rng.rand(b) < cfg.label_drop_prob
    else:
        drops = net.unconditional.draw(b, cfg, rng, dev)
        drop = drops.label
    t = sample_t(b, cfg, rng, dev)
    z = add_noise(x, t, rng.randn(x.shape, x.dtype), cfg.noise_scale)
    y_in = drop_labels(y, drop, num_classes)
    if semantic is None:
        x_pred, _ = model(z, t, y_in)
        pix = v_loss(x_pred, x, z, t, cfg.t_eps).mean()
        return {"loss": pix, "pix": pix.detach()}
    t_f = semantic_time(t)
    eps_f = rng.randn(semantic.shape, semantic.dtype)
    z_f = add_noise(semantic, t_f, eps_f, cfg.noise_scale)
    # Dropped samples last: the mask-free attention then needs two SDPA calls per block, not one
    # per run of samples. Every loss term is a mean (per class for the auxiliary losses), so the
    # order changes nothing but the summation order.
    if bool(drops.semantic.any()):
        order = torch.argsort(drops.semantic.to(torch.int8), stable=True)
        x, y, y_in, t, t_f, z, z_f, semantic = (a[order] for a in (x, y, y_in, t, t_f, z, z_f, semantic))
        drops = type(drops)(drops.label[order], drops.semantic[order])
    tap = getattr(aux, "tap_block", None)              # REPA reads a backbone block's tokens
    with net.tapping(tap) if tap is not None else nullcontext({}) as tapped:
        x_pred, f_pred = model(z, t, y_in, z_f, drop=drops.semantic)
    pix = v_loss(x_pred, x, z, t, cfg.t_eps).mean()
    sem = masked_mean(v_loss(f_pred, semantic, z_f, t_f, cfg.t_eps), ~drops.semantic)
    loss = pix + semantic_weight * sem
    terms = {"pix": pix.detach(), "sem": sem.detach()}
    if aux is not None:
        # the auxiliary loss sees the true labels, dropped samples included (official grouping)
        aux_value = aux(x_pred.float(), x, y, semantic=semantic, hidden=tapped.get("hidden"))
        loss = loss + aux_weight * aux_value
        terms["aux"] = aux_value.detach()
    return {"loss": loss, **terms}

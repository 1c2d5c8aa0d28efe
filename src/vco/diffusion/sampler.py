"""ODE sampler on the x-prediction velocity field, with classifier-free guidance.

Uniform t grid over ``steps`` intervals from 0 (noise) to 1 (clean). Heun for every interval but
the last, which is Euler (JiT: 49 Heun + 1 Euler = 99 velocity evaluations at 50 steps); or Euler
throughout. Guidance v = v_u + w (v_c - v_u) is applied only where interval_min < t < interval_max
(strict, fp32, as the reference; interval_min == 0 disables the lower test); elsewhere w = 1 and
the unconditional pass is skipped. The conditional and unconditional passes run as one batch.
The sampler integrates every stream the model has (pixels, and semantic features for V-Co) with
the same dt and the same w, and returns the pixel stream.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from ..config import DiffusionConfig, SamplerConfig
from .flow import velocity


def guidance_scale(t: float, cfg: SamplerConfig) -> float:
    # Compare in fp32 like the reference (a Python bound meets an fp32 tensor as fp32).
    t32, lo, hi = torch.tensor([t, cfg.interval_min, cfg.interval_max], dtype=torch.float32).tolist()
    inside = t32 < hi and (cfg.interval_min == 0 or t32 > lo)
    return cfg.cfg if inside else 1.0


def guided_velocity(model, states: Sequence[torch.Tensor], t: float, y: torch.Tensor, w: float,
                    null_label: int, t_eps: float) -> list[torch.Tensor]:
    """Velocity of every stream at time t; cond and uncond batched as one forward of 2B."""
    b = y.shape[0]
    tt = torch.full((b,), t, dtype=torch.float32, device=y.device)
    if w == 1.0:
        preds = model(states[0], tt, y, *states[1:])
        return [velocity(p, z, tt, t_eps) for p, z in zip(preds, states)]
    z2 = [torch.cat([z, z]) for z in states]
    y2 = torch.cat([y, torch.full_like(y, null_label)])
    drop = torch.cat([torch.zeros_like(y, dtype=torch.bool), torch.ones_like(y, dtype=torch.bool)])
    preds = model(z2[0], torch.cat([tt, tt]), y2, *z2[1:], drop=drop)
    out = []
    for p, z in zip(preds, z2):
        v_c, v_u = velocity(p, z, torch.cat([tt, tt]), t_eps).chunk(2)
        out.append(v_u + w * (v_c - v_u))
    return out


@torch.no_grad()
def sample(model, y: torch.Tensor, noise: Sequence[torch.Tensor], cfg: SamplerConfig,
           diffusion: DiffusionConfig, null_label: int, progress: bool = False) -> torch.Tensor:
    """Integrate from the given initial noise (one tensor per stream, unit variance) to t = 1.

    y: (B,) labels; returns the pixel stream (B, C, H, W) at t = 1.
    """
    if cfg.method not in ("heun", "euler"):
        raise ValueError(f"unknown sampler method '{cfg.method}': use heun or euler")
    if cfg.steps < 1:
        raise ValueError(f"sampler steps must be >= 1, got {cfg.steps}")
    states = [n * diffusion.noise_scale for n in noise]
    grid = torch.linspace(0, 1, cfg.steps + 1, dtype=torch.float32).tolist()

    def vel(zs, t):
        return guided_velocity(model, zs, t, y, guidance_scale(t, cfg), null_label, diffusion.t_eps)

    for k in tqdm(range(cfg.steps), desc="sampling", disable=not progress, leave=False):
        t0, t1 = grid[k], grid[k + 1]
        dt = t1 - t0
        v0 = vel(states, t0)
        euler = [z + dt * v for z, v in zip(states, v0)]
        if cfg.method == "euler" or k == cfg.steps - 1:
            states = euler
        else:
            v1 = vel(euler, t1)
            states = [z + dt * 0.5 * (a + b) for z, a, b in zip(states, v0, v1)]
    return states[0]


def initial_noise(shapes: Sequence[tuple], generator: torch.Generator | None = None,
                  device="cpu") -> list[torch.Tensor]:
    """Unit Gaussian noise per stream, drawn in order (pixels first, then semantic features)."""
    return [torch.randn(s, generator=generator, device=device) for s in shapes]

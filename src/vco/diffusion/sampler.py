"""ODE sampler on the x-prediction velocity field, with classifier-free guidance.

Uniform t grid over ``steps`` intervals from 0 (noise) to 1 (clean). Heun for every interval but
the last, which is Euler (JiT: 49 Heun + 1 Euler = 99 velocity evaluations at 50 steps); or Euler
throughout. Guidance v = v_u + w (v_c - v_u) is applied only where interval_min < t < interval_max
(strict, fp32, as the reference; interval_min == 0 disables the lower test); elsewhere w = 1 and
the unconditional pass is skipped. The conditional and unconditional passes run as one batch.
The sampler integrates every stream the model has (pixels, and semantic features for V-Co), each
over the same t grid read on its own clock (t, or t' under the time-shift calibration), and
returns the pixel stream. The pixel stream is guided with ``cfg``, the semantic stream with
``cfg_semantic`` (the official code's separate DINO scale; unset: the same w, as the paper).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from ..config import DiffusionConfig, SamplerConfig
from .flow import SameTime, velocity


def guided(t: float, cfg: SamplerConfig) -> bool:
    """Whether t lies inside the guidance interval; compared in fp32 like the reference (a Python
    bound meets an fp32 tensor as fp32)."""
    t32, lo, hi = torch.tensor([t, cfg.interval_min, cfg.interval_max], dtype=torch.float32).tolist()
    return t32 < hi and (cfg.interval_min == 0 or t32 > lo)


def guidance_scale(t: float, cfg: SamplerConfig) -> float:
    """The pixel stream's w at t."""
    return cfg.cfg if guided(t, cfg) else 1.0


def guidance_scales(t: float, cfg: SamplerConfig, num_streams: int) -> list[float]:
    """Every stream's w at t: pixels cfg, semantic features cfg_semantic (unset: cfg)."""
    if not guided(t, cfg):
        return [1.0] * num_streams
    semantic = cfg.cfg if cfg.cfg_semantic is None else cfg.cfg_semantic
    return [cfg.cfg] + [semantic] * (num_streams - 1)


def guided_velocity(model, states: Sequence[torch.Tensor], t: float, y: torch.Tensor,
                    w: float | Sequence[float], null_label: int, t_eps: float,
                    stream_times=None) -> list[torch.Tensor]:
    """Velocity of every stream at time t, each on its own clock (d z / d stream_time(t));
    w: one scale for every stream, or one per stream. Cond and uncond batched as one forward of
    2B; the unconditional pass is skipped when every w is 1."""
    b = y.shape[0]
    times = stream_times or [SameTime()] * len(states)
    ws = [float(w)] * len(states) if isinstance(w, (int, float)) else [float(v) for v in w]
    tt = torch.full((b,), t, dtype=torch.float32, device=y.device)
    if all(v == 1.0 for v in ws):
        preds = model(states[0], tt, y, *states[1:])
        return [velocity(p, z, st(tt), t_eps) for p, z, st in zip(preds, states, times)]
    z2 = [torch.cat([z, z]) for z in states]
    y2 = torch.cat([y, torch.full_like(y, null_label)])
    drop = torch.cat([torch.zeros_like(y, dtype=torch.bool), torch.ones_like(y, dtype=torch.bool)])
    preds = model(z2[0], torch.cat([tt, tt]), y2, *z2[1:], drop=drop)
    out = []
    for p, z, st, w_s in zip(preds, z2, times, ws):
        v_c, v_u = velocity(p, z, st(torch.cat([tt, tt])), t_eps).chunk(2)
        out.append(v_c if w_s == 1.0 else v_u + w_s * (v_c - v_u))
    return out


@torch.no_grad()
def sample(model, y: torch.Tensor, noise: Sequence[torch.Tensor], cfg: SamplerConfig,
           diffusion: DiffusionConfig, null_label: int, on_step: Callable[[], None] | None = None,
           stream_times=None) -> torch.Tensor:
    """Integrate from the given initial noise (one tensor per stream, unit variance) to t = 1.

    y: (B,) labels; ``stream_times``: each stream's noise level as a function of t (default:
    t for every stream). Returns the pixel stream (B, C, H, W) at t = 1.
    """
    if cfg.method not in ("heun", "euler"):
        raise ValueError(f"unknown sampler method '{cfg.method}': use heun or euler")
    if cfg.steps < 1:
        raise ValueError(f"sampler steps must be >= 1, got {cfg.steps}")
    states = [n * diffusion.noise_scale for n in noise]
    times = stream_times or [SameTime()] * len(states)
    grid = torch.linspace(0, 1, cfg.steps + 1, dtype=torch.float32)
    # Each stream advances by the step of its own clock (t itself, or a time-shifted t'), so an
    # exact x-prediction lands every stream exactly on its clean value at t = 1.
    clocks = [st(grid).tolist() for st in times]
    grid = grid.tolist()

    def vel(zs, t):
        return guided_velocity(model, zs, t, y, guidance_scales(t, cfg, len(zs)), null_label,
                               diffusion.t_eps, times)

    for k in range(cfg.steps):
        t0, t1 = grid[k], grid[k + 1]
        dts = [c[k + 1] - c[k] for c in clocks]
        v0 = vel(states, t0)
        euler = [z + dt * v for z, dt, v in zip(states, dts, v0)]
        if cfg.method == "euler" or k == cfg.steps - 1:
            states = euler
        else:
            v1 = vel(euler, t1)
            states = [z + dt * 0.5 * (a + b) for z, dt, a, b in zip(states, dts, v0, v1)]
        if on_step is not None:
            on_step()                 # a progress bar that advances per sampler step
    return states[0]


def initial_noise(shapes: Sequence[tuple], generator: torch.Generator | None = None,
                  device="cpu") -> list[torch.Tensor]:
    """Unit Gaussian noise per stream, drawn in order (pixels first, then semantic features)."""
    return [torch.randn(s, generator=generator, device=device) for s in shapes]

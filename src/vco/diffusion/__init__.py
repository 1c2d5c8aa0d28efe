"""Diffusion process: noising and the v-loss (flow.py) and the guided ODE sampler (sampler.py)."""
from .flow import Drops, Noised, add_noise, noise_batch, sample_t, v_loss, velocity
from .sampler import guidance_scale, initial_noise, sample

__all__ = ["Drops", "Noised", "add_noise", "noise_batch", "sample_t", "v_loss", "velocity",
           "guidance_scale", "initial_noise", "sample"]

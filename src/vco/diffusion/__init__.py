"""Diffusion process: noising and loss (flow.py) and the guided ODE sampler (sampler.py)."""
from .flow import add_noise, sample_t, training_loss, v_loss, velocity
from .sampler import guidance_scale, initial_noise, sample

__all__ = ["add_noise", "sample_t", "training_loss", "v_loss", "velocity", "guidance_scale",
           "initial_noise", "sample"]

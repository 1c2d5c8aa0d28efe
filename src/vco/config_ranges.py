"""The allowed range of every numeric config value, checked whenever a config is built or read
(preset, YAML file, ``--set``), so that a bad value stops the command before any work with a
message naming the key and its range, instead of a traceback steps (or hours) later."""
from __future__ import annotations

import dataclasses
import math

from .components import ConfigError

# key: (low, high, low inclusive, high inclusive); None = unbounded. Every float (and every float
# in a tuple) must also be finite; keys not listed only need that.
RANGES: dict[str, tuple] = {
    "model.stream_blocks": (0, None, True, True),
    "model.image_size": (1, None, True, True),
    "model.patch_size": (1, None, True, True),
    "model.in_channels": (1, None, True, True),
    "model.hidden_size": (1, None, True, True),
    "model.depth": (1, None, True, True),
    "model.num_heads": (1, None, True, True),
    "model.mlp_ratio": (0, None, False, True),
    "model.bottleneck_dim": (1, None, True, True),
    "model.in_context_len": (0, None, True, True),
    "model.in_context_start": (0, None, True, True),
    "model.num_classes": (1, None, True, True),
    "model.attn_dropout": (0, 1, True, False),
    "model.proj_dropout": (0, 1, True, False),
    "model.semantic_dim": (1, None, True, True),
    "model.semantic_bottleneck": (0, None, True, True),
    "diffusion.P_std": (0, None, False, True),
    "diffusion.noise_scale": (0, None, False, True),
    "diffusion.t_eps": (0, 1, False, False),
    "diffusion.label_drop_prob": (0, 1, True, True),
    "diffusion.semantic_drop_prob": (0, 1, True, True),
    "sampler.steps": (1, None, True, True),
    "sampler.cfg": (0, None, True, True),
    "sampler.cfg_semantic": (0, None, True, True),
    "sampler.interval_min": (0, 1, True, True),
    "sampler.interval_max": (0, 1, True, True),
    "data.num_workers": (0, None, True, True),
    "data.synthetic_size": (1, None, True, True),
    "data.classes_per_batch": (0, None, True, True),
    "data.max_image_pixels": (1, None, True, True),
    "data.max_bad_images": (0, None, True, True),
    "semantic.encoder_layer": (0, None, True, True),
    "semantic.stats_images": (1, None, True, True),
    "semantic.scale": (0, None, False, True),
    "semantic.loss_weight": (0, None, True, True),
    "train.steps": (1, None, True, True),
    "train.batch_size": (1, None, True, True),
    "train.grad_accum": (1, None, True, True),
    "train.blr": (0, None, False, True),
    "train.warmup_steps": (0, None, True, True),
    "train.lr_decay_steps": (0, None, True, True),
    "train.lr_final_ratio": (0, 1, True, True),
    "train.weight_decay": (0, None, True, True),
    "train.betas": (0, 1, True, False),
    "train.ema_decays": (0, 1, True, False),
    "train.posthoc_ema_widths": (0, 0.2886, False, False),   # sigma_rel < sqrt(1/12): gamma > 0
    "train.posthoc_ema_every": (1, None, True, True),
    "train.seed": (0, None, True, True),
    "train.log_every": (1, None, True, True),
    "train.ckpt_every": (1, None, True, True),
    "train.time_limit_min": (0, None, True, True),
    "train.max_bad_steps": (1, None, True, True),
}


def _describe(low, high, low_in, high_in) -> str:
    parts = []
    if low is not None:
        parts.append(f"{'>=' if low_in else '>'} {low:g}")
    if high is not None:
        parts.append(f"{'<=' if high_in else '<'} {high:g}")
    return " and ".join(parts)


def _check_value(key: str, value, bounds) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key} must be a finite number, got {value}")
    if bounds is None:
        return
    low, high, low_in, high_in = bounds
    below = low is not None and (value < low if low_in else value <= low)
    above = high is not None and (value > high if high_in else value >= high)
    if below or above:
        raise ConfigError(f"{key} must be {_describe(*bounds)}, got {value}")


def check_ranges(cfg) -> None:
    """Raise ConfigError for the first value of ``cfg`` outside its range (or not finite)."""
    for section in dataclasses.fields(cfg):
        group = getattr(cfg, section.name)
        if not dataclasses.is_dataclass(group):
            continue
        for f in dataclasses.fields(group):
            key, value = f"{section.name}.{f.name}", getattr(group, f.name)
            for item in value if isinstance(value, (tuple, list)) else (value,):
                _check_value(key, item, RANGES.get(key))
    m, s = cfg.model, cfg.sampler
    if m.image_size % m.patch_size:
        raise ConfigError(f"model.image_size ({m.image_size}) must be a multiple of model.patch_size "
                          f"({m.patch_size})")
    if m.hidden_size % m.num_heads:
        raise ConfigError(f"model.hidden_size ({m.hidden_size}) must be a multiple of model.num_heads "
                          f"({m.num_heads})")
    if s.interval_min > s.interval_max:
        raise ConfigError(f"sampler.interval_min ({s.interval_min}) must be <= sampler.interval_max "
                          f"({s.interval_max})")

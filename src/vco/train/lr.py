"""The learning rate of each step: linear warmup, then the decay shape of ``train.lr_schedule``.

JiT and V-Co train at a constant lr after warmup (``constant``, the default). A run of a few
thousand steps, where the last weights are what gets sampled, ends better on a decayed lr:
``cosine`` or ``linear`` go from the peak after warmup to ``lr_final_ratio`` x peak at step
``lr_decay_steps`` (0: at ``train.steps``) and stay there. The horizon is part of the schedule, so
extending a decayed run with ``--resume --steps`` changes its lr from there on; set
``lr_decay_steps`` to the final length up front to keep a run resumable in segments.
"""
from __future__ import annotations

import math

from ..config import ConfigError

# progress p in [0, 1] through the decay -> factor of the peak lr (before the final floor)
DECAYS = {
    "constant": lambda p: 1.0,
    "cosine": lambda p: 0.5 * (1.0 + math.cos(math.pi * p)),
    "linear": lambda p: 1.0 - p,
}


def check_schedule(name: str) -> None:
    if name not in DECAYS:
        raise ConfigError(f"train.lr_schedule: unknown schedule {name!r}; choose from {', '.join(DECAYS)}")


def lr_at(step: int, base_lr: float, warmup: int, schedule: str = "constant", horizon: int = 0,
          final_ratio: float = 0.0) -> float:
    """The lr of optimizer step ``step`` (0-based): ``base_lr * (step + 1) / warmup`` during warmup,
    then ``base_lr * (final + (1 - final) * decay(p))`` with p the progress from the end of warmup
    to ``horizon`` (clamped to [0, 1])."""
    check_schedule(schedule)
    if warmup > 0 and step < warmup:
        return base_lr * (step + 1) / warmup
    if schedule == "constant":
        return base_lr
    p = min(1.0, max(0.0, (step - warmup) / max(1, horizon - warmup)))
    return base_lr * (final_ratio + (1.0 - final_ratio) * DECAYS[schedule](p))

"""Exponential moving averages of the trainable weights (JiT keeps two: 0.9999 and 0.9996)."""
from __future__ import annotations

import torch
import torch.nn as nn


class EMA:
    """ema <- decay * ema + (1 - decay) * theta for every trainable parameter, in fp32."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        params = dict(model.named_parameters())
        self.shadow = {n: params[n].detach().clone().float() for n in self.names}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        params = dict(model.named_parameters())
        torch._foreach_lerp_([self.shadow[n] for n in self.names],
                             [params[n].detach().float() for n in self.names], 1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = sorted(set(self.names) - set(state))
        if missing:
            raise KeyError(f"EMA state lacks {len(missing)} tensors, e.g. {missing[:3]}")
        for n in self.names:
            self.shadow[n].copy_(state[n])


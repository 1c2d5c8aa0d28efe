"""Exponential moving averages of the trainable weights (JiT keeps two: 0.9999 and 0.9996).

With warm-up (the usual form), update t (0-based) uses decay_t = min(decay, (1 + t) / (10 + t)):
0.1 at the first update, 0.5 at t = 8, 0.99 at t = 890, 0.9999 from t = 89,990 on. So the EMA of a
short run follows the training weights instead of holding mostly the initial noise (0.99^60 = 55%
of it after 60 plain updates), while a long run's final EMA changes only by the weight the early
steps had: at 0.9999 it is at most 0.9999^(T - 89,990) of the average, e.g. 1e-7 at T = 250k.
"""
from __future__ import annotations

import torch
import torch.nn as nn


class ParameterAverage:
    """A running average of every trainable parameter (fp32, or the parameter's dtype if wider):
    ``shadow <- lerp(shadow, theta, weight)``; the subclasses say which weight each update gets."""

    def __init__(self, model: nn.Module):
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        params = dict(model.named_parameters())
        self.shadow = {n: params[n].detach().clone().to(torch.promote_types(params[n].dtype, torch.float32))
                       for n in self.names}

    @torch.no_grad()
    def _lerp(self, model: nn.Module, weight: float) -> None:
        params = dict(model.named_parameters())
        torch._foreach_lerp_([self.shadow[n] for n in self.names],
                             [params[n].detach().to(self.shadow[n].dtype) for n in self.names], weight)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = sorted(set(self.names) - set(state))
        if missing:
            raise KeyError(f"{type(self).__name__} state lacks {len(missing)} tensors, e.g. {missing[:3]}")
        for n in self.names:
            self.shadow[n].copy_(state[n])


class EMA(ParameterAverage):
    """ema <- decay * ema + (1 - decay) * theta for every trainable parameter."""

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True):
        super().__init__(model)
        self.decay, self.warmup = decay, warmup

    def decay_at(self, t: int) -> float:
        """The decay of update t (0-based): min(decay, (1 + t) / (10 + t)) with warm-up."""
        return min(self.decay, (1 + t) / (10 + t)) if self.warmup else self.decay

    def update(self, model: nn.Module, t: int = 10**12) -> None:
        """ema <- d ema + (1 - d) theta with d = decay_at(t); t: the training step (the
        default is past any warm-up)."""
        self._lerp(model, 1.0 - self.decay_at(t))

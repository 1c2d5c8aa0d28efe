"""What a run shows while it trains, and when a time-limited run stops: one concept, the budget.

A run with ``train.time_limit_min`` shows the seconds of its budget (the step and loss beside
them) and starts no step that would end past it; any other run shows its steps.
"""
from __future__ import annotations

import time

from tqdm.auto import tqdm


class TrainProgress:
    def __init__(self, time_limit_min: float, steps: int, step: int, enabled: bool):
        self.limit = time_limit_min * 60
        self.t0 = time.time()
        if self.limit > 0:
            self.bar = tqdm(total=round(self.limit), desc="train", unit="s", disable=not enabled, dynamic_ncols=True,
                            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s budget{postfix}")
        else:
            self.bar = tqdm(total=steps, initial=step, desc="train", disable=not enabled, dynamic_ncols=True)

    def elapsed(self) -> float:
        return time.time() - self.t0

    def advance(self, step: int, loss: float, lr: float) -> None:
        if self.limit > 0:
            self.bar.n = min(self.elapsed(), self.bar.total)
            self.bar.set_postfix_str(f" step {step}, loss {loss:.4f}", refresh=True)
        else:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")

    def late(self, step_s: float) -> bool:
        """Another step of ``step_s`` seconds would end past the limit (never, without one)."""
        return self.limit > 0 and self.elapsed() + step_s > self.limit

    def close(self) -> None:
        self.bar.close()

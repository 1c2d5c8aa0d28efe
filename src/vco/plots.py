"""PNG figures of what a run produced: loss curves from metrics.jsonl."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .train.metrics import read_metrics  # noqa: E402

SKIP = {"step", "lr", "img_per_s", "elapsed_s", "skipped_steps", "grad_norm"}   # not losses


def plot_loss_curves(metrics_path: str | Path, out: str | Path) -> Path:
    """Every loss term of metrics.jsonl against the step (log scale), one line each."""
    records = read_metrics(metrics_path)
    if not records:
        raise ValueError(f"{metrics_path} holds no metrics yet")
    steps = [r["step"] for r in records]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    for key in [k for k in records[-1] if k not in SKIP]:
        ax.plot(steps, [r.get(key) if r.get(key) is not None else float("nan") for r in records],
                label=key, lw=1.2)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out)
    plt.close(fig)
    return out

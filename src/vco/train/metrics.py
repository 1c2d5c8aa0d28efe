"""What a run logs: one JSON line per logged step in metrics.jsonl, mirrored to TensorBoard."""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

log = logging.getLogger("vco.train")


class MetricsLog:
    """metrics.jsonl (appended) + TensorBoard under tb/; on non-main ranks it writes nothing."""

    def __init__(self, run_dir: Path, enabled: bool = True):
        self.file = open(Path(run_dir) / "metrics.jsonl" if enabled else os.devnull, "a")
        self.writer = _tensorboard(Path(run_dir) / "tb") if enabled else None

    def write(self, step: int, values: dict) -> dict:
        """One record {step, **values}; a non-finite float is written as null."""
        record = {"step": step, **{k: None if isinstance(v, float) and not math.isfinite(v) else v
                                   for k, v in values.items()}}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.writer is not None:
            for k, v in record.items():
                if k != "step" and v is not None:
                    self.writer.add_scalar(f"train/{k}", v, step)
        return record

    def close(self) -> None:
        self.file.close()
        if self.writer is not None:
            self.writer.close()


def _tensorboard(path: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a dependency, but keep training if it is absent
        log.warning("tensorboard is not installed: metrics go to metrics.jsonl only")
        return None
    return SummaryWriter(str(path))

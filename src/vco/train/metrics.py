"""What a run logs: one JSON line per logged step in metrics.jsonl, mirrored to the loggers of
``train.loggers`` (TensorBoard, W&B: vco.train.loggers) as ``train/<key>``."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

from .loggers import build_loggers


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a metrics.jsonl, in the order written (a resumed run appends after its
    earlier segments, so steps may repeat)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


class MetricsLog:
    """metrics.jsonl (appended) + the run's loggers; on non-main ranks it writes nothing."""

    def __init__(self, run_dir: Path, cfg, enabled: bool = True):
        self.file = open(Path(run_dir) / "metrics.jsonl" if enabled else os.devnull, "a")
        self.loggers = build_loggers(Path(run_dir), cfg) if enabled else []

    def write(self, step: int, values: dict) -> dict:
        """One record {step, **values}; a non-finite float is written as null."""
        record = {"step": step, **{k: None if isinstance(v, float) and not math.isfinite(v) else v
                                   for k, v in values.items()}}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        scalars = {f"train/{k}": v for k, v in record.items() if k != "step" and v is not None}
        for logger in self.loggers:
            logger.scalars(step, scalars)
        return record

    def close(self) -> None:
        self.file.close()
        for logger in self.loggers:
            logger.close()

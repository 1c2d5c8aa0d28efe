"""benchmarks/lr_sweep.py's bookkeeping: each run trains the preset at exactly the peak lr asked for
(the preset's batch, warmup and seed: the same data order), and the table marks the lowest FID."""
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import lr_sweep  # noqa: E402


def test_a_run_trains_the_preset_at_the_asked_peak_lr(monkeypatch, tmp_path):
    from vco.config import build_config
    seen = []

    class FakeTrainer:
        def __init__(self, cfg, run_dir, resume=False):
            seen.append((cfg, resume))
            self.step = 0

        def train(self, progress=True):
            self.step = seen[-1][0].train.steps

    monkeypatch.setattr(lr_sweep, "Trainer", FakeTrainer)
    lr_sweep.train_one(tmp_path / "run", 4e-3, 600, "bf16")
    (cfg, resume), = seen
    preset = build_config("jit-tiny").train
    assert cfg.train.blr * cfg.train.batch_size / 256 == pytest.approx(4e-3) and not resume
    assert (cfg.train.steps, cfg.train.precision, cfg.data.name) == (600, "bf16", "fashion-mnist")
    assert (cfg.train.batch_size, cfg.train.warmup_steps, cfg.train.seed, cfg.train.lr_schedule) == \
        (preset.batch_size, preset.warmup_steps, preset.seed, "constant")
    assert lr_sweep.run_name(4e-3, 600, "bf16") == "jit-tiny-lr0.004-600steps-bf16"


def test_the_table_marks_the_lowest_fid_and_the_plot_is_written(tmp_path):
    from types import SimpleNamespace
    rows = []
    for lr, fid in ((1e-3, 90.0), (2e-3, 70.0), (4e-3, 80.0)):
        name = lr_sweep.run_name(lr, 20, "fp32")
        (tmp_path / "runs" / name).mkdir(parents=True)
        (tmp_path / "runs" / name / "metrics.jsonl").write_text(
            "".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(10, 21, 10)))
        rows.append({"lr": lr, "run": name, "fid": fid, "precision": 0.3, "recall": 0.2,
                     "final_loss": 0.1, "train_seconds": 9.0, "machine": "this CPU"})
    lr_sweep.write_outputs(rows, tmp_path / "out", tmp_path / "runs",
                           SimpleNamespace(steps=20, precision="fp32", num=50))
    table = (tmp_path / "out" / "lr_sweep.md").read_text()
    assert "| 0.002 (best) | 70.00 |" in table and table.count("(best)") == 1
    assert json.loads((tmp_path / "out" / "lr_sweep.json").read_text())["rows"][2]["fid"] == 80.0
    assert (tmp_path / "out" / "lr_sweep.png").stat().st_size > 10_000

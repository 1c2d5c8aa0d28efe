"""train.loggers: TensorBoard and Weights & Biases (WANDB_MODE=offline: local files only), the
per-step values they get, one W&B run across --resume and `vco eval`, and clear errors."""
import json
import math
import sys
import time
from pathlib import Path

import pytest
import torch

from vco.cli import main
from vco.config import ConfigError, build_config
from vco.train import Trainer
from vco.train.loggers import WANDB_RUN_FILE, check_loggers, log_evaluation

SMALL = ["image_size=16", "hidden_size=32", "depth=2", "num_heads=2", "bottleneck_dim=8",
         "in_context_len=2", "in_context_start=1", "precision=fp32", "data.name=synthetic",
         "synthetic_size=16", "batch_size=4", "log_every=2", "warmup_steps=0"]
PER_STEP = ["loss", "lr", "grad_norm", "img_per_s", "skipped_steps"]


def tb_scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    out: dict = {}
    for events in sorted((run / "tb").glob("events.*")):
        acc = EventAccumulator(str(events))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return out


def test_tensorboard_gets_every_per_step_value_and_grad_norm_is_the_l2_norm(tmp_path):
    cfg = build_config("jit-tiny", overrides=SMALL + ["train.steps=4"])
    trainer = Trainer(cfg, tmp_path / "r")
    norms = []
    step = trainer.optimizer.step

    def step_and_record(*a, **k):        # the gradient the optimizer sees, by hand
        norms.append(math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in trainer.params.values()
                                   if p.grad is not None)))
        return step(*a, **k)
    trainer.optimizer.step = step_and_record
    trainer.train(progress=False)
    records = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4]
    assert [r["grad_norm"] for r in records] == pytest.approx([norms[1], norms[3]], rel=1e-5)
    scalars = tb_scalars(tmp_path / "r")
    for key in PER_STEP:
        assert [s for s, _ in scalars[f"train/{key}"]] == [2, 4], key
        assert [v for _, v in scalars[f"train/{key}"]] == pytest.approx([r[key] for r in records], rel=1e-5)


def test_no_loggers_writes_metrics_jsonl_only(tmp_path):
    cfg = build_config("jit-tiny", overrides=SMALL + ["train.steps=2", "train.loggers=[]"])
    Trainer(cfg, tmp_path / "r").train(progress=False)
    assert (tmp_path / "r" / "metrics.jsonl").is_file() and not (tmp_path / "r" / "tb").exists()


def test_unknown_or_missing_logger_is_a_clear_error_before_any_work(tmp_path, monkeypatch, capsys):
    with pytest.raises(ConfigError, match="unknown logger 'mlflow'; choose from tensorboard, wandb"):
        check_loggers(["mlflow"])
    monkeypatch.setitem(sys.modules, "wandb", None)           # as if it were not installed
    assert main(["train", "--preset", "jit-tiny", "--out", str(tmp_path / "r"), "--steps", "2", "--quiet",
                 "--set", *SMALL, "train.loggers=[tensorboard,wandb]"]) == 2
    err = capsys.readouterr().err
    assert "train.loggers includes wandb, but wandb is not installed: pip install 'vco[wandb]'" in err
    assert not (tmp_path / "r").exists()


def wandb_files(run: Path, settle_s: float = 20.0) -> dict[str, bytes]:
    """The offline W&B run folders under RUN/wandb (offline-run-<time>-<id>[-n]: W&B adds -n to
    a second folder of the same second) and their .wandb record files (bytes). W&B's service
    process may still be writing a record file when finish() returns (a read then found only its
    header, one run in three): read until the files stop changing for half a second."""
    def read():
        return {p.parent.name: p.read_bytes() for p in sorted((run / "wandb").glob("offline-run-*/run-*.wandb"))}
    deadline, last = time.time() + settle_s, read()
    while time.time() < deadline:
        time.sleep(0.5)
        now = read()
        if now == last and all(len(b) > 64 for b in now.values()):
            return now
        last = now
    return last


def test_wandb_offline_one_run_across_resume_and_eval(tmp_path):
    pytest.importorskip("wandb")
    run = tmp_path / "my-run"
    over = SMALL + ["train.loggers=[tensorboard,wandb]", "train.wandb_project=vco-tests"]
    Trainer(build_config("jit-tiny", overrides=over + ["train.steps=2"]), run).train(progress=False)
    ident = json.loads((run / WANDB_RUN_FILE).read_text())
    assert ident["project"] == "vco-tests" and ident["name"] == "my-run" and ident["id"]
    first = wandb_files(run)
    assert len(first) == 1 and f"-{ident['id']}" in next(iter(first))
    records = next(iter(first.values()))
    for key in PER_STEP:                           # each per-step value, by its logged name
        assert f"train/{key}".encode() in records, key
    # --resume continues the same W&B run (a second offline segment of the same id)
    cfg = build_config("jit-tiny", overrides=over + ["train.steps=4"])
    Trainer(cfg, run, resume=True).train(progress=False)
    assert json.loads((run / WANDB_RUN_FILE).read_text()) == ident
    segments = wandb_files(run)
    assert len(segments) == 2 and all(f"-{ident['id']}" in name for name in segments)
    # an evaluation goes to the same run, against the training step
    from PIL import Image
    grid = tmp_path / "samples_cfg1.png"
    Image.new("RGB", (16, 16), (200, 10, 10)).save(grid)
    log_evaluation(run, cfg, 4, {"fid": 12.5, "precision": 0.5, "recall": 0.25, "settings": {"cfg": 1.0}}, [grid])
    segments = wandb_files(run)
    assert len(segments) == 3 and all(f"-{ident['id']}" in name for name in segments)
    last = segments[sorted(segments)[-1]]
    assert all(k.encode() in last for k in ("eval/fid", "eval/precision", "eval/recall", "eval/samples_cfg1",
                                            "train_step"))
    scalars = tb_scalars(run)                       # TensorBoard got the evaluation too
    assert scalars["eval/fid"] == [(4, 12.5)] and scalars["eval/recall"] == [(4, 0.25)]

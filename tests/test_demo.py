"""`vco demo`: the whole job (setup, training, sampling, plots) fits the time budget, and the
progress it shows advances per step."""
import time

import pytest
import torch

from vco.config import DiffusionConfig, SamplerConfig, build_config
from vco.demo import run_demo
from vco.diffusion import sample
from vco.train import Trainer

TINY = ["image_size=16", "hidden_size=32", "depth=2", "num_heads=2", "bottleneck_dim=8",
        "in_context_len=2", "in_context_start=1", "precision=fp32", "synthetic_size=64"]


def test_the_demo_budget_covers_training_and_sampling(tmp_path):
    budget_s = 24.0
    r = run_demo(tmp_path / "demo", "jit-tiny", minutes=budget_s / 60, batch_size=8, per_class=2,
                 sample_steps=4, data="synthetic", extra=TINY)
    assert r["total_s"] <= budget_s + 1.0                     # sampling and plots included
    assert r["train_s"] < budget_s - r["sample_s"]            # training stopped early enough
    assert r["steps"] > 5 and (tmp_path / "demo" / "samples.png").is_file()
    assert (tmp_path / "demo" / "loss.png").is_file()
    # the prediction that sized the training share is of the right order
    assert r["predicted_sample_s"] == pytest.approx(r["sample_s"], rel=1.0, abs=1.0)
    # the run (and its lr schedule) ends where the measured steps said the budget ends
    import json
    from vco.config import load_config
    from vco.train.lr import lr_at
    cfg = load_config(tmp_path / "demo" / "run" / "config.yaml")
    tc = cfg.train
    assert tc.lr_schedule == "constant" and tc.lr_decay_steps == tc.steps >= r["final_step"]
    assert cfg.model.pixel_head["name"] == "conv"             # a new demo run opts in to the conv head
    assert r["final_step"] >= 0.5 * tc.steps                  # the time limit did not cut it short
    assert r["replanned_step"] == tc.steps                    # the re-planned end is the one recorded
    rows = [json.loads(line) for line in (tmp_path / "demo" / "run" / "metrics.jsonl").read_text().splitlines()]
    base = rows[-1]["lr"] / lr_at(rows[-1]["step"] - 1, 1.0, tc.warmup_steps, "constant", tc.steps)
    assert base == pytest.approx(1e-3)                        # the demo's peak lr


def test_a_continued_demo_keeps_the_head_its_run_was_built_with(tmp_path):
    kw = dict(batch_size=8, per_class=1, sample_steps=2, data="synthetic")
    run_demo(tmp_path / "d", "jit-tiny", minutes=0.4, extra=[*TINY, "pixel_head=linear"], **kw)
    r = run_demo(tmp_path / "d", "jit-tiny", minutes=0.4, extra=TINY, **kw)
    from vco.config import load_config
    assert load_config(tmp_path / "d" / "run" / "config.yaml").model.pixel_head["name"] == "linear"
    assert r["final_step"] > r["steps"]                       # it continued the earlier run's steps


def test_a_budget_too_small_for_sampling_is_a_clear_error(tmp_path):
    from vco.config import ConfigError
    with pytest.raises(ConfigError, match="give more minutes"):
        run_demo(tmp_path / "d", "jit-tiny", minutes=0.05, batch_size=8, per_class=2, sample_steps=4,
                 data="synthetic", extra=TINY)


def test_time_limited_training_stops_before_the_limit(tmp_path):
    """A step that would end past train.time_limit_min is not started."""
    cfg = build_config("jit-tiny", overrides=TINY + ["data.name=synthetic", "batch_size=8",
                                                      "train.steps=100000", "time_limit_min=0.05"])
    trainer = Trainer(cfg, tmp_path / "r")
    t = time.time()
    summary = trainer.train(progress=False)
    assert summary["stopped_by_time_limit"] and time.time() - t <= 3.0 + 0.5


def test_the_sampler_reports_every_step():
    calls = []

    class Zero(torch.nn.Module):
        def forward(self, z, t, y, *rest, drop=None):
            return torch.zeros_like(z), None

    sample(Zero(), torch.tensor([0]), [torch.randn(1, 3, 4, 4)], SamplerConfig(steps=7, cfg=1.0),
           DiffusionConfig(), null_label=10, on_step=lambda: calls.append(1))
    assert len(calls) == 7


def test_a_tight_budget_shrinks_the_sampling_not_the_deadline(monkeypatch):
    """Sampling is cut (Heun steps first, down to 8; then samples per class, down to 2) until it
    takes at most 30% of the budget: a slow machine gets a smaller grid, never an overrun."""
    import vco.demo as demo
    timed = []                                        # 0.1 s per evaluation, whatever the batch
    monkeypatch.setattr(demo, "evaluation_seconds", lambda model, cfg, b, device: timed.append(b) or 0.1)
    cfg = build_config("jit-tiny", overrides=["sampler.steps=25"])
    per_class, predicted = demo.fit_sampling(None, cfg, 6, budget_s=10.0, device="cpu")
    assert per_class == 6 and cfg.sampler.steps < 25
    assert demo.SAFETY * predicted <= demo.SAMPLING_SHARE * 10.0
    assert timed == [60]                              # steps cut: the one batch size timed once
    timed.clear()
    cfg = build_config("jit-tiny", overrides=["sampler.steps=25"])
    per_class, predicted = demo.fit_sampling(None, cfg, 30, budget_s=1.0, device="cpu")
    assert (cfg.sampler.steps, per_class) == (demo.MIN_STEPS, demo.MIN_PER_CLASS)   # the floors
    assert len(timed) == len(set(timed))              # each batch size is timed once


def test_the_end_is_replanned_once_from_the_measured_rate():
    """30% of the way to the planned end, the steps since training began move the end to where
    the deadline falls: here 0.5 s a step with 85 s left at step 30 -> step 30 + 170."""
    from types import SimpleNamespace
    from vco.train.time_budget import Replan
    clock = [1000.0]
    tc = SimpleNamespace(steps=100, lr_decay_steps=100)
    trainer = SimpleNamespace(step=0, cfg=SimpleNamespace(train=tc), world=SimpleNamespace(is_main=False))
    replan = Replan(start=0, end=100, deadline=1000.0 + 100.0, cap=10_000, clock=lambda: clock[0])
    assert replan.at == 30
    for _ in range(60):                      # the hook runs after every step of 0.5 s
        clock[0] += 0.5
        trainer.step += 1
        replan(trainer)
        if trainer.step == 29:
            assert tc.steps == 100           # not before REPLAN_AT of the way
    # the first step (startup included) is left out: rate from step 1 to 30 = 0.5 s a step
    assert replan.replanned == tc.steps == tc.lr_decay_steps == 30 + int(85.0 / 0.5)
    capped = Replan(start=0, end=100, deadline=1000.0 + 10 ** 6, cap=500, clock=lambda: clock[0])
    trainer.step, tc.steps = 0, 100
    for _ in range(40):
        clock[0] += 0.5
        trainer.step += 1
        capped(trainer)
    assert tc.steps == 500                   # never past the steps the demo allows


def test_an_end_moved_later_mid_run_trains_the_batches_of_the_longer_run(tmp_path):
    """The on_step hook may move train.steps past the loader's last batch: training continues
    to the new end on the same data, bit for bit the run that had that end from the start."""
    from vco.train.checkpoint import load_tensors
    common = TINY + ["data.name=synthetic", "batch_size=8", "warmup_steps=0", "ckpt_every=1000"]

    def later(trainer):
        if trainer.step == 3:
            trainer.cfg.train.steps = 7
    moved = Trainer(build_config("jit-tiny", overrides=common + ["train.steps=4"]), tmp_path / "moved")
    assert moved.train(progress=False, on_step=later)["final_step"] == 7
    Trainer(build_config("jit-tiny", overrides=common + ["train.steps=7"]), tmp_path / "straight").train(progress=False)
    a, b = load_tensors(tmp_path / "moved"), load_tensors(tmp_path / "straight")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_loss_curve_plots_the_loss_terms_only(tmp_path, monkeypatch):
    """grad_norm, lr and the rates sit beside the losses in metrics.jsonl but are not losses."""
    import json
    import matplotlib.axes
    from vco.plots import plot_loss_curves
    labels = []
    real_plot = matplotlib.axes.Axes.plot
    monkeypatch.setattr(matplotlib.axes.Axes, "plot",
                        lambda self, *a, label=None, **k: labels.append(label) or real_plot(self, *a, label=label, **k))
    rows = [{"step": s, "skipped_steps": 0, "loss": 1.0 / s, "pix": 0.5 / s, "aux": 1e-3, "lr": 1e-3,
             "grad_norm": 2.0, "img_per_s": 30.0, "elapsed_s": float(s)} for s in (1, 2, 3)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert plot_loss_curves(tmp_path / "metrics.jsonl", tmp_path / "loss.png").is_file()
    assert labels == ["loss", "pix", "aux"]

"""`vco demo`: train a tiny preset for a wall-clock budget, then sample a grid, all inside it.

The budget covers the whole job: setup, training, sampling and plots. Before training, one
sampler evaluation is timed at the sampling batch, so the sampling time is known in advance and
training is given what remains (the trainer stops before a step would cross its limit). The
timed warmup steps then say how many steps that share holds, which is where the run and its
lr schedule end (a decaying one, ``--set train.lr_schedule=cosine``, reaches 0 there); once,
30% of the way, the steps trained since re-plan that end, so the budget is used whatever the
machine's speed (vco.train.time_budget).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import config as C

PLOT_RESERVE_S = 5.0          # grid PNG, loss curve, reading the checkpoint back
SAFETY = 1.15                 # sampling timed once; keep a margin for its variation
SAMPLING_SHARE = 0.3          # at most this share of the budget goes to sampling
MIN_STEPS, MIN_PER_CLASS = 8, 2


@dataclass
class Budget:
    """A wall-clock budget started at ``start`` (time.time())."""
    seconds: float
    start: float

    def left(self) -> float:
        return self.seconds - (time.time() - self.start)


def sampler_evaluations(cfg: C.Config) -> int:
    """Velocity evaluations of one sampling run: Heun 2 per step, 1 on the last; Euler 1."""
    return 2 * cfg.sampler.steps - 1 if cfg.sampler.method == "heun" else cfg.sampler.steps


@torch.no_grad()
def evaluation_seconds(model, cfg: C.Config, b: int, device="cpu") -> float:
    """Wall time of one guided velocity evaluation at batch ``b``, timed after a warm-up."""
    from .diffusion.sampler import guided_velocity
    from .semantic.stream import stream_times
    states = [torch.randn(s, device=device) for s in model.stream_shapes(b)]
    y = torch.zeros(b, dtype=torch.long, device=device)
    times = stream_times(cfg, len(states))
    w = cfg.sampler.cfg if cfg.sampler.cfg != 1.0 else 2.0       # time the (dearer) guided pass
    run = lambda: guided_velocity(model.eval(), states, 0.5, y, w, cfg.model.num_classes,
                                  cfg.diffusion.t_eps, times)
    run()

    def timed() -> float:
        t = time.perf_counter()
        run()
        return time.perf_counter() - t
    # the faster of two: one timing after a single warm-up ran slow (the demo predicted 38 s of
    # sampling and took 19 s: training time lost); SAFETY still covers the spread
    return min(timed(), timed())


def sampling_seconds(per_eval: float, cfg: C.Config, num: int, b: int) -> float:
    """Predicted wall time of sampling ``num`` images in batches of ``b``: the evaluations the
    sampler makes, each ``per_eval`` seconds, times the batches."""
    return per_eval * sampler_evaluations(cfg) * -(-num // b)


def fit_sampling(model, cfg: C.Config, per_class: int, budget_s: float, device) -> tuple[int, float]:
    """Fewer Heun steps (down to 8), then fewer samples per class (down to 2), until sampling
    takes at most SAMPLING_SHARE of the budget; returns (per_class, predicted seconds) and sets
    cfg.sampler.steps. A slow machine gets a smaller grid, not a budget overrun."""
    per_eval: dict[int, float] = {}          # batch size -> seconds: timed once each
    while True:
        num = per_class * cfg.model.num_classes
        b = min(100, num)
        if b not in per_eval:
            per_eval[b] = evaluation_seconds(model, cfg, b, device)
        predicted = sampling_seconds(per_eval[b], cfg, num, b)
        if SAFETY * predicted <= SAMPLING_SHARE * budget_s:
            return per_class, predicted
        if cfg.sampler.steps > MIN_STEPS:
            cfg.sampler.steps = max(MIN_STEPS, int(cfg.sampler.steps * SAMPLING_SHARE * budget_s
                                                   / (SAFETY * predicted)))
        elif per_class > MIN_PER_CLASS:
            per_class -= 1
        else:
            return per_class, predicted


# A new demo run opts in to the convolutional pixel head (src/vco/nn/pixel_heads.py): in the
# minutes of a demo, JiT's per-patch linear head leaves the 4 px patch grid visible in every
# sample (docs/results/patch_seams.md). The presets, and so the miniature, keep the paper's head.
DEMO_HEAD = "model.pixel_head=conv"


def demo_overrides(preset: str, batch_size: int, data: str) -> list[str]:
    # Small batches give more optimizer steps in minutes; blr keeps the per-step lr at 1e-3. The
    # lr stays constant after the warmup (the presets' schedule): a cosine to 0 at the budget's
    # last step scored worse (FID-200 151 against 120 in 9 minutes; docs/results/lr_schedule/).
    overrides = [f"data.name={data}", f"train.batch_size={batch_size}",
                 f"train.blr={1e-3 * 256 / batch_size}", "train.log_every=5", "train.warmup_steps=50"]
    if C.build_config(preset).data.classes_per_batch:
        overrides.append(f"data.classes_per_batch={max(1, batch_size // 4)}")
    return overrides


def run_demo(out: str | Path, preset: str = "vco-tiny", minutes: float = 9.0, batch_size: int = 16,
             per_class: int = 6, sample_steps: int = 25, max_steps: int = 100_000,
             data: str = "fashion-mnist", extra: list[str] | None = None) -> dict:
    """Train (or continue) the demo run in ``out/run`` and write ``out/samples.png`` and
    ``out/loss.png``, all within ``minutes``; returns what was done and how long it took."""
    from .plots import plot_loss_curves
    from .sampling import class_labels, generate, save_grid
    from .train import Trainer, load_run_model
    from .train.time_budget import plan_schedule
    budget = Budget(minutes * 60, time.time())
    out, run = Path(out), Path(out) / "run"
    base, extra = demo_overrides(preset, batch_size, data), list(extra or [])
    if (run / "checkpoint.safetensors").exists():          # its config.yaml keeps its own head
        print(f"continuing the demo run in {run} (delete {out} to start afresh)")
        trainer = Trainer(C.build_config(config_file=run / "config.yaml", overrides=base + extra), run,
                          resume=True)
        trainer.cfg.train.steps = max(trainer.cfg.train.steps, trainer.step + max_steps)
    else:
        overrides = [*base, DEMO_HEAD, *extra, f"train.steps={max_steps}"]
        trainer = Trainer(C.build_config(preset, overrides=overrides), run)
    cfg = trainer.cfg
    cfg.sampler.steps = sample_steps
    per_class, predicted = fit_sampling(trainer.model, cfg, per_class, budget.seconds, trainer.device)
    sample_steps = cfg.sampler.steps
    num = per_class * cfg.model.num_classes
    sample_batch = min(100, num)
    reserve = SAFETY * predicted + PLOT_RESERVE_S
    train_s = budget.left() - reserve
    if train_s < 10:
        raise C.ConfigError(f"--minutes {minutes} leaves {max(train_s, 0):.0f} s for training once setup and "
                            f"sampling ({reserve:.0f} s here) are paid: give more minutes")
    started = trainer.step
    t_train = time.time()
    replan = plan_schedule(trainer, train_s)
    print(f"{minutes:g} min budget: {train_s / 60:.1f} min of training {cfg.preset} "
          f"({sum(p.numel() for p in trainer.model.parameters()) / 1e6:.1f}M params) to step "
          f"{replan.planned} ({trainer.cfg.train.lr_schedule} lr to that step, re-planned at step {replan.at}), "
          f"{reserve / 60:.1f} min kept for sampling {num} images at {sample_steps} Heun steps")
    summary = trainer.train(on_step=replan)
    summary.update(steps=trainer.step - started, seconds=time.time() - t_train)
    moved = f", the end moved from step {replan.planned} at step {replan.at}" if replan.replanned else ""
    print(f"trained to step {summary['final_step']} in {summary['seconds'] / 60:.1f} min{moved}")
    model, run_cfg, meta = load_run_model(run, "ema1", trainer.device)
    run_cfg.sampler.steps = sample_steps
    labels = class_labels(num, run_cfg.model.num_classes)
    t = time.time()
    images = generate(model, run_cfg, labels, seed=0, batch_size=sample_batch, device=trainer.device)
    sample_s = time.time() - t
    grid = save_grid(images, labels, meta["class_names"], out / "samples.png")
    curve = plot_loss_curves(run / "metrics.jsonl", out / "loss.png")
    total = budget.seconds - budget.left()
    print(f"sample grid: {grid}\nloss curve:  {curve}\nrun folder:  {run}\n"
          f"total {total / 60:.1f} min of the {minutes:g} min budget (sampling {sample_s:.0f} s, "
          f"predicted {predicted:.0f} s)")
    return {"steps": summary["steps"], "final_step": summary["final_step"], "train_s": summary["seconds"],
            "planned_step": replan.planned, "replanned_step": replan.replanned,
            "sample_s": sample_s, "predicted_sample_s": predicted, "total_s": total,
            "budget_s": budget.seconds, "grid": str(grid), "curve": str(curve)}

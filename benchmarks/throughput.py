"""Training and sampling throughput, achieved FLOP/s and its ratio to a matmul peak measured in
the same run.

    python benchmarks/throughput.py [--presets jit-tiny] [--batch 64] [--precisions fp32 bf16]

Prints one block per (preset, precision) and a summary table. One training step is the
trainer's own (for V-Co: encoder targets, dual-stream model, hybrid loss through the frozen
encoder). FLOPs are counted with torch.utils.flop_counter on one real step (matmuls, convs and
attention), so the ratio is the useful arithmetic over the best a large matmul showed.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from vco.config import build_config
from vco.models import build_model, count_params
from vco.sampling import generate
from vco.train import Trainer


def matmul_peak(dtype: torch.dtype, device: str, n: int = 2048, reps: int = 5) -> float:
    """Best GFLOP/s of an n x n x n matmul."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(reps + 1):
        _sync(device)
        t = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def bench_train(cfg, batch: int, precision: str, steps: int, device: str, run_dir: str) -> dict:
    """Time the trainer's own optimizer step (V-Co: semantic targets and hybrid loss included)."""
    cfg.train.batch_size, cfg.train.precision, cfg.train.device = batch, precision, device
    cfg.data.name, cfg.data.synthetic_size = "synthetic", max(batch, 64)
    cfg.semantic.stats_images = 64
    trainer = Trainer(cfg, run_dir)
    loader = iter(trainer.loader(0, steps + 1))

    def step():
        trainer.train_step([next(loader)])

    with FlopCounterMode(display=False) as counter:
        step()                                  # also the warm-up step
    flops = counter.get_total_flops()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    _sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    dt = (time.perf_counter() - t) / steps
    peak_mem = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    return {"train_img_s": batch / dt, "step_s": dt, "flops_per_step": flops,
            "gflops_s": flops / dt / 1e9, "peak_mem_gib": peak_mem}


def bench_sample(cfg, batch: int, precision: str, sample_steps: int, device: str) -> dict:
    cfg.train.precision = precision
    cfg.sampler.steps, cfg.sampler.cfg = sample_steps, 2.0
    model = build_model(cfg.model, device).eval()
    labels = torch.arange(batch) % cfg.model.num_classes
    generate(model, cfg, labels[:2], batch_size=2, device=device, progress=False)   # warm-up
    _sync(device)
    t = time.perf_counter()
    generate(model, cfg, labels, batch_size=batch, device=device, progress=False)
    _sync(device)
    return {"sample_img_s": batch / (time.perf_counter() - t)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=["jit-tiny", "vco-tiny"])
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=5, help="timed training steps")
    p.add_argument("--sample-steps", type=int, default=50, help="Heun steps per sample (with CFG)")
    p.add_argument("--sample-batch", type=int, default=32)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--set", nargs="*", default=[], help="config overrides for every preset")
    args = p.parse_args()
    torch.set_flush_denormal(True)

    peaks = {"bf16": matmul_peak(torch.bfloat16, args.device), "fp32": matmul_peak(torch.float32, args.device)}
    print(f"device {args.device}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"matmul peak 2048^3: bf16 {peaks['bf16']:.0f} GFLOP/s, fp32 {peaks['fp32']:.0f} GFLOP/s")
    rows = []
    for preset in args.presets:
        for precision in args.precisions:
            cfg = build_config(preset, overrides=args.set)
            r = {"preset": preset, "precision": precision, "params": count_params(cfg.model)}
            with tempfile.TemporaryDirectory() as run_dir:
                r.update(bench_train(cfg, args.batch, precision, args.steps, args.device, run_dir))
            r.update(bench_sample(cfg, args.sample_batch, precision, args.sample_steps, args.device))
            r["frac_bf16_peak"] = r["gflops_s"] / peaks["bf16"]
            r["frac_own_peak"] = r["gflops_s"] / peaks[precision]
            rows.append(r)
            print(f"{preset} {precision}: train {r['train_img_s']:.1f} img/s ({r['step_s']:.3f} s/step, "
                  f"batch {args.batch}), {r['flops_per_step'] / 1e9:.1f} GFLOP/step -> "
                  f"{r['gflops_s']:.1f} GFLOP/s = {100 * r['frac_bf16_peak']:.1f}% of bf16 peak, "
                  f"{100 * r['frac_own_peak']:.1f}% of {precision} peak; sample {r['sample_img_s']:.2f} img/s "
                  f"({args.sample_steps} Heun steps, CFG); peak mem {r['peak_mem_gib']:.2f} GiB")
    print("\n| preset | precision | params | train img/s | sample img/s | GFLOP/s | % bf16 peak | % own peak |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['preset']} | {r['precision']} | {r['params'] / 1e6:.1f}M | {r['train_img_s']:.1f} | "
              f"{r['sample_img_s']:.2f} | {r['gflops_s']:.1f} | {100 * r['frac_bf16_peak']:.1f} | "
              f"{100 * r['frac_own_peak']:.1f} |")


if __name__ == "__main__":
    main()

"""Training and sampling throughput, achieved FLOP/s and its ratio to a matmul peak measured in
the same run.

    python benchmarks/throughput.py [--presets jit-tiny vco-tiny vco-b16] [--batch 64] [--precisions fp32 bf16]
    python benchmarks/throughput.py --compare-masked      # last line: masked_speedup=<ratio>

Prints one line per (preset, precision), each measured in a fresh process (its peak memory is
its own), and a summary table. 256 px presets on a CPU run at batch 4 and sample 2 Heun steps;
without downloaded weights their DINOv2 is the same architecture with random weights. One training step is the
trainer's own (for V-Co: encoder targets, dual-stream model, hybrid loss through the frozen
encoder). FLOPs are counted with torch.utils.flop_counter on one real step (matmuls, convs and
attention), so the ratio is the useful arithmetic over the best a large matmul showed.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from vco.config import build_config
from vco.models import build_model, count_params
from vco.sampling import generate
from vco.train import Trainer
from vco.device import cpu_has_bf16


def matmul_peak(dtype: torch.dtype, device: str, n: int = 2048, reps: int = 5) -> float:
    """Best GFLOP/s of an n x n x n matmul (n shrinks where the dtype is emulated and slow, e.g.
    bf16 on an AVX2 CPU, so that one product takes about a second)."""
    probe = torch.randn(256, 256, device=device, dtype=dtype)
    _sync(device)
    t = time.perf_counter()
    probe @ probe
    _sync(device)
    rate = 2 * 256 ** 3 / max(time.perf_counter() - t, 1e-9)
    while n > 256 and 2 * n ** 3 / rate > 1.0:
        n //= 2
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


REDUCED_CPU_BATCH = 4       # 256 px presets on a CPU: a few images per step are enough to time
OFFLINE_ENCODER = {"dinov2": "dinov2_random"}   # same architecture and FLOPs, no download


def bench_one(preset: str, precision: str, args) -> dict:
    """One (preset, precision) in this process; peak memory is this process's."""
    cfg = build_config(preset, overrides=args.set)
    big = cfg.model.image_size >= 256 and args.device == "cpu"
    batch, sample_batch = (REDUCED_CPU_BATCH, 2) if big else (args.batch, args.sample_batch)
    sample_steps = 2 if big else args.sample_steps
    if cfg.model.co_denoising:
        cfg.semantic.encoder = OFFLINE_ENCODER.get(cfg.semantic.encoder, cfg.semantic.encoder)
        cfg.semantic.stats_images, cfg.semantic.stats = 2 * batch, None
    params = count_params(cfg.model)
    if big:   # synthetic data has at most 64 classes; a smaller label table changes no compute
        cfg.model.num_classes = 64
    r = {"preset": preset, "precision": precision, "params": params, "batch": batch,
         "sample_steps": sample_steps, "encoder": cfg.semantic.encoder if cfg.model.co_denoising else "-"}
    with tempfile.TemporaryDirectory() as run_dir:
        r.update(bench_train(cfg, batch, precision, args.steps, args.device, run_dir))
    r.update(bench_sample(cfg, sample_batch, precision, sample_steps, args.device))
    if args.device == "cpu":
        r["peak_mem_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return r


def compare_masked(device: str, batch: int = 8, reps: int = 10) -> float:
    """vco-b16's joint attention (2 x 288 tokens, 12 heads of 64) on a CFG batch (cond + uncond
    halves): the official dense float mask built per forward vs the mask-free path."""
    from vco.nn.attention import StructuralMask, joint_attention
    h, n, d = 12, 288, 64
    g = torch.Generator(device).manual_seed(0)
    q, k, v = (torch.randn(batch, h, 2 * n, d, generator=g, device=device) for _ in range(3))
    drop = torch.arange(batch, device=device) >= batch // 2
    mask = StructuralMask(drop, n)

    def dense():
        m = torch.zeros(batch, 1, 2 * n, 2 * n, device=device)
        m[drop, :, :n, n:] = float("-inf")
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=m)

    def free():
        return joint_attention(q, k, v, mask)

    err = (dense() - free()).abs().max().item()
    times = {}
    for fn in (dense, free, dense, free):                     # interleaved, best of reps
        best = float("inf")
        for _ in range(reps):
            _sync(device)
            t = time.perf_counter()
            fn()
            _sync(device)
            best = min(best, time.perf_counter() - t)
        times[fn.__name__] = min(best, times.get(fn.__name__, float("inf")))
    print(f"joint attention, batch {batch} (half unconditional), 12 heads x 576 tokens x 64: "
          f"dense float mask {1e3 * times['dense']:.1f} ms, mask-free {1e3 * times['free']:.1f} ms, "
          f"max |difference| {err:.1e}")
    return times["dense"] / times["free"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=["jit-tiny", "vco-tiny", "vco-b16"])
    p.add_argument("--precisions", nargs="+", default=None,
                   help="default: fp32 and bf16, or fp32 alone on a CPU that emulates bf16")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=5, help="timed training steps")
    p.add_argument("--sample-steps", type=int, default=50, help="Heun steps per sample (with CFG)")
    p.add_argument("--sample-batch", type=int, default=32)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--set", nargs="*", default=[], help="config overrides for every preset")
    p.add_argument("--compare-masked", action="store_true",
                   help="only time the structural-CFG attention: dense mask vs mask-free")
    p.add_argument("--one", nargs=2, metavar=("PRESET", "PRECISION"), help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_flush_denormal(True)
    if args.one:                                   # a child process: one configuration, JSON out
        print("RESULT " + json.dumps(bench_one(*args.one, args)))
        return
    if args.compare_masked:
        print(f"device {args.device}, {torch.get_num_threads()} threads, torch {torch.__version__}")
        print(f"masked_speedup={compare_masked(args.device):.3f}")
        return

    if args.precisions is None:
        native = args.device == "cuda" or cpu_has_bf16()
        args.precisions = ["fp32", "bf16"] if native else ["fp32"]
    peaks = {"bf16": matmul_peak(torch.bfloat16, args.device), "fp32": matmul_peak(torch.float32, args.device)}
    print(f"device {args.device}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"matmul peak: bf16 {peaks['bf16']:.1f} GFLOP/s, fp32 {peaks['fp32']:.1f} GFLOP/s")
    rows = []
    for preset in args.presets:
        for precision in args.precisions:
            # a fresh process per configuration, so that its peak memory is its own
            cmd = [sys.executable, __file__, "--one", preset, precision, "--batch", str(args.batch),
                   "--steps", str(args.steps), "--sample-steps", str(args.sample_steps),
                   "--sample-batch", str(args.sample_batch), "--device", args.device, "--set", *args.set]
            out = subprocess.run(cmd, capture_output=True, text=True)
            line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
            if out.returncode or not line:
                print(f"{preset} {precision}: failed\n{out.stderr[-2000:]}")
                continue
            r = json.loads(line[-1][7:])
            r["frac_bf16_peak"] = r["gflops_s"] / peaks["bf16"]
            r["frac_own_peak"] = r["gflops_s"] / peaks[precision]
            rows.append(r)
            print(f"{preset} {precision}: train {r['train_img_s']:.2f} img/s ({r['step_s']:.3f} s/step, "
                  f"batch {r['batch']}), {r['flops_per_step'] / 1e9:.1f} GFLOP/step -> "
                  f"{r['gflops_s']:.1f} GFLOP/s = {100 * r['frac_bf16_peak']:.1f}% of bf16 peak, "
                  f"{100 * r['frac_own_peak']:.1f}% of {precision} peak; sample {r['sample_img_s']:.3f} img/s "
                  f"({r['sample_steps']} Heun steps, CFG); peak mem {r['peak_mem_gib']:.2f} GiB", flush=True)
    print("\n| preset | precision | params | batch | train img/s | sample img/s (Heun steps) | GFLOP/s | "
          "% bf16 peak | % own peak | peak mem GiB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['preset']} | {r['precision']} | {r['params'] / 1e6:.1f}M | {r['batch']} | "
              f"{r['train_img_s']:.2f} | {r['sample_img_s']:.3f} ({r['sample_steps']}) | {r['gflops_s']:.1f} | "
              f"{100 * r['frac_bf16_peak']:.1f} | {100 * r['frac_own_peak']:.1f} | {r['peak_mem_gib']:.2f} |")


if __name__ == "__main__":
    main()

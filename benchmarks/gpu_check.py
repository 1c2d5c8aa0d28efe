"""One-command GPU check: correctness on the device, training and sampling throughput, MFU, the
mask-free attention, and one-process DDP / FSDP2 with NCCL. Writes gpu_check.json and gpu_check.md.

    bash scripts/gpu_check.sh [--out DIR]          # on a GPU machine (WHEELS=wheels/ installs missing wheels)
    python benchmarks/gpu_check.py --smoke --out /tmp/gpu_smoke   # the same code at tiny sizes, CPU allowed

Sections (each item runs in its own process with its own timeout; a failing or timed-out item is
recorded with its error and the others go on; the JSON and markdown are rewritten after every item):
  1. correctness: tests/test_device.py on the device (pytest, VCO_TEST_DEVICE=cuda), and vco-tiny's
     forward, loss, gradients and one AdamW step in fp32 on the GPU against the CPU (TF32 off);
  2. training throughput and MFU: vco-b16 (DINOv2-B of random weights) and jit-b16 at the largest
     per-GPU batch of 128/64/32 that fits, bf16, eager and train.compile=true; FLOPs counted with
     FlopCounterMode on one real step, MFU against a bf16 matmul peak measured in this run, peak
     memory, and the share of the frozen encoder and the hybrid loss (benchmarks/recipe_b16.py);
  3. sampling throughput: vco-b16, 50 Heun steps with CFG, batch 256 or the largest that fits;
  4. attention: mask-free structural attention vs the dense float mask at vco-b16's sequence;
  5. DDP and FSDP2 in a world of one with NCCL, via torchrun and `vco train`, against a plain run.

Items, in the order they run on a GPU (goals first): peak, agreement, attention, train_vco-b16
(eager, then the same trainer compiled), sample (eager, then compiled), pytest, parallel,
train_jit-b16. They share --budget-s (default 560 s, so that the whole check fits a 10-minute
command); an item gets what is left (up to its own timeout), one that no longer fits is recorded as
skipped, and `--only ITEM ...` with the same --out reruns it, keeping the other results.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import gc
import io
import json
import math
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import xml.etree.ElementTree as ET
from collections import deque
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT / "benchmarks", ROOT / "src"):          # vco importable without an install
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

T0 = float(os.environ.get("GPU_CHECK_T0", time.time()))
U32 = 2.0 ** -24                  # unit roundoff of fp32 (round to nearest): half its machine epsilon

# jit-b16 / vco-b16 shrunk for --smoke: same code paths (DINOv2-B random encoder, dual stream,
# hybrid loss, CFG), a few seconds a step on a CPU.
SMOKE_B16 = ["image_size=64", "hidden_size=64", "depth=2", "num_heads=2", "bottleneck_dim=16",
             "in_context_len=4", "in_context_start=1", "num_classes=10"]


def log(msg: str) -> None:
    print(f"[{datetime.datetime.now():%H:%M:%S} +{time.time() - T0:6.1f}s] {msg}", flush=True)


def is_oom(e: BaseException) -> bool:
    import torch
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


def sync(device) -> None:
    import torch
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def free_memory() -> None:
    import torch
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def dynamo_graphs() -> int:
    """Graphs torch.compile has compiled so far in this process (grows with every recompilation)."""
    try:
        from torch._dynamo.utils import counters
        return int(counters["stats"]["unique_graphs"])
    except Exception:                          # noqa: BLE001
        return -1


def time_left(spec: dict) -> float:
    return spec.get("deadline", float("inf")) - time.time()


class Record(dict):
    """A child's result, rewritten to its file on every update (a killed child keeps what it had)."""

    def __init__(self, path: str):
        super().__init__()
        self.path = Path(path)

    def set(self, **kw) -> None:
        self.update(kw)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self, default=str))
        tmp.replace(self.path)


# ============================================================================ section 0: peak
def child_peak(spec: dict, rec: Record) -> None:
    """Best matmul throughput: n x n x n products, bf16 and fp32 (TF32 off), in TFLOP/s."""
    import torch
    dev = spec["device"]
    rec.set(torch=torch.__version__, cuda=torch.version.cuda, python=platform.python_version(),
            threads=torch.get_num_threads())
    if dev == "cuda":
        p = torch.cuda.get_device_properties(0)
        rec.set(gpu=p.name, capability=f"{p.major}.{p.minor}", gpu_mem_gib=round(p.total_memory / 2**30, 1),
                sms=p.multi_processor_count)
        torch.backends.cuda.matmul.allow_tf32 = False
        n = spec.get("n", 8192)
        for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
            a = torch.randn(n, n, device=dev, dtype=dtype)
            b = torch.randn(n, n, device=dev, dtype=dtype)
            for _ in range(3):
                a @ b
            times = []
            for _ in range(spec.get("reps", 10)):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                a @ b
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
            rec.set(**{f"{name}_tflops": 2 * n ** 3 / min(times) / 1e12,
                       f"{name}_tflops_median": 2 * n ** 3 / statistics.median(times) / 1e12, "n": n})
            del a, b
            log(f"matmul peak {name}: {rec[f'{name}_tflops']:.1f} TFLOP/s ({n}^3)")
    else:
        from throughput import matmul_peak    # shrinks n where the dtype is emulated (bf16 on AVX2)
        from vco.device import cpu_has_bf16, cpu_name
        rec.set(cpu=cpu_name(), native_bf16=cpu_has_bf16())
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            rec.set(**{f"{name}_tflops": matmul_peak(dtype, "cpu", n=spec.get("n", 1024), reps=3) / 1e3})
            log(f"matmul peak {name}: {1e3 * rec[f'{name}_tflops']:.1f} GFLOP/s")


# ============================================================================ section 1: agreement
def fp32_tolerance(k: int, depth: int, safety: float = 8.0) -> float:
    """Relative tolerance between two fp32 evaluations of the same network that differ only in
    summation order (GPU kernels vs CPU kernels, TF32 off).

    A dot product of length K accumulated in fp32 has the error bound |fl(s) - s| <= K u sum|a_i b_i|
    (u = 2^-24); with independent rounding errors the expected error is ~ sqrt(K) u sum|a_i b_i|,
    and for the roughly incoherent sums of a network, sum|a_i b_i| is of the order of the output's
    magnitude. Along a chain of D such layers the relative errors add up like a random walk,
    ~ sqrt(D). Both devices round, and norms, softmax, SiLU and the libm functions (exp, rsqrt,
    sin/cos, which differ by an ulp or two between CPU and GPU) add their own: ``safety`` = 8 covers
    these and the factor 2 of two-sided rounding. So the tolerance is
        safety * sqrt(K) * sqrt(D) * u * max|reference|,
    K the longest reduction (the widest layer input or the attended sequence), D the matmul/conv
    layers on the path (twice as many for gradients)."""
    return safety * math.sqrt(k) * math.sqrt(depth) * U32


def cpu_drawn(seed: int, device, dtype):
    """The objective's random numbers drawn on the CPU from one seeded generator and moved to the
    device (in the run's dtype): both devices see the very same t, noise and CFG drops, which
    generators on the GPU would not give."""
    import torch
    from vco.diffusion.randomness import SharedStream

    class CpuDrawn(SharedStream):
        def rand(self, n):
            return torch.rand(n, generator=self.generator).to(self.device)

        def randn(self, shape, _dtype=None):
            return torch.randn(tuple(shape), generator=self.generator).to(self.device, dtype)

    return CpuDrawn(torch.Generator().manual_seed(seed), device)


def _run_side(objective, x, y, f, device, dtype, seed, lr, cfg, variant=None):
    """One training step of ``objective`` on (device, dtype): forward outputs, loss terms,
    gradients, and the weights before and after one AdamW step. ``variant`` "cpu_other_kernels":
    oneDNN off, so that a CPU-only smoke still compares two summation orders."""
    import torch
    if variant == "cpu_other_kernels":
        with torch.backends.mkldnn.flags(enabled=False):
            return _run_side(objective, x, y, f, device, dtype, seed, lr, cfg)
    from vco.train.trainer import param_groups
    objective = objective.to(device, dtype)
    objective.train()
    captured = {}
    hook = objective.model.register_forward_hook(
        lambda m, a, out: captured.update(x_pred=out[0].detach(), f_pred=out[1].detach()))
    terms = objective(x.to(device, dtype), y.to(device), f.to(device, dtype), cpu_drawn(seed, device, dtype))
    terms["loss"].backward()
    hook.remove()
    params = dict(objective.model.named_parameters())
    grads = {n: p.grad.detach().clone() for n, p in params.items() if p.grad is not None}
    before = {n: p.detach().clone() for n, p in params.items()}
    # the trainer's AdamW implementation (train.adamw: auto = fused where there is no FSDP)
    kind = getattr(cfg.train, "adamw", "loop")
    kind = "fused" if kind == "auto" else kind
    impl = {"fused": {"fused": True}, "foreach": {"foreach": True}, "loop": {"foreach": False}}.get(kind, {})
    opt = torch.optim.AdamW(param_groups(params, cfg.train.weight_decay), lr=lr, betas=tuple(cfg.train.betas),
                            **impl)
    opt.step()
    after = {n: p.detach().clone() for n, p in params.items()}
    cpu = lambda d: {k: v.double().cpu() for k, v in d.items()}
    return (cpu(captured), {k: float(v.detach()) for k, v in terms.items()}, cpu(grads), cpu(before), cpu(after))


def child_agreement(spec: dict, rec: Record) -> None:
    """vco-tiny (full size: hidden 256, depth 6, MobileNetV2 targets, hybrid loss) in fp32 on the
    test device against the reference device: forward, loss, gradients, one AdamW step."""
    import torch
    import torch.nn as nn
    from vco.config import build_config
    from vco.data import build_dataset, to_model_range
    from vco.models import build_model
    from vco.semantic.stream import encoder_from_config
    from vco.train.objective import build_objective

    torch.backends.cuda.matmul.allow_tf32 = False      # fp32 means fp32 for this comparison
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    ref_dev, test_dev = spec["ref_device"], spec["test_device"]
    ref_dtype, test_dtype = getattr(torch, spec["ref_dtype"]), getattr(torch, spec["test_dtype"])
    rec.set(reference=f"{ref_dev} {spec['ref_dtype']}",
            test=f"{test_dev} {spec['test_dtype']}" + (f" ({spec['variant']}: oneDNN off)"
                                                        if spec.get("variant") else ""),
            tf32="off (torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False)")
    b = spec.get("batch", 16)
    cfg = build_config("vco-tiny", overrides=["data.name=synthetic", "synthetic_size=64", "precision=fp32",
                                              f"batch_size={b}", "hflip=false"])
    data = build_dataset(cfg.data, cfg.model.image_size, cfg.model.num_classes)
    images = torch.stack([data[i][0] for i in range(b)])
    y = torch.tensor([int(data[i][1]) for i in range(b)])
    x = to_model_range(images)
    torch.manual_seed(0)
    model = build_model(cfg.model)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():        # adaLN-Zero and the zero heads would make x_pred = 0 on both devices
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    encoder = encoder_from_config(cfg)
    with torch.no_grad():         # inputs only: the encoder's features standardised over the batch
        raw = encoder.patch_features(x).float()
        f = (raw - raw.mean((0, 1))) / raw.std((0, 1)).clamp(min=1e-6) * 0.5
    objective = build_objective(cfg, model, encoder)
    # what sets the tolerance: the widest reduction and the number of layers on the path
    layers = [m for m in objective.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    depth_model = sum(isinstance(m, (nn.Linear, nn.Conv2d)) for m in model.modules())
    k_max = max([m.in_features if isinstance(m, nn.Linear) else m.weight[0].numel() for m in layers]
                + [int(sum(s[1] if len(s) == 3 else (s[2] * s[3]) // cfg.model.patch_size ** 2
                           for s in model.stream_shapes(1)) + cfg.model.in_context_len)])
    depth_loss = len(layers)
    lr = cfg.train.blr * b / 256
    rec.set(batch=b, lr=lr, k_max=k_max, layers_model=depth_model, layers_loss_path=depth_loss,
            adamw=getattr(cfg.train, "adamw", "loop"))
    t = time.time()
    ref = _run_side(copy.deepcopy(objective), x, y, f, ref_dev, ref_dtype, 7, lr, cfg)
    rec.set(ref_s=round(time.time() - t, 2))
    t = time.time()
    test = _run_side(copy.deepcopy(objective), x, y, f, test_dev, test_dtype, 7, lr, cfg, spec.get("variant"))
    rec.set(test_s=round(time.time() - t, 2))
    log(f"agreement: reference {ref_dev} {rec['ref_s']} s, test {test_dev} {rec['test_s']} s")

    rows = []

    def compare(name, a, r, tol_rel):
        err = float((a - r).abs().max()) if a.numel() else 0.0
        scale = float(r.abs().max()) if r.numel() else 0.0
        tol = tol_rel * scale
        rows.append({"quantity": name, "max_abs_diff": err, "scale": scale, "tol": tol,
                     "ratio": err / tol if tol > 0 else (0.0 if err == 0 else float("inf")),
                     "ok": err <= tol})

    tol_fwd, tol_loss = fp32_tolerance(k_max, depth_model), fp32_tolerance(k_max, depth_loss)
    tol_grad = fp32_tolerance(k_max, 2 * depth_loss)
    for k in ("x_pred", "f_pred"):
        compare(f"forward {k}", test[0][k], ref[0][k], tol_fwd)
    for k in ref[1]:
        compare(f"loss term {k}", torch.tensor(test[1][k]), torch.tensor(ref[1][k]), tol_loss)
    # gradients: the worst tensor (relative to that tensor's largest gradient)
    worst = None
    for k in ref[2]:
        before = len(rows)
        compare(f"gradient {k}", test[2][k], ref[2][k], tol_grad)
        row = rows.pop(before)
        if worst is None or row["ratio"] > worst["ratio"]:
            worst = dict(row, quantity=f"gradient (worst tensor: {k})")
    rows.append(worst)
    # one AdamW step from identical weights: at step 1 the update is -lr g / (|g| + eps) (bias
    # corrections cancel), so where |g| is within the gradient tolerance dg of 0 the two updates may
    # differ by up to 2 lr, elsewhere by lr eps dg / (|g| - dg + eps)^2; plus a few ulps of the
    # update's own arithmetic (8 u lr) and of the rounded new weight (4 u max(|w0|, |w1|)).
    eps = 1e-8
    worst_w, near_zero, exact_zero, n_el = 0.0, 0, 0, 0
    worst_name, worst_err, worst_bound = "", 0.0, 0.0
    for k in ref[4]:
        g_ref = ref[2].get(k)
        diff = (test[4][k] - ref[4][k]).abs()
        rounding = 4 * U32 * torch.maximum(ref[3][k].abs(), ref[4][k].abs()) + 1e-30
        if g_ref is None:
            bound = rounding
        else:
            dg = tol_grad * float(g_ref.abs().max())
            lo = (g_ref.abs() - dg).clamp(min=0)
            bound = lr * (torch.minimum(torch.full_like(lo, 2.0), eps * dg / (lo + eps) ** 2) + 8 * U32) + rounding
            near_zero += int((g_ref.abs() <= dg).sum())
            exact_zero += int((g_ref == 0).sum())
        n_el += diff.numel()
        r = float((diff / bound).max())
        if r > worst_w:
            worst_w, worst_name = r, k
            i = int((diff / bound).argmax())
            worst_err, worst_bound = float(diff.flatten()[i]), float(bound.flatten()[i])
    rows.append({"quantity": f"weights after one AdamW step (worst: {worst_name or '-'})",
                 "max_abs_diff": worst_err, "scale": lr, "tol": worst_bound, "ratio": worst_w,
                 "ok": worst_w <= 1.0,
                 "note": f"AdamW step: {near_zero} of {n_el} weights have |g| within the gradient tolerance of 0 "
                         f"({exact_zero} exactly 0 on the reference), where the bound allows up to 2 lr"})
    rec.set(rows=rows, tol_rel={"forward": tol_fwd, "loss": tol_loss, "gradient": tol_grad},
            ok=all(r["ok"] for r in rows))
    log(f"agreement: {'within' if rec['ok'] else 'OUTSIDE'} tolerance; worst ratio "
        f"{max(r['ratio'] for r in rows):.3f}")


# ============================================================================ section 2: training
def b16_overrides(preset: str, smoke: bool) -> list[str]:
    ov = list(SMOKE_B16) if smoke else []
    if preset.startswith("vco"):
        ov += ["semantic.encoder=dinov2_random", "semantic.encoder_path=null"]
    return ov


def child_train(spec: dict, rec: Record) -> None:
    """The trainer's own step at the largest batch that fits: FLOPs of one real step, then eager
    throughput and peak memory, then the same trainer compiled (train.compile=true does
    model.compile() in place); for V-Co each mode's step part by part (recipe_b16.step_parts)."""
    import torch
    rec.set(preset=spec["preset"], precision=spec["precision"], oom=[])
    for b in spec["batches"]:
        failed = None
        try:
            _train_at(spec, rec, b)
            return
        except Exception as e:            # noqa: BLE001 - OOM is an answer, not a failure
            if not is_oom(e) or "eager" in rec:
                raise
            failed = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        rec.set(oom=rec["oom"] + [b])
        log(f"{spec['preset']}: batch {b} does not fit ({failed}); next")
        free_memory()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
    raise RuntimeError(f"no batch of {spec['batches']} fits")


def _train_at(spec: dict, rec: Record, b: int) -> None:
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from vco.config import build_config
    from vco.train import Trainer
    dev, preset = spec["device"], spec["preset"]
    ov = b16_overrides(preset, spec["smoke"]) + [
        "data.name=synthetic", f"data.synthetic_size={max(2 * b, 64)}", f"train.batch_size={b}",
        f"train.device={dev}", f"train.precision={spec['precision']}", "train.warmup_steps=0",
        "train.log_every=100000", "train.ckpt_every=100000", "data.hflip=true"]
    if preset.startswith("vco"):
        ov += [f"semantic.stats_images={min(64, 2 * b)}"]
    cfg = build_config(preset, overrides=ov)
    steps, repeats = spec["steps"], spec["parts_repeats"]
    with tempfile.TemporaryDirectory() as run_dir:
        t = time.time()
        trainer = Trainer(cfg, run_dir)
        n = 2 + spec["warmup"] + spec["compile_warmup"] + 2 * (steps + repeats)
        loader = iter(trainer.loader(0, n))
        log(f"{preset} batch {b}: trainer ready in {time.time() - t:.1f} s")

        def step():
            trainer.train_step([next(loader)])   # synchronises: it reads the loss as a float

        if dev == "cuda":
            torch.cuda.reset_peak_memory_stats()
        with FlopCounterMode(display=False) as counter:      # one real step, eager, also a warm-up
            step()
        flops = counter.get_total_flops()
        rec.set(batch=b, flops_per_step=flops, params=sum(p.numel() for p in trainer.model.parameters()))

        def measure(mode: str, warmup: int) -> None:
            for _ in range(warmup):
                step()
            sync(dev)
            graphs = dynamo_graphs()
            if dev == "cuda":
                torch.cuda.reset_peak_memory_stats()
            times = []
            for _ in range(steps):
                t = time.perf_counter()
                step()
                sync(dev)
                times.append(time.perf_counter() - t)
            dt = statistics.median(times)
            r = dict(rec.get(mode, {}), step_s=dt, step_s_max=max(times), timed_steps=steps, img_s=b / dt,
                     tflops_s=flops / dt / 1e12,
                     peak_mem_gib=torch.cuda.max_memory_allocated() / 2**30 if dev == "cuda" else None)
            if mode == "compile":
                r.update(dynamo_graphs=dynamo_graphs(), recompiled_while_timed=dynamo_graphs() > graphs)
            rec.set(**{mode: r})
            log(f"{preset} batch {b} {mode}: {b / dt:.1f} img/s, {flops / dt / 1e12:.3g} TFLOP/s, step {dt:.3f} s")
            if trainer.semantic is None or not repeats:
                return
            if time_left(spec) < 3 * repeats * dt + 10:
                rec.set(**{mode: dict(r, parts_skipped="not enough time left in this item's budget")})
                return
            from recipe_b16 import step_parts
            parts = [step_parts(trainer, next(loader)) for _ in range(repeats)]
            med = {k: statistics.median(p[k] for p in parts) for k in parts[0]}
            total = sum(med.values())
            rec.set(**{mode: dict(r, parts_s=med, parts_total_s=total, share_encoder_targets=med["targets"] / total,
                                  share_hybrid_loss=med["hybrid loss"] / total)})
            log(f"{preset} {mode}: encoder targets {100 * med['targets'] / total:.1f}%, hybrid loss "
                f"{100 * med['hybrid loss'] / total:.1f}% of the step's parts")

        measure("eager", spec["warmup"])
        if not spec.get("compile", True):
            return
        if time_left(spec) < spec.get("compile_min_s", 60):
            rec.set(compile={"skipped": f"{time_left(spec):.0f} s left in this item's budget"})
            return
        try:
            trainer.model.compile(backend=spec["backend"])   # what train.compile=true does, after counting
            t = time.time()
            step()
            sync(dev)
            rec.set(compile={"first_compiled_step_s": round(time.time() - t, 1), "backend": spec["backend"]})
            log(f"{preset} batch {b}: first compiled step {rec['compile']['first_compiled_step_s']} s")
            # the in-context tokens and the varying number of CFG-dropped samples recompile a few times
            measure("compile", spec["compile_warmup"])
        except Exception as e:                # noqa: BLE001 - eager results stay
            rec.set(compile=dict(rec.get("compile", {}), error=f"{type(e).__name__}: {e}"[:2000],
                                 traceback=traceback.format_exc()[-3000:]))
            log(f"{preset} compile: {type(e).__name__}: {str(e)[:300]}")


# ============================================================================ section 3: sampling
def eval_units(steps: int, sampler_cfg) -> int:
    """Model rows per sample of a `steps`-step Heun run: 2 for a guided evaluation (cond + uncond
    batched), 1 outside the CFG interval; the last interval is Euler (vco.diffusion.sampler)."""
    import torch
    from vco.diffusion.sampler import guidance_scale
    grid = torch.linspace(0, 1, steps + 1, dtype=torch.float32).tolist()
    w = lambda t: 2 if guidance_scale(t, sampler_cfg) != 1.0 else 1
    return sum(w(grid[k]) + (w(grid[k + 1]) if k < steps - 1 else 0) for k in range(steps))


def child_sample(spec: dict, rec: Record) -> None:
    """vco-b16 sampling at the largest batch that fits, eager, then the same model compiled."""
    import torch
    from vco.config import build_config
    from vco.models import build_model
    dev = spec["device"]
    cfg = build_config("vco-b16", overrides=b16_overrides("vco-b16", spec["smoke"])
                       + [f"train.precision={spec['precision']}", "sampler.steps=50"])
    torch.manual_seed(0)
    model = build_model(cfg.model, dev).eval()
    rec.set(precision=spec["precision"], cfg_scale=cfg.sampler.cfg, oom=[],
            interval=[cfg.sampler.interval_min, cfg.sampler.interval_max],
            rows_per_sample_50=eval_units(50, cfg.sampler))
    for b in spec["batches"]:
        failed = None
        try:
            _sample_at(spec, rec, model, cfg, b, "eager")
            break
        except Exception as e:            # noqa: BLE001
            if not is_oom(e):
                raise
            failed = str(e).splitlines()[0][:200]
        rec.set(oom=rec["oom"] + [b])
        log(f"sampling: batch {b} does not fit ({failed}); next")
        free_memory()
    else:
        raise RuntimeError(f"no batch of {spec['batches']} fits")
    if time_left(spec) < spec.get("compile_min_s", 60):
        rec.set(compile={"skipped": f"{time_left(spec):.0f} s left in this item's budget"})
        return
    try:
        model.compile(backend=spec["backend"])
        _sample_at(spec, rec, model, cfg, rec["batch"], "compile")
    except Exception as e:                # noqa: BLE001 - eager results stay
        rec.set(compile=dict(rec.get("compile", {}), error=f"{type(e).__name__}: {e}"[:2000],
                             traceback=traceback.format_exc()[-3000:]))
        log(f"sampling compile: {type(e).__name__}: {str(e)[:300]}")


def _sample_at(spec, rec, model, cfg, b, mode):
    import torch
    from vco.sampling import generate
    dev = spec["device"]
    labels = torch.arange(b) % cfg.model.num_classes
    warm = copy.deepcopy(cfg)
    warm.sampler.steps = 2          # both batch shapes (B unguided, 2B guided): compiles everything

    def run(c) -> float:
        sync(dev)
        t = time.perf_counter()
        generate(model, c, labels, batch_size=b, device=dev, progress=False)
        sync(dev)
        return time.perf_counter() - t

    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
    r = {"warmup_2_steps_s": round(run(warm), 2)}
    if mode == "compile":
        r["backend"] = spec["backend"]
    rec.set(batch=b, **{mode: r})
    log(f"sampling batch {b} {mode}: 2-step warm-up {r['warmup_2_steps_s']} s")
    per_unit = run(warm) / eval_units(2, cfg.sampler)     # a second, settled warm-up predicts the run
    # 50 steps when they fit this item's time budget, else fewer, extrapolated by model rows
    steps = spec["timed_steps"]
    reserve = spec.get("compile_min_s", 60) if mode == "eager" else 10
    while steps > 2 and per_unit * eval_units(steps, cfg.sampler) > time_left(spec) - reserve:
        steps //= 2
    timed = copy.deepcopy(cfg)
    timed.sampler.steps = steps
    dt = run(timed)
    full = dt * eval_units(50, cfg.sampler) / eval_units(steps, cfg.sampler)
    r.update(timed_steps=steps, timed_s=dt, extrapolated=steps != 50, s_per_batch_50=full,
             img_s=b / full, s_per_50k=50_000 * full / b,
             peak_mem_gib=torch.cuda.max_memory_allocated() / 2**30 if dev == "cuda" else None)
    rec.set(**{mode: r})
    log(f"sampling batch {b} {mode}: {b / full:.2f} img/s at 50 Heun steps with CFG"
        f"{' (extrapolated from %d steps)' % steps if steps != 50 else ''}")


# ============================================================================ section 4: attention
def masked_attention(device: str, dtype, batch: int, reps: int) -> dict:
    """As throughput.compare_masked, in any dtype (the dense additive mask in the query's dtype)."""
    import torch
    from vco.nn.attention import StructuralMask, joint_attention
    h, n, d = 12, 288, 64
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(batch, h, 2 * n, d, generator=g).to(device, dtype) for _ in range(3))
    drop = torch.arange(batch, device=device) >= batch // 2
    mask = StructuralMask(drop, n)

    def dense():
        m = torch.zeros(batch, 1, 2 * n, 2 * n, device=device, dtype=dtype)
        m[drop, :, :n, n:] = float("-inf")
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=m)

    def free():
        return joint_attention(q, k, v, mask)

    err = float((dense().float() - free().float()).abs().max())
    best = {"dense": float("inf"), "free": float("inf")}
    for fn in (dense, free, dense, free):
        for _ in range(reps):
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            best[fn.__name__] = min(best[fn.__name__], time.perf_counter() - t)
    return {"dense_ms": 1e3 * best["dense"], "free_ms": 1e3 * best["free"], "ratio": best["dense"] / best["free"],
            "max_abs_diff": err}


def child_attention(spec: dict, rec: Record) -> None:
    from throughput import compare_masked
    from vco.device import cpu_has_bf16
    import torch
    dev, reps = spec["device"], spec["reps"]
    rows = []
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        ratio = compare_masked(dev, batch=8, reps=reps)     # benchmarks/throughput.py's fp32 comparison
    m = re.search(r"dense float mask ([\d.]+) ms, mask-free ([\d.]+) ms, max \|difference\| ([\d.e+-]+)",
                  buf.getvalue())
    rows.append({"dtype": "fp32", "batch": 8, "dense_ms": float(m.group(1)), "free_ms": float(m.group(2)),
                 "ratio": ratio, "max_abs_diff": float(m.group(3)), "via": "throughput.compare_masked"})
    rec.set(rows=rows)
    log(f"attention fp32 batch 8: dense/mask-free {ratio:.2f}x, max diff {rows[-1]['max_abs_diff']:.1e}")
    if dev == "cuda" or cpu_has_bf16():
        for b in spec["bf16_batches"]:
            r = masked_attention(dev, torch.bfloat16, b, reps)
            rows.append({"dtype": "bf16", "batch": b, **r, "via": "masked_attention"})
            rec.set(rows=rows)
            log(f"attention bf16 batch {b}: dense/mask-free {r['ratio']:.2f}x, max diff {r['max_abs_diff']:.1e}")
    else:
        rec.set(note="bf16 skipped: emulated on this CPU")


# ============================================================================ section 5: parallel
def torchrun_cli(argv: list[str]) -> int:
    """`vco train ARGV` under torchrun, printing how the trainer wrapped the objective. With
    GPU_CHECK_FORCE_PARALLEL=1, train.parallel is honoured in a world of one: the Trainer wraps in
    DDP / shards with FSDP2 only for world size > 1, so with one GPU the check forces the wrapper
    (the code a multi-GPU run takes, NCCL collectives included, over one rank)."""
    import torch
    import torch.distributed as dist
    from vco.train.trainer import Trainer
    init = Trainer.__init__

    def reporting_init(self, *a, **kw):
        init(self, *a, **kw)
        print(f"GPU_CHECK_WRAPPER {type(self.forward).__name__} sharded={self.sharded} "
              f"device={self.device}", flush=True)

    Trainer.__init__ = reporting_init
    if os.environ.get("GPU_CHECK_FORCE_PARALLEL") == "1":
        Trainer._parallel_kind = lambda self: self.cfg.train.parallel
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    from vco.cli import main
    return main(argv)


def child_parallel(spec: dict, rec: Record) -> None:
    import torch
    from test_distributed import SMALL           # tests/test_distributed.py's tiny vco-tiny run
    from vco.train.checkpoint import load_tensors
    steps = spec.get("steps", 3)
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    rec.set(backend=backend, steps=steps, runs=[])
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    shim = [str(Path(__file__).resolve()), "--torchrun-cli"]     # `vco train`, reporting its wrapper
    with tempfile.TemporaryDirectory() as tmp:
        def train(name, force, *extra):
            out = Path(tmp) / name
            cmd = launcher + shim + ["train", "--preset", "vco-tiny", "--data", "synthetic", "--steps",
                                     str(steps), "--out", str(out), *SMALL, *extra]
            t = time.time()
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=spec.get("run_timeout", 300),
                               env=dict(env, GPU_CHECK_FORCE_PARALLEL="1" if force else "0"))
            if r.returncode:
                raise RuntimeError(f"{name} failed ({r.returncode}): {r.stderr[-2000:]}")
            wrapper = re.search(r"GPU_CHECK_WRAPPER (.*)", r.stdout)
            log(f"parallel: {name} done in {time.time() - t:.1f} s ({wrapper.group(1) if wrapper else '?'})")
            return load_tensors(out), round(time.time() - t, 1), wrapper.group(1) if wrapper else None

        plain, s, w = train("plain", False)
        runs = [{"run": "plain", "seconds": s, "wrapper": w}]
        cases = [("ddp_unforced", False, ["--set", "parallel=ddp"], "`--set parallel=ddp` as it is"),
                 ("ddp", True, ["--set", "parallel=ddp"], f"DDP forced at world size 1 ({backend})"),
                 ("fsdp", True, ["--set", "parallel=fsdp"], f"FSDP2 forced at world size 1 ({backend})")]
        for name, force, extra, label in cases:
            try:
                got, s, w = train(name, force, *extra)
            except Exception as e:                # noqa: BLE001 - one case failing keeps the others
                runs.append({"run": label, "error": str(e)[-1500:]})
                rec.set(runs=runs)
                continue
            keys_equal = got.keys() == plain.keys()
            keys = [k for k in plain if k in got and (name != "ddp" or k.startswith(("model/", "ema1/", "ema2/")))]
            diff = max((float((got[k].float() - plain[k].float()).abs().max()) for k in keys), default=0.0)
            close = keys_equal and all(torch.allclose(got[k].float(), plain[k].float(), atol=1e-5, rtol=1e-4)
                                       for k in keys)
            bitwise = keys_equal and all(torch.equal(got[k], plain[k]) for k in keys)
            runs.append({"run": label, "seconds": s, "wrapper": w, "tensors": len(keys), "max_abs_diff": diff,
                         "within_tol": close, "bitwise": bitwise})
            rec.set(runs=runs)
    rec.set(ok=all(r.get("within_tol") for r in runs[1:]),
            tolerance="atol 1e-5, rtol 1e-4 (tests/test_distributed.py)")


# ============================================================================ section 1: pytest
def run_pytest(spec: dict, timeout: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        env = child_env(VCO_TEST_DEVICE=spec["device"])
        if spec["device"] == "cuda":
            env.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        cmd = [sys.executable, "-m", "pytest", str(ROOT / "tests" / "test_device.py"), "-m", "device",
               "-p", "no:cacheprovider", "-q", "-rs", f"--junitxml={xml}", "-W", "ignore::DeprecationWarning"]
        rc, tail, timed_out, wall = run_process(cmd, timeout, env)
        out = {"device": spec["device"], "returncode": rc, "wall_s": round(wall, 1), "tests": []}
        if xml.is_file():
            for case in ET.parse(xml).getroot().iter("testcase"):
                status = "passed"
                for tag in ("failure", "error", "skipped"):
                    el = case.find(tag)
                    if el is not None:
                        status = {"failure": "failed"}.get(tag, tag)
                        out.setdefault("messages", {})[case.get("name")] = (el.get("message") or "")[:500]
                out["tests"].append({"name": case.get("name"), "status": status,
                                     "time_s": float(case.get("time", 0))})
        counts = {}
        for t in out["tests"]:
            counts[t["status"]] = counts.get(t["status"], 0) + 1
        out["counts"] = counts
        if timed_out:
            out["error"] = f"timed out after {timeout:.0f} s"
        elif rc not in (0, 5) or not out["tests"]:
            out["error"] = f"pytest exit code {rc}"
            out["log_tail"] = tail[-3000:]
        out["ok"] = rc == 0 and not counts.get("failed") and not counts.get("error")
        return out


# ============================================================================ orchestration
def child_env(**extra) -> dict:
    env = dict(os.environ, GPU_CHECK_T0=str(T0), **extra)
    paths = [str(ROOT / "src"), str(ROOT / "tests"), str(ROOT / "benchmarks")]
    env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def run_process(cmd: list[str], timeout: float, env: dict) -> tuple[int | None, str, bool, float]:
    """Run cmd in its own process group, echoing its output; kill the group at the timeout."""
    t = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            cwd=ROOT, start_new_session=True)
    tail = deque(maxlen=60)
    hidden = [0]
    compile_log = re.compile(r"^[WI]\d{4} [\d:.]+ \d+ .*torch/_(dynamo|inductor)/")

    def pump():
        for line in proc.stdout:
            tail.append(line)
            if compile_log.match(line):     # torch.compile's graph-break warnings: kept in the tail only
                hidden[0] += 1
                continue
            print("    | " + line, end="", flush=True)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    timed_out = False
    try:
        proc.wait(timeout=max(timeout, 1))
    except subprocess.TimeoutExpired:
        timed_out = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    reader.join(5)
    if hidden[0]:
        print(f"    | ({hidden[0]} lines of torch.compile warnings not shown)", flush=True)
    return proc.returncode, "".join(tail), timed_out, time.time() - t


CHILDREN = {"peak": child_peak, "agreement": child_agreement, "train": child_train, "sample": child_sample,
            "attention": child_attention, "parallel": child_parallel}


def run_child(kind: str, spec: dict, timeout: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        res = Path(tmp) / "result.json"
        spec = dict(spec, deadline=time.time() + timeout)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--spec", json.dumps(spec),
               "--result", str(res)]
        rc, tail, timed_out, wall = run_process(cmd, timeout, child_env())
        out = json.loads(res.read_text()) if res.is_file() else {}
        if timed_out:
            out["error"] = f"timed out after {timeout:.0f} s" + (f" (then: {out['error']})" if "error" in out else "")
        elif rc != 0 and "error" not in out:
            out["error"] = f"exit code {rc}, no result"
        if "error" in out and "log_tail" not in out:
            out["log_tail"] = tail[-3000:]
        out["wall_s"] = round(wall, 1)
        return out


def child_main(kind: str, spec: dict, result: str) -> None:
    rec = Record(result)
    if os.environ.get("GPU_CHECK_THREADS"):     # --threads: e.g. 1 for a smoke on a shared CPU
        import torch
        torch.set_num_threads(int(os.environ["GPU_CHECK_THREADS"]))
    try:
        CHILDREN[kind](spec, rec)
    except Exception as e:                     # noqa: BLE001 - recorded, the orchestrator goes on
        rec.set(error=f"{type(e).__name__}: {e}"[:3000], traceback=traceback.format_exc()[-4000:])
        log(f"{kind}: {type(e).__name__}: {str(e)[:300]}")


def plan(args) -> list[dict]:
    """The items in the order they run (goals first), each with its timeout and the least time
    worth starting it with."""
    smoke, dev = args.smoke, args.device
    precision = "bf16" if dev == "cuda" else "fp32"
    backend = args.compile_backend or ("aot_eager" if smoke else "inductor")
    tr = dict(device=dev, smoke=smoke, precision=precision, backend=backend,
              batches=[4] if smoke else [128, 64, 32], warmup=1 if smoke else 3,
              compile_warmup=4 if smoke else 6, steps=2 if smoke else 10,
              parts_repeats=1 if smoke else 3, compile_min_s=0 if smoke else 60)
    sm = dict(device=dev, smoke=smoke, precision=precision, backend=backend, compile_min_s=0 if smoke else 60,
              batches=[4] if smoke else [256, 128, 64], timed_steps=10 if smoke else 50)
    items = [
        ("peak", 0, "peak", dict(device=dev, n=1024 if smoke else 8192), 45, 10),
        # on a CPU-only smoke the "device" side is the CPU with other kernels (vco is fp32 throughout:
        # its timestep and RoPE tables are fp32, so an fp64 reference is not an option)
        ("agreement", 1, "agreement", dict(ref_device="cpu", ref_dtype="float32", test_device=dev,
                                           test_dtype="float32", batch=8 if smoke else 16,
                                           variant="cpu_other_kernels" if dev == "cpu" else None), 150, 30),
        ("attention", 4, "attention", dict(device=dev, reps=3 if smoke else 20,
                                           bf16_batches=[8] if smoke else [8, 256]), 60, 10),
        ("train_vco-b16", 2, "train", dict(tr, preset="vco-b16"), 330, 60),
        ("sample", 3, "sample", dict(sm), 240, 40),
        ("pytest", 1, "pytest", dict(device=dev), 180, 40),
        ("parallel", 5, "parallel", dict(steps=3), 150, 40),
        ("train_jit-b16", 2, "train", dict(tr, preset="jit-b16", parts_repeats=0), 240, 30),
    ]
    if smoke:   # no time budget: the CPU is slow but the sizes are tiny
        items = [(i, s, k, sp, 900, 0) for i, s, k, sp, _, _ in items]
    return [dict(id=i, section=s, kind=k, spec=sp, timeout=t, min_s=m) for i, s, k, sp, t, m in items]


def git_commit() -> str | None:
    try:
        r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT,
                           timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, cwd=ROOT,
                               timeout=10).stdout.strip()
        return (r.stdout.strip() + ("+changes" if dirty else "")) if r.returncode == 0 else None
    except Exception:                         # noqa: BLE001 - no git on the device machine
        return None


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--torchrun-cli":
        sys.exit(torchrun_cli(sys.argv[2:]))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, CPU allowed (a few minutes on 2 cores)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "gpu"))
    ap.add_argument("--device", default=None, help="default: cuda if available (required without --smoke)")
    ap.add_argument("--budget-s", type=float, default=None, help="time budget of all items (default 560 on a GPU)")
    ap.add_argument("--only", nargs="+", default=None, help="run these items only, keep the others' results")
    ap.add_argument("--compile-backend", default=None, help="default inductor (aot_eager with --smoke)")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads of each item (default: 1 with --smoke, whose models are tiny, else torch's)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child_main(args.child, json.loads(args.spec), args.result)
        return
    import torch
    if args.threads or args.smoke:
        os.environ["GPU_CHECK_THREADS"] = str(args.threads or 1)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check: --device cuda but CUDA is not available")
    if args.device != "cuda" and not args.smoke:
        sys.exit("gpu_check: no GPU here; the full check needs one (use --smoke for the CPU plumbing test)")
    budget = args.budget_s if args.budget_s is not None else (float("inf") if args.smoke else 560.0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    items = plan(args)
    ids = [it["id"] for it in items]
    if args.only:
        unknown = [i for i in args.only if i not in ids]
        if unknown:
            sys.exit(f"gpu_check: unknown items {unknown}; items: {' '.join(ids)}")
    previous = {}
    if args.only and (out / "gpu_check.json").is_file():
        previous = json.loads((out / "gpu_check.json").read_text()).get("items", {})
    report = {"meta": {"smoke": args.smoke, "device": args.device,
                       "budget_s": None if budget == float("inf") else budget,
                       "started": datetime.datetime.now().isoformat(timespec="seconds"),
                       "torch": torch.__version__, "python": platform.python_version(),
                       "commit": git_commit(), "argv": sys.argv[1:],
                       "compile_backend": args.compile_backend or ("aot_eager" if args.smoke else "inductor")},
              "items": dict(previous)}
    log(f"gpu_check: device {args.device}, smoke {args.smoke}, budget {budget} s, out {out}")
    deadline = T0 + budget
    for it in items:
        if args.only and it["id"] not in args.only:
            continue
        left = deadline - time.time()
        if left < it["min_s"]:
            report["items"][it["id"]] = {"skipped": f"time budget: {left:.0f} s left, the item needs "
                                                    f"at least {it['min_s']} s; rerun with --only {it['id']}"}
            log(f"{it['id']}: skipped ({left:.0f} s left)")
            write_reports(report, out)
            continue
        timeout = min(it["timeout"], left)
        log(f"== {it['id']} (section {it['section']}, timeout {timeout:.0f} s)")
        spec = dict(it["spec"])
        try:
            r = run_pytest(spec, timeout) if it["kind"] == "pytest" else run_child(it["kind"], spec, timeout)
        except Exception as e:                 # noqa: BLE001 - the orchestrator itself never stops
            r = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
        r["section"] = it["section"]
        report["items"][it["id"]] = r
        log(f"{it['id']}: {'ERROR ' + r['error'][:200] if 'error' in r else 'done'} ({r.get('wall_s', '?')} s)")
        write_reports(report, out)
    report["meta"]["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
    report["meta"]["total_s"] = round(time.time() - T0, 1)
    write_reports(report, out)
    md = (out / "gpu_check.md").read_text()
    print("\n" + md[md.index("## Goals"):md.index("## 1.")].strip() + "\n", flush=True)
    log(f"gpu_check: wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'} in {time.time() - T0:.0f} s")


# ============================================================================ report
def fmt(x, spec=".2f", none="–"):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return none
    return format(x, spec)


def goals(report: dict) -> list[dict]:
    items, smoke = report["items"], report["meta"]["smoke"]
    peak = items.get("peak", {})
    peak_key = "fp32_tflops" if report["meta"]["device"] == "cpu" else "bf16_tflops"
    out = []
    tc = items.get("train_vco-b16", {}).get("compile", {})
    mfu = tc["tflops_s"] / peak[peak_key] if "tflops_s" in tc and peak.get(peak_key) else None
    out.append({"goal": "vco-b16 training MFU with compile", "target": ">= 45% of the measured bf16 matmul peak",
                "measured": f"{100 * mfu:.1f}%" if mfu is not None else "not measured",
                "met": None if mfu is None else mfu >= 0.45})
    sa = items.get("sample", {})
    best = max(((sa[k]["img_s"], k) for k in ("eager", "compile") if sa.get(k, {}).get("img_s")),
               default=(None, None))
    out.append({"goal": "vco-b16 sampling, 50 Heun steps with CFG", "target": ">= 60 img/s",
                "measured": (f"{best[0]:.1f} img/s ({best[1]}, batch {sa.get('batch')}"
                             f"{', extrapolated' if sa[best[1]].get('extrapolated') else ''})") if best[0] else "not measured",
                "met": None if best[0] is None else best[0] >= 60})
    ag = items.get("agreement", {})
    out.append({"goal": "GPU/CPU agreement in fp32 (vco-tiny forward, loss, gradients, AdamW step)",
                "target": "within the derived tolerance",
                "measured": (f"worst ratio {max(r['ratio'] for r in ag['rows']):.3f} of the tolerance"
                             if ag.get("rows") else "not measured"),
                "met": ag.get("ok")})
    if smoke:
        for g in out:
            g["note"] = "smoke run on the CPU at tiny sizes: not a measurement of the goal"
    return out


def write_reports(report: dict, out: Path) -> None:
    report = dict(report, goals=goals(report))
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    (out / "gpu_check.md").write_text(markdown(report))


def _err(r: dict) -> str:
    if "skipped" in r:
        return f"skipped: {r['skipped']}"
    if "error" not in r:
        return ""
    return "**error**: `" + " ".join(r["error"][:400].split()).replace("|", "/").replace("`", "'") + "`"


def markdown(report: dict) -> str:
    m, items = report["meta"], report["items"]
    peak = items.get("peak", {})
    cpu = m["device"] == "cpu"
    L = [f"# GPU check{' (smoke, CPU, tiny sizes)' if m['smoke'] else ''}", ""]
    where = peak.get("gpu") or peak.get("cpu") or m["device"]
    L += [f"- device: {where}" + (f" ({peak.get('gpu_mem_gib')} GiB, sm {peak.get('capability')})" if peak.get("gpu") else ""),
          f"- torch {m['torch']}" + (f", CUDA {peak.get('cuda')}" if peak.get("cuda") else "") + f", Python {m['python']}"
          + (f", commit {m['commit']}" if m.get("commit") else ""),
          f"- started {m['started']}" + (f", total {m.get('total_s')} s" if m.get("total_s") else "")
          + (f", budget {m['budget_s']:.0f} s" if m.get("budget_s") else ""),
          f"- compile backend: {m['compile_backend']}"]
    if "bf16_tflops" in peak and not cpu:
        L.append(f"- measured matmul peak ({peak.get('n', '?')}^3): bf16 {peak['bf16_tflops']:.1f} TFLOP/s, "
                 f"fp32 (TF32 off) {peak.get('fp32_tflops', float('nan')):.1f} TFLOP/s")
    elif "fp32_tflops" in peak:
        L.append(f"- measured matmul peak: fp32 {1e3 * peak['fp32_tflops']:.1f} GFLOP/s, bf16 "
                 f"{1e3 * peak.get('bf16_tflops', float('nan')):.1f} GFLOP/s"
                 f"{'' if peak.get('native_bf16') else ' (emulated)'}")
    if _err(peak):
        L.append(f"- matmul peak: {_err(peak)}")
    if m["smoke"]:
        L += ["", "> Smoke run: the same code at tiny sizes on the CPU (shrunk B/16 models, fp32, compile "
                  "backend aot_eager, gloo). It checks the plumbing; none of its numbers is a GPU figure."]
    L += ["", "## Goals", "", "| goal | target | measured | met |", "|---|---|---|---|"]
    for g in report["goals"]:
        met = "n/a (smoke)" if m["smoke"] else {True: "yes", False: "**no**", None: "unknown"}[g["met"]]
        L.append(f"| {g['goal']} | {g['target']} | {g['measured']} | {met} |")

    # ---- section 1
    L += ["", "## 1. Correctness on the device", ""]
    pt = items.get("pytest", {})
    L.append(f"`tests/test_device.py -m device` with VCO_TEST_DEVICE={pt.get('device', m['device'])}:")
    L.append("")
    if pt.get("tests"):
        c = pt["counts"]
        L += ["| passed | failed | errors | skipped | seconds |", "|---|---|---|---|---|",
              f"| {c.get('passed', 0)} | {c.get('failed', 0)} | {c.get('error', 0)} | {c.get('skipped', 0)} | {pt.get('wall_s')} |"]
        bad = [t for t in pt["tests"] if t["status"] != "passed"]
        for t in bad:
            L.append(f"- {t['status']}: `{t['name']}`: {pt.get('messages', {}).get(t['name'], '')[:300]}")
    if _err(pt):
        L.append(f"- {_err(pt)}")
    ag = items.get("agreement", {})
    L += ["", f"vco-tiny (hidden 256, depth 6, MobileNetV2 targets, hybrid loss), batch {ag.get('batch', '?')}: "
              f"test {ag.get('test', '?')} against reference {ag.get('reference', '?')}; TF32 {ag.get('tf32', 'off')}. "
              f"Tolerance = 8 sqrt(K) sqrt(D) u max|reference| (u = 2^-24, K = {ag.get('k_max', '?')} the longest "
              f"reduction, D = {ag.get('layers_model', '?')} layers for the forward, {ag.get('layers_loss_path', '?')} "
              f"on the loss path, twice that for gradients; the AdamW step's bound follows from its first-step "
              f"update -lr g/(|g|+eps)); see fp32_tolerance in benchmarks/gpu_check.py.", ""]
    if ag.get("rows"):
        L += ["| quantity | max abs diff | scale | tolerance | diff / tol | ok |", "|---|---|---|---|---|---|"]
        for r in ag["rows"]:
            L.append(f"| {r['quantity']} | {r['max_abs_diff']:.2e} | {r['scale']:.2e} | {r['tol']:.2e} | "
                     f"{r['ratio']:.3f} | {'yes' if r['ok'] else '**no**'} |")
        for r in ag["rows"]:
            if r.get("note"):
                L.append(f"- {r['note']}")
    if _err(ag):
        L.append(f"- {_err(ag)}")

    # ---- section 2
    peak_key = "fp32_tflops" if cpu else "bf16_tflops"
    L += ["", "## 2. Training throughput and MFU", "",
          f"The trainer's own step (synthetic data, {'fp32' if cpu else 'bf16 autocast'}), at the largest "
          f"batch of {'4' if m['smoke'] else '128/64/32'} that fits; FLOPs counted by FlopCounterMode on one real "
          f"eager step (matmuls, convolutions, attention: the frozen encoder's forward for the targets and the "
          f"hybrid loss's forward and backward through it included); MFU = FLOPs per step / median step time / "
          f"measured {'fp32' if cpu else 'bf16'} matmul peak. Shares: the step part by part "
          f"(benchmarks/recipe_b16.py step_parts): the frozen encoder on the real images (targets), and the "
          f"hybrid loss (the encoder's forward and backward on x̂, the loss), as shares of the parts' sum. "
          f"Compiled: `model.compile()` after the counted step (what train.compile=true does), backend "
          f"{m['compile_backend']}, then warm-up steps until the recompilations (in-context tokens, the varying "
          f"number of CFG-dropped samples) settle; the median of the timed steps.", "",
          "| model | mode | batch | img/s | step s | TFLOP/step | TFLOP/s | MFU | peak mem GiB | encoder targets | hybrid loss | notes |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key in ("train_vco-b16", "train_jit-b16"):
        item = items.get(key)
        if item is None:
            continue
        preset = key.split("_")[1]
        if not any(k in item for k in ("eager", "compile")):
            L.append(f"| {preset} | – | {item.get('batch', '–')} | – | – | – | – | – | – | – | – | "
                     f"{'OOM at %s; ' % item['oom'] if item.get('oom') else ''}{_err(item)} |")
            continue
        for mode in ("eager", "compile"):
            r = item.get(mode)
            if r is None:
                continue
            notes = []
            if item.get("oom") and mode == "eager":
                notes.append(f"OOM at batch {item['oom']}")
            if r.get("first_compiled_step_s") is not None:
                notes.append(f"first compiled step {r['first_compiled_step_s']} s")
            if r.get("recompiled_while_timed"):
                notes.append("recompiled during the timed steps (the median step is used)")
            if r.get("parts_skipped"):
                notes.append("parts skipped (time)")
            if _err(r):
                notes.append(_err(r))
            if mode == "compile" and _err(item) and "step_s" not in r:
                notes.append(_err(item))
            mfu = r["tflops_s"] / peak[peak_key] if "tflops_s" in r and peak.get(peak_key) else None
            pct = lambda k: f"{100 * r[k]:.1f}%" if k in r else "–"
            L.append(f"| {preset} | {mode} | {item.get('batch', '–')} | {fmt(r.get('img_s'), '.1f')} | "
                     f"{fmt(r.get('step_s'), '.3f')} | "
                     f"{fmt(item['flops_per_step'] / 1e12 if item.get('flops_per_step') else None, '.3g')} | "
                     f"{fmt(r.get('tflops_s'), '.1f' if not cpu else '.3g')} | "
                     f"{fmt(100 * mfu if mfu else None, '.1f')}{'%' if mfu else ''} | "
                     f"{fmt(r.get('peak_mem_gib'), '.1f')} | {pct('share_encoder_targets')} | "
                     f"{pct('share_hybrid_loss')} | {'; '.join(notes)} |")
        if "error" in item and "eager" in item:
            L.append(f"\n{preset}: {_err(item)}\n")
    vb = items.get("train_vco-b16", {})
    parts = [(m, vb[m]["parts_s"]) for m in ("eager", "compile") if vb.get(m, {}).get("parts_s")]
    if parts:
        L += ["", "vco-b16 step part by part (median seconds):", "",
              "| part | " + " | ".join(k for k, _ in parts) + " |", "|---|" + "---|" * len(parts)]
        for p in parts[0][1]:
            L.append(f"| {p} | " + " | ".join(f"{d[p]:.4f}" for _, d in parts) + " |")

    # ---- section 3
    L += ["", "## 3. Sampling throughput", "",
          "vco-b16 with random weights, `vco.sampling.generate`, 50 Heun steps (49 Heun + 1 Euler = 99 "
          "evaluations), CFG batched as one 2B forward inside the interval, "
          f"{'fp32' if cpu else 'bf16 autocast'}. When fewer steps were timed, the time is scaled by model rows "
          "(2 per guided evaluation, 1 outside the interval) to 50 steps: marked extrapolated.", "",
          "| mode | batch | timed steps | s per batch (50 steps) | img/s | s per 50,000 images | peak mem GiB | notes |",
          "|---|---|---|---|---|---|---|---|"]
    sa = items.get("sample", {})
    for mode in ("eager", "compile"):
        r = sa.get(mode)
        if r is None:
            continue
        notes = []
        if r.get("extrapolated"):
            notes.append(f"extrapolated from {r['timed_steps']} steps")
        if sa.get("oom") and mode == "eager":
            notes.append(f"OOM at batch {sa['oom']}")
        if r.get("warmup_2_steps_s") is not None:
            notes.append(f"2-step warm-up{' (compilation)' if mode == 'compile' else ''} {r['warmup_2_steps_s']} s")
        if _err(r):
            notes.append(_err(r))
        L.append(f"| {mode} | {sa.get('batch', '–')} | {r.get('timed_steps', '–')} | {fmt(r.get('s_per_batch_50'))} | "
                 f"{fmt(r.get('img_s'), '.2f')} | {fmt(r.get('s_per_50k'), '.0f')} | {fmt(r.get('peak_mem_gib'), '.1f')} | {'; '.join(notes)} |")
    if _err(sa):
        L.append(f"- {_err(sa)}")

    # ---- section 4
    at = items.get("attention", {})
    L += ["", "## 4. Structural-CFG attention: mask-free vs dense float mask", "",
          "vco-b16's joint attention: 12 heads x (2 x 288) tokens x 64, a CFG batch whose second half is "
          "unconditional (pixel queries blind to semantic keys). Dense: an additive -inf float mask built per "
          "call, one `scaled_dot_product_attention`; mask-free: `vco.nn.attention.joint_attention` with a "
          "`StructuralMask`. Best of interleaved repetitions.", "",
          "| dtype | batch | dense mask ms | mask-free ms | speed ratio (dense / mask-free) | max abs diff |",
          "|---|---|---|---|---|---|"]
    for r in at.get("rows", []):
        L.append(f"| {r['dtype']} | {r['batch']} | {r['dense_ms']:.2f} | {r['free_ms']:.2f} | {r['ratio']:.2f} | {r['max_abs_diff']:.1e} |")
    if at.get("note"):
        L.append(f"- {at['note']}")
    if _err(at):
        L.append(f"- {_err(at)}")

    # ---- section 5
    pa = items.get("parallel", {})
    L += ["", f"## 5. DDP and FSDP2 in a world of one ({pa.get('backend', '?')})", "",
          f"tests/test_distributed.py's tiny vco-tiny run, {pa.get('steps', 3)} steps, through `torchrun --standalone "
          "--nproc_per_node=1 ... vco train`, against a plain run; tolerance "
          f"{pa.get('tolerance', 'atol 1e-5, rtol 1e-4')}. The Trainer wraps in DDP or shards with FSDP2 only "
          "when the world has more than one rank, so `--set parallel=ddp` alone trains unwrapped at "
          "nproc_per_node=1; the forced rows run `vco train` with train.parallel honoured at world size 1 "
          "(benchmarks/gpu_check.py --torchrun-cli), so DDP's all-reduce and FSDP2's all-gather / reduce-scatter "
          "really run.", "",
          "| run | trainer's objective | seconds | tensors compared | max abs diff vs plain | within tolerance | bitwise |",
          "|---|---|---|---|---|---|---|"]
    for r in pa.get("runs", []):
        if "error" in r:
            L.append(f"| {r['run']} | – | – | – | – | **error**: `{r['error'][-300:]}` | – |")
            continue
        yn = lambda v, bad="**no**": "yes" if v else (bad if v is not None else "–")
        L.append(f"| {r['run']} | {r.get('wrapper') or '–'} | {r.get('seconds', '–')} | {r.get('tensors', '–')} | {fmt(r.get('max_abs_diff'), '.1e')} | "
                 f"{yn(r.get('within_tol')) if 'within_tol' in r else '–'} | {yn(r.get('bitwise'), 'no') if 'bitwise' in r else '–'} |")
    if _err(pa):
        L.append(f"- {_err(pa)}")
    L += ["", "## Items", "", "Run order and wall time (each item in its own process):", "",
          "| item | section | wall s | status |", "|---|---|---|---|"]
    for k, r in items.items():
        status = "skipped" if "skipped" in r else ("error" if "error" in r else "done")
        L.append(f"| {k} | {r.get('section', '–')} | {r.get('wall_s', '–')} | {status} |")
    skipped = [k for k, r in items.items() if "skipped" in r]
    if skipped:
        L += ["", "Skipped for time: " + ", ".join(f"`{k}`" for k in skipped)
              + " (rerun with `--only ITEM ...` and the same `--out`)."]
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    main()

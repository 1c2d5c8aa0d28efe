"""The V-Co B/16 final recipe's training step and CFG velocity pair, timed part by part.

    python benchmarks/recipe_b16.py [--precisions fp32 bf16] [--warmup 3] [--repeats 5] [--cache]

The work of the official code's B/16-co recipe: vco-b16 (dual stream, 260.7M parameters, 1000
classes) at batch 2, RAE-normalised DINOv2-B targets, L_pix + 0.1 L_sem + 10 L_hybrid through a
frozen DINOv2-B, backward, AdamW and both EMAs; and one CFG velocity pair (conditional and
structurally unconditional pass, batched). DINOv2-B has random weights (same architecture and
FLOPs; no download). Each precision runs in a fresh process; bf16 only where it is native (a GPU,
or a CPU with AVX512-BF16/AMX), since emulated bf16 is far slower than fp32.

Every figure is the median over ``--repeats`` after ``--warmup`` steps (the first steps allocate
the optimizer state). The parts: targets (semantic features of the real images), network
(forward + backward of the objective without the hybrid loss), hybrid loss (the full objective's
forward + backward minus the network's), optimizer (AdamW step), EMA (both updates). The last
line reads ``recipe_b16 train_s=<x> sample_pair_s=<y> precision=<p>``.

``--cache`` also times each precision with a feature cache (``semantic.cache=auto``, built first
for a 32-image set): the targets (fp16 storage) and the hybrid loss's real-image features (fp32)
are read instead of computed, so a step runs DINOv2-B only on x_pred.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from vco.config import build_config
from vco.device import autocast, cpu_has_bf16, resolve_device
from vco.diffusion.sampler import guided_velocity
from vco.semantic.stream import stream_times
from vco.train import Trainer

RECIPE = ["semantic.encoder=dinov2_random", "semantic.encoder_path=null", "train.batch_size=2",
          "data.name=synthetic", "data.synthetic_size=2000", "semantic.stats_images=4",
          "train.warmup_steps=0", "train.log_every=1000", "data.hflip=true"]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device) -> float:
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def step_parts(trainer: Trainer, batch) -> dict[str, float]:
    """One instrumented step, stage by stage, as Trainer.train_step runs them."""
    dev = trainer.device
    images, labels = batch
    rng = trainer.streams(0)
    x, y, flipped = trainer.batch(images, labels, rng)
    out: dict[str, float] = {}
    with autocast(trainer.precision, dev):
        holder = {}
        out["targets"] = timed(lambda: holder.update(inputs=trainer.semantic.step_inputs(
            x, trainer.indices(0), flipped)), dev)
        full = lambda: trainer.forward(x, y, holder["inputs"][0], trainer.streams(0),
                                       holder["inputs"][1])["loss"].backward()
        total = timed(full, dev)
        aux = trainer.objective.terms.pop("aux")      # the same step without the hybrid loss
        trainer.optimizer.zero_grad(set_to_none=True)
        out["network"] = timed(full, dev)
        trainer.objective.terms["aux"] = aux
    out["hybrid loss"] = total - out["network"]
    out["optimizer"] = timed(trainer.optimizer.step, dev)
    out["EMA"] = timed(lambda: [ema.update(trainer.model) for ema in trainer.emas], dev)
    trainer.optimizer.zero_grad(set_to_none=True)
    return out


def sample_pair(trainer: Trainer) -> float:
    """One guided velocity evaluation: cond + structurally uncond passes as one batch of 2B."""
    cfg, model = trainer.cfg, trainer.model.eval()
    g = torch.Generator(trainer.device).manual_seed(0)
    states = [torch.randn(s, generator=g, device=trainer.device) for s in model.stream_shapes(2)]
    y = torch.tensor([3, 7], device=trainer.device)
    times = stream_times(cfg, len(states))
    with torch.no_grad(), autocast(trainer.precision, trainer.device):
        return timed(lambda: guided_velocity(model, states, 0.5, y, cfg.sampler.cfg, cfg.model.num_classes,
                                             cfg.diffusion.t_eps, times), trainer.device)


def profiled(step, rows: int) -> str:
    """torch.profiler's table of two more training steps, the ``rows`` ops of most own time."""
    from torch.profiler import ProfilerActivity, profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=acts) as prof:
        for _ in range(2):
            step()
    key = "self_device_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows)


def run_one(precision: str, args) -> dict:
    torch.manual_seed(0)
    cached = precision.endswith("+cache")
    precision = precision.removesuffix("+cache")
    cache = ["semantic.cache=auto", "data.synthetic_size=32"] if cached else []
    cfg = build_config("vco-b16", overrides=RECIPE + cache + [f"train.precision={precision}",
                                                               f"train.device={args.device}"] + args.set)
    with tempfile.TemporaryDirectory() as run_dir:
        if cached:
            os.environ["VCO_CACHE"] = os.path.join(run_dir, "cache")    # built here, removed with it
        trainer = Trainer(cfg, run_dir)
        loader = iter(trainer.loader(0, 2 * (args.warmup + args.repeats) + 2))
        for _ in range(args.warmup):
            trainer.train_step([next(loader)])
        steps = [timed(lambda: trainer.train_step([next(loader)]), trainer.device)
                 for _ in range(args.repeats)]
        parts = [step_parts(trainer, next(loader)) for _ in range(args.repeats)]
        profile = profiled(lambda: trainer.train_step([next(loader)]), args.profile) if args.profile else None
        for _ in range(args.warmup):
            sample_pair(trainer)
        pairs = [sample_pair(trainer) for _ in range(args.repeats)]
    med = {k: statistics.median(p[k] for p in parts) for k in parts[0]}
    return {"precision": precision + ("+cache" if cached else ""), "train_s": statistics.median(steps),
            "parts_s": med, "profile": profile,
            "sample_pair_s": statistics.median(pairs), "threads": torch.get_num_threads(),
            "device": str(trainer.device), "native_bf16": trainer.device.type == "cuda" or cpu_has_bf16()}


def table(results: list[dict]) -> str:
    rows = ["| work | " + " | ".join(r["precision"] for r in results) + " |",
            "|---|" + "---|" * len(results),
            "| train step | " + " | ".join(f"{r['train_s']:.2f} s" for r in results) + " |"]
    for part in results[0]["parts_s"]:
        rows.append(f"| &nbsp; {part} | " + " | ".join(f"{r['parts_s'][part]:.2f} s" for r in results) + " |")
    rows.append("| CFG velocity pair | " + " | ".join(f"{r['sample_pair_s']:.2f} s" for r in results) + " |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--precisions", nargs="+", default=None, help="default: fp32, and bf16 where native")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--cache", action="store_true",
                    help="also time each precision with a feature cache of the targets and the real images' "
                         "pooled features")
    ap.add_argument("--set", nargs="*", default=[], help="config overrides, e.g. train.compile=true")
    ap.add_argument("--profile", type=int, default=0, metavar="ROWS",
                    help="also profile two training steps and print the ROWS ops of most own time")
    ap.add_argument("--one", help=argparse.SUPPRESS)          # internal: one precision, JSON out
    args = ap.parse_args()
    if args.one:
        print("RESULT " + json.dumps(run_one(args.one, args)))
        return
    device = resolve_device(args.device)
    native = device.type == "cuda" or cpu_has_bf16()
    precisions = args.precisions or (["fp32", "bf16"] if native else ["fp32"])
    if args.cache:
        precisions = [p + suffix for p in precisions for suffix in ("", "+cache")]
    print(f"device {device}, {torch.get_num_threads()} threads, native bf16: {native}"
          + ("" if native else " (AVX2 only: bf16 is emulated, so only fp32 is measured)"))
    results = []
    for precision in precisions:
        cmd = [sys.executable, __file__, "--one", precision, "--warmup", str(args.warmup),
               "--repeats", str(args.repeats), "--device", args.device, "--profile", str(args.profile),
               "--set", *args.set]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if proc.returncode or line is None:
            sys.exit(f"{precision} failed:\n{proc.stderr[-3000:]}")
        results.append(json.loads(line[len("RESULT "):]))
        r = results[-1]
        print(f"{precision}: train step {r['train_s']:.2f} s, CFG pair {r['sample_pair_s']:.2f} s, "
              + ", ".join(f"{k} {v:.2f}" for k, v in r["parts_s"].items()), flush=True)
        if r["profile"]:
            print(f"{precision}: where two training steps spend their time\n{r['profile']}", flush=True)
    print(table(results))
    best = next(r for r in reversed(results) if not r["precision"].endswith("+cache"))
    print(f"recipe_b16 train_s={best['train_s']:.3f} sample_pair_s={best['sample_pair_s']:.3f} "
          f"precision={best['precision']}")


if __name__ == "__main__":
    main()

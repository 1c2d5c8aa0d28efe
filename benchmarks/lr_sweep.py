"""Which peak lr trains jit-tiny fastest? A short sweep to choose the miniature's lr.

    python benchmarks/lr_sweep.py [--lrs 1e-3 2e-3 4e-3] [--steps 600] [--precision bf16] [--num 500]

Each lr trains the jit-tiny preset (batch 64, its warmup, EMAs and seed: the same data order)
for ``--steps`` steps at a constant lr after warmup, then scores EMA-1 with ``--num`` unguided
samples (Heun 25 steps) against the 10,000 Fashion-MNIST test images, as the miniature does but
with fewer samples (an FID of 500 samples is biased upward: it ranks the lrs, it does not compare
with the miniature's 2,000-sample figures). Runs resume and scores are cached under ``--out``;
results: docs/results/lr_sweep/lr_sweep.{md,json,png} (FID against lr, training loss curves) and
each run's sample grid beside them.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ladder import cached, reference, training_seconds
from miniature import LOG_EVERY, REF_NUM, SAMPLE_STEPS, machine, read_config
from vco.config import build_config
from vco.eval import InceptionFeatures, load_reference
from vco.eval.evaluate import EvalSettings, evaluate, write_json
from vco.train import Trainer, load_run_model
from vco.train.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[1]
PRESET = "jit-tiny"


def run_name(lr: float, steps: int, precision: str) -> str:
    return f"{PRESET}-lr{lr:g}-{steps}steps-{precision}"


def train_one(run: Path, lr: float, steps: int, precision: str) -> None:
    cfg = build_config(PRESET)
    blr = lr * 256 / cfg.train.batch_size             # lr = blr * batch / 256 (vco.train.lr)
    cfg = build_config(PRESET, overrides=[f"train.blr={blr:g}", f"train.steps={steps}",
                                          f"train.precision={precision}", f"train.log_every={LOG_EVERY}",
                                          "data.name=fashion-mnist", f"sampler.steps={SAMPLE_STEPS}"])
    trainer = Trainer(cfg, run, resume=(run / "checkpoint.json").is_file())
    if trainer.step < steps:
        trainer.train(progress=True)


def score(run: Path, num: int, ref, inception) -> dict:
    model, cfg, meta = load_run_model(run)
    result = evaluate(model, cfg, meta, EvalSettings(num=num, cfg=1.0, steps=SAMPLE_STEPS, method="heun",
                                                     batch_size=100), ref, "cpu", inception, run / "eval")
    return {k: result[k] for k in ("fid", "precision", "recall", "kid", "kid_std", "seconds")}


def losses(run: Path) -> tuple[list[int], list[float]]:
    rows = read_metrics(run / "metrics.jsonl")
    return [r["step"] for r in rows], [r["loss"] for r in rows]


def write_outputs(rows: list[dict], out: Path, runs: Path, args) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "lr_sweep.json", {"preset": PRESET, "steps": args.steps, "precision": args.precision,
                                       "fid_num": args.num, "ref_num": REF_NUM, "rows": rows})
    best = min(rows, key=lambda r: r["fid"])
    lines = [f"# jit-tiny: FID after {args.steps} steps against the peak lr", "",
             f"`python benchmarks/lr_sweep.py --steps {args.steps} --precision {args.precision} --num {args.num}`: "
             f"batch 64, warmup 100 steps then constant, EMA-1 (0.995), {args.num} unguided samples "
             f"(Heun {SAMPLE_STEPS}) against the {REF_NUM} test images; {rows[0]['machine']}.", "",
             "| lr | FID | precision | recall | final loss (mean of the last 10 logs) | training s |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['lr']:g}{' (best)' if r is best else ''} | {r['fid']:.2f} | {r['precision']:.3f} | "
              f"{r['recall']:.3f} | {r['final_loss']:.4f} | {r['train_seconds']:.0f} |" for r in rows]
    (out / "lr_sweep.md").write_text("\n".join(lines) + "\n")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=120)
    axes[0].plot([r["lr"] for r in rows], [r["fid"] for r in rows], "o-")
    for r in rows:
        axes[0].annotate(f"{r['fid']:.1f}", (r["lr"], r["fid"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
        steps, loss = losses(runs / r["run"])
        smooth = [sum(loss[max(0, i - 4):i + 1]) / len(loss[max(0, i - 4):i + 1]) for i in range(len(loss))]
        axes[1].plot(steps, smooth, label=f"lr {r['lr']:g}")
    axes[0].set_xscale("log")
    axes[0].set_xlabel("peak lr")
    axes[0].set_ylabel(f"FID ({args.num} samples, unguided)")
    axes[1].set_xlabel("step")
    axes[1].set_ylabel("training loss (moving mean of 5 logs)")
    axes[1].set_ylim(top=min(0.4, axes[1].get_ylim()[1]))
    axes[1].legend()
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(f"jit-tiny, {args.steps} steps of 64, {args.precision}")
    fig.tight_layout()
    fig.savefig(out / "lr_sweep.png")
    plt.close(fig)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 2e-3, 4e-3])
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--precision", default="bf16", choices=("bf16", "fp32"))
    ap.add_argument("--num", type=int, default=500, help="samples per FID")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--out", default=str(ROOT / "runs" / "lr_sweep"))
    ap.add_argument("--results", default=str(ROOT / "docs" / "results" / "lr_sweep"))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    out = Path(args.out)
    inception = InceptionFeatures("cpu")
    ref = load_reference(reference(ROOT / "runs" / "miniature", {"ref_num": REF_NUM}, inception, image_size=28))
    rows = []
    for lr in args.lrs:
        name = run_name(lr, args.steps, args.precision)
        train_one(out / name, lr, args.steps, args.precision)
        scores = cached(out / name / f"eval_{args.num}.json", lambda: score(out / name, args.num, ref, inception))
        _, loss = losses(out / name)
        rows.append({"lr": lr, "run": name, **scores, "final_loss": sum(loss[-10:]) / len(loss[-10:]),
                     "train_seconds": round(training_seconds(out / name / "metrics.jsonl", LOG_EVERY), 1),
                     "machine": machine(), "config": read_config(out / name)})
        print(json.dumps({k: rows[-1][k] for k in ("lr", "fid", "final_loss", "train_seconds")}), flush=True)
        write_outputs(rows, Path(args.results), out, args)
        grid = out / name / "eval" / "samples_cfg1.png"
        if grid.is_file():
            (Path(args.results) / f"{name}.png").write_bytes(grid.read_bytes())


if __name__ == "__main__":
    main()

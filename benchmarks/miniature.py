"""The paper's comparison in miniature: JiT against V-Co and V-Co without each of its four
ingredients, on Fashion-MNIST at its native 28 px, with the CPU presets (jit-tiny, vco-tiny).

    python benchmarks/miniature.py [--only jit-tiny vco-tiny] [--until STEP] [--guided] [--threads 2]
    python benchmarks/miniature.py --only jit-tiny --minutes 30 [--lr 4e-3] [--precision bf16] [--schedule linear]

Every variant trains the preset's steps with the preset's batch, lr and seed (hence the same data
order) and is scored at ``EVAL_AT`` steps (FID / precision / recall / KID of 2,000 unguided samples,
200 per class, against the 10,000 test images), so the results hold both comparisons the paper
makes: at equal optimizer steps (the same row of steps) and at equal training time (each variant at
its evaluation point closest below JiT's final training seconds). ``--guided`` adds, at the final
step, a CFG sweep on 200 samples of another seed and the 2,000-sample FID at the w it picks.

Runs continue from their last checkpoint (an evaluation point is reached by resuming the run with
more steps: a resumed run equals an uninterrupted one) and every finished evaluation is cached, so
the command can be stopped and restarted at any time. ``--minutes`` trains the chosen variants for
a wall-time budget instead (optionally at another peak lr, in bf16, or with the lr decayed to 0
where the budget ends) and scores each once at its end. Results: docs/results/miniature.{md,json,png}
and docs/results/miniature/<variant>.png (sample grids); the protocol and the report are in
benchmarks/miniature_report.py.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ladder import cached, reference, training_seconds
from miniature_report import (EVAL_AT, FID_NUM, REF_NUM, SAMPLE_STEPS, SWEEP, SWEEP_NUM, TIMING_FILE,
                              report)
from vco.config import build_config
from vco.eval import InceptionFeatures, load_reference
from vco.eval.evaluate import EvalSettings, evaluate, write_json
from vco.models import count_params
from vco.train import Trainer, load_run_model
from vco.train.time_budget import plan_schedule

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Variant:
    name: str
    preset: str
    overrides: list[str] = field(default_factory=list)
    removes: str = ""        # which of V-Co's four ingredients it lacks


VARIANTS = [
    Variant("jit-tiny", "jit-tiny", [], "all four (the baseline)"),
    Variant("jit-tiny-wide", "jit-tiny-wide", [], "all four, at V-Co's parameter count"),
    Variant("vco-tiny", "vco-tiny", [], "none (full recipe)"),
    Variant("vco-token_concat", "vco-tiny", ["fusion=token_concat"], "dual stream (shared weights)"),
    Variant("vco-input_dropout", "vco-tiny", ["uncond=input_dropout_zeros"], "structural CFG branch"),
    Variant("vco-no_hybrid", "vco-tiny", ["aux_loss=none"], "hybrid loss"),
    Variant("vco-no_rms", "vco-tiny", ["calibration=none"], "RMS rescaling"),
]
BY_NAME = {v.name: v for v in VARIANTS}

LOG_EVERY = 10
TIME_WARMUP, TIME_STEPS, TIME_ROUNDS = 5, 20, 2   # --time: steps per variant and round
BUDGET_STEP_CAP = 100_000       # --minutes: the time limit ends the run long before this


def cfg_overrides(v: Variant, steps: int) -> list[str]:
    return [f"train.steps={steps}", f"train.log_every={LOG_EVERY}", "train.precision=fp32",
            "data.name=fashion-mnist", f"sampler.steps={SAMPLE_STEPS}", *v.overrides]


def variant_config(v: Variant, steps: int):
    return build_config(v.preset, overrides=cfg_overrides(v, steps))


def train_to(v: Variant, run: Path, steps: int) -> dict:
    """Train (or continue) ``run`` to ``steps``; (steps, training seconds so far)."""
    meta = run / "checkpoint.json"
    trainer = Trainer(variant_config(v, steps), run, resume=meta.is_file())
    if trainer.step < steps:
        trainer.train(progress=True)
    return {"step": trainer.step, "seconds": round(training_seconds(run / "metrics.jsonl", LOG_EVERY), 1)}


def score(run: Path, settings: EvalSettings, ref, inception, out_dir: Path | None = None) -> dict:
    model, cfg, meta = load_run_model(run)
    return evaluate(model, cfg, meta, settings, ref, "cpu", inception, out_dir)


def run_variant(v: Variant, out: Path, ref, inception, guided: bool, until: int, record_path: Path) -> dict:
    """Train and score ``v`` at each evaluation point up to ``until``; its record is rewritten at
    ``record_path`` after every point (so a run cut off keeps what it finished). A point already in
    that record (an earlier session's, whose run folder is gone) is kept, not recomputed."""
    run = out / v.name
    earlier = json.loads(record_path.read_text()) if record_path.is_file() else {}
    known = {p["step"]: p for p in earlier.get("points", [])}
    record = {"variant": v.name, "preset": v.preset, "overrides": v.overrides, "removes": v.removes,
              "params": count_params(variant_config(v, EVAL_AT[-1]).model), "points": [],
              **({"guided": earlier["guided"]} if "guided" in earlier else {})}
    for steps in (s for s in EVAL_AT if s <= until):
        cache = run / f"eval_step{steps}.json"
        if not cache.is_file() and steps in known:
            write_json(cache, known[steps])
        if cache.is_file():
            record["points"].append(json.loads(cache.read_text()))
            continue
        print(f"== {v.name}: train to step {steps}", flush=True)
        trained = train_to(v, run, steps)
        result = score(run, EvalSettings(num=FID_NUM, cfg=1.0, steps=SAMPLE_STEPS, method="heun",
                                         batch_size=100), ref, inception, run / f"eval_step{steps}")
        point = {**trained, **{k: result[k] for k in ("fid", "precision", "recall", "kid", "kid_std")},
                 "eval_seconds": result["seconds"], "threads": torch.get_num_threads(), "machine": machine()}
        write_json(cache, point)
        print(json.dumps({"variant": v.name, **point}), flush=True)
        record["points"].append(point)
        write_json(record_path, {**record, "config": read_config(run)})
    if (run / "config.yaml").is_file():
        record["config"] = read_config(run)
    else:
        record["config"] = earlier.get("config")
    if guided and until >= EVAL_AT[-1]:
        record["guided"] = guided_eval(run, ref, inception)
    return record


@dataclass
class Budget:
    """A wall-time budget run (``--minutes``) and what it may change from the preset."""
    minutes: float
    schedule: str = "constant"   # the lr after warmup: constant (the preset's) | cosine | linear (to 0 at the end)
    lr: float = 0.0              # the peak lr (0: the preset's)
    precision: str = "fp32"      # the training precision (bf16: autocast, where the CPU has it natively)

    def overrides(self, v: Variant) -> list[str]:
        cfg = variant_config(v, BUDGET_STEP_CAP)
        blr = self.lr * 256 / cfg.train.batch_size if self.lr else cfg.train.blr   # lr = blr x batch / 256
        return [*cfg_overrides(v, BUDGET_STEP_CAP), f"train.lr_schedule={self.schedule}",
                f"train.blr={blr:g}", f"train.precision={self.precision}"]


def budget_name(v: Variant, b: Budget) -> str:
    return (f"{v.name}-{b.minutes:g}min" + ("" if b.schedule == "constant" else f"-{b.schedule}")
            + (f"-lr{b.lr:g}" if b.lr else "") + ("" if b.precision == "fp32" else f"-{b.precision}"))


def run_budget(v: Variant, out: Path, ref, inception, b: Budget) -> dict:
    """Train ``v`` for ``b.minutes`` of wall time, then score it as the protocol does. ``constant``:
    the preset's lr schedule (constant after warmup), so the steps that fit are the protocol's run,
    only longer. ``cosine`` / ``linear``: the timed warmup steps say where the budget ends, and the lr
    decays to 0 there (vco.train.time_budget, as the demo plans). A stopped run resumes from its
    checkpoint with the minutes it has left; a decayed one keeps the end it planned."""
    run = out / budget_name(v, b)
    cache = run / "eval_final.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    metrics, resume = run / "metrics.jsonl", (run / "checkpoint.json").is_file()
    used = training_seconds(metrics, LOG_EVERY) if metrics.is_file() else 0.0
    if used < b.minutes * 60:
        print(f"== {run.name}: train for {b.minutes:g} min ({used / 60:.1f} done)", flush=True)
        limit = f"train.time_limit_min={(b.minutes * 60 - used) / 60:.4f}"
        if resume and b.schedule != "constant":
            cfg = build_config(config_file=run / "config.yaml", overrides=[limit])
        else:
            cfg = build_config(v.preset, overrides=[*b.overrides(v), limit])
        trainer, replan = Trainer(cfg, run, resume=resume), None
        if b.schedule != "constant" and not resume:
            replan = plan_schedule(trainer, b.minutes * 60)
            print(f"   lr decays ({b.schedule}) to 0 at step {replan.planned} (re-plan at step {replan.at})")
        trainer.train(progress=True, on_step=replan)
    step = json.loads((run / "checkpoint.json").read_text())["step"]
    result = score(run, EvalSettings(num=FID_NUM, cfg=1.0, steps=SAMPLE_STEPS, method="heun", batch_size=100),
                   ref, inception, run / "eval_final")
    config = read_config(run)
    point = {"variant": v.name, "minutes": b.minutes, "lr_schedule": b.schedule, "step": step,
             "seconds": round(training_seconds(metrics, LOG_EVERY), 1),
             **{k: result[k] for k in ("fid", "precision", "recall", "kid", "kid_std")},
             "eval_seconds": result["seconds"], "threads": torch.get_num_threads(), "machine": machine(),
             "precision_trained": config["train"]["precision"], "config": config}
    write_json(cache, point)
    return point


def guided_eval(run: Path, ref, inception) -> dict:
    sweep = [cached(run / f"sweep_w{w:g}.json", lambda w=w: score(
        run, EvalSettings(num=SWEEP_NUM, cfg=w, steps=SAMPLE_STEPS, method="heun", seed=1, batch_size=100),
        ref, inception)) for w in SWEEP]
    best = min(sweep, key=lambda r: r["fid"])["settings"]["cfg"]
    final = cached(run / "guided.json", lambda: score(
        run, EvalSettings(num=FID_NUM, cfg=best, steps=SAMPLE_STEPS, method="heun", batch_size=100),
        ref, inception, run / "eval_guided"))
    return {"w": best, "sweep": {f"{r['settings']['cfg']:g}": round(r["fid"], 2) for r in sweep},
            **{k: final[k] for k in ("fid", "precision", "recall", "kid", "kid_std")}}


def time_variants(variants: list[Variant]) -> dict:
    """Seconds per training step of every variant, measured in one sitting on this machine.

    The runs themselves may be trained on different days or machines (a session's CPU speed
    drifts by 30%), so the equal-time comparison uses these rates, not the runs' wall clocks. Each
    round times ``TIME_STEPS`` steps after ``TIME_WARMUP``; rounds alternate the order of the
    variants, and each variant's figure is the median of its rounds.
    """
    rates = {v.name: [] for v in variants}
    for round_ in range(TIME_ROUNDS):
        for v in variants if round_ % 2 == 0 else variants[::-1]:
            with tempfile.TemporaryDirectory() as run:
                trainer = Trainer(variant_config(v, TIME_WARMUP + TIME_STEPS), run)
                batches = iter(trainer.loader(0, TIME_WARMUP + TIME_STEPS))
                for _ in range(TIME_WARMUP):
                    trainer.train_step([next(batches)])
                t = time.perf_counter()
                for _ in range(TIME_STEPS):
                    trainer.train_step([next(batches)])
                rates[v.name].append((time.perf_counter() - t) / TIME_STEPS)
            print(f"timing round {round_ + 1}: {v.name} {rates[v.name][-1]:.3f} s/step", flush=True)
    return {"sec_per_step": {k: round(statistics.median(r), 4) for k, r in rates.items()},
            "rounds": {k: [round(x, 4) for x in r] for k, r in rates.items()},
            "steps": TIME_STEPS, "warmup": TIME_WARMUP, "threads": torch.get_num_threads(),
            "machine": machine(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}


def machine() -> str:
    from vco.device import cpu_has_bf16, cpu_name
    return f"{cpu_name()}, {torch.get_num_threads()} threads, " + ("native bf16" if cpu_has_bf16() else "AVX2 (no bf16)")


def read_config(run: Path) -> dict:
    import yaml
    return yaml.safe_load((run / "config.yaml").read_text())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", metavar="VARIANT", help="run only these variants")
    ap.add_argument("--guided", action="store_true", help="also the CFG sweep and guided FID at the end")
    ap.add_argument("--out", default=str(ROOT / "runs" / "miniature"), help="cache of runs and evaluations")
    ap.add_argument("--results", default=str(ROOT / "docs" / "results"), help="where the tables and plots go")
    ap.add_argument("--until", type=int, default=EVAL_AT[-1],
                    help="stop each variant after its evaluation at this step (continue later)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--minutes", type=float, default=0,
                    help="instead of the protocol's steps: train each chosen variant for this many minutes "
                         "(fp32 unless --precision), then score it (jit-tiny's FID target is for 30)")
    ap.add_argument("--schedule", default="constant", choices=("constant", "cosine", "linear"),
                    help="--minutes: the preset's constant lr, or one that decays to 0 where the budget ends")
    ap.add_argument("--lr", type=float, default=0.0, help="--minutes: the peak lr (default: the preset's)")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16"),
                    help="--minutes: the training precision (bf16 autocast; fast only where the CPU has it)")
    ap.add_argument("--time", action="store_true",
                    help="only time every variant's training step in one sitting (for the equal-time column)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    unknown = set(args.only or []) - set(BY_NAME)
    if unknown:
        ap.error(f"unknown variants {sorted(unknown)}; choose from {', '.join(BY_NAME)}")
    out, results = Path(args.out), Path(args.results)
    (results / "miniature").mkdir(parents=True, exist_ok=True)
    if args.time:
        write_json(results / "miniature" / TIMING_FILE, time_variants(
            [BY_NAME[n] for n in args.only] if args.only else VARIANTS))
        report(results, list(BY_NAME))
        return
    inception = InceptionFeatures("cpu")
    ref = load_reference(reference(out, {"ref_num": REF_NUM}, inception, image_size=28))
    chosen = [BY_NAME[n] for n in args.only] if args.only else VARIANTS
    if args.minutes:
        for v in chosen:
            budget = Budget(args.minutes, args.schedule, args.lr, args.precision)
            point = run_budget(v, out, ref, inception, budget)
            name = budget_name(v, budget)
            write_json(results / "miniature" / f"{name}.json", point)
            grid = out / name / "eval_final" / "samples_cfg1.png"
            if grid.is_file():
                (results / "miniature" / f"{name}.png").write_bytes(grid.read_bytes())
            print(json.dumps({k: point[k] for k in ("variant", "minutes", "step", "seconds", "fid")}), flush=True)
        report(results, list(BY_NAME))
        return
    for v in chosen:
        t = time.time()
        record_path = results / "miniature" / f"{v.name}.json"
        write_json(record_path, run_variant(v, out, ref, inception, args.guided, args.until, record_path))
        grid = out / v.name / f"eval_step{EVAL_AT[-1]}" / "samples_cfg1.png"
        if grid.is_file():
            (results / "miniature" / f"{v.name}.png").write_bytes(grid.read_bytes())
        print(f"{v.name}: done in {(time.time() - t) / 60:.1f} min", flush=True)
        report(results, list(BY_NAME))
    report(results, list(BY_NAME))


if __name__ == "__main__":
    main()

"""The paper's comparison in miniature: JiT against V-Co and V-Co without each of its four
ingredients, on Fashion-MNIST at its native 28 px, with the CPU presets (jit-tiny, vco-tiny).

    python benchmarks/miniature.py [--only jit-tiny vco-tiny] [--until STEP] [--guided] [--threads 2]

Every variant trains the preset's steps with the preset's batch, lr and seed (hence the same data
order) and is scored at ``EVAL_AT`` steps (FID / precision / recall / KID of 2,000 unguided samples,
200 per class, against the 10,000 test images), so the results hold both comparisons the paper
makes: at equal optimizer steps (the same row of steps) and at equal training time (each variant at
its evaluation point closest below JiT's final training seconds). ``--guided`` adds, at the final
step, a CFG sweep on 200 samples of another seed and the 2,000-sample FID at the w it picks.

Runs continue from their last checkpoint (an evaluation point is reached by resuming the run with
more steps: a resumed run equals an uninterrupted one) and every finished evaluation is cached, so
the command can be stopped and restarted at any time. Results: docs/results/miniature.{md,json,png}
and docs/results/miniature/<variant>.png (sample grids).
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ladder import cached, reference, training_seconds
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

# The protocol; the training budget is the preset's own (train.steps, batch, lr, EMA).
EVAL_AT = (900, 1800)           # steps at which each variant is scored (the last = the preset's)
FID_NUM, REF_NUM = 2000, 10_000
SAMPLE_STEPS = 25               # Heun, as the presets sample
SWEEP = (1.25, 1.5, 2.0, 3.0)   # --guided: w picked on SWEEP_NUM samples of seed 1
SWEEP_NUM = 200
LOG_EVERY = 10
TARGET_FID = 40                 # the goal for jit-tiny within 30 minutes of training
TIME_WARMUP, TIME_STEPS, TIME_ROUNDS = 5, 20, 2   # --time: steps per variant and round
TIMING_FILE = "timing.json"     # under docs/results/miniature/
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


def budget_name(v: Variant, minutes: float, schedule: str) -> str:
    return f"{v.name}-{minutes:g}min" + ("" if schedule == "constant" else f"-{schedule}")


def run_budget(v: Variant, out: Path, ref, inception, minutes: float, schedule: str = "constant") -> dict:
    """Train ``v`` for ``minutes`` of wall time, then score it as the protocol does. ``constant``:
    the preset's lr (constant after warmup), so the steps that fit are the protocol's run, only
    longer. ``cosine`` / ``linear``: the timed warmup steps say where the budget ends, and the lr
    decays to 0 there (vco.train.time_budget, as the demo plans). A stopped run resumes from its
    checkpoint with the minutes it has left; a decayed one keeps the end it planned."""
    run = out / budget_name(v, minutes, schedule)
    cache = run / "eval_final.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    metrics, resume = run / "metrics.jsonl", (run / "checkpoint.json").is_file()
    used = training_seconds(metrics, LOG_EVERY) if metrics.is_file() else 0.0
    if used < minutes * 60:
        print(f"== {run.name}: train for {minutes:g} min ({used / 60:.1f} done)", flush=True)
        limit = f"train.time_limit_min={(minutes * 60 - used) / 60:.4f}"
        if resume and schedule != "constant":
            cfg = build_config(config_file=run / "config.yaml", overrides=[limit])
        else:
            cfg = build_config(v.preset, overrides=[*cfg_overrides(v, BUDGET_STEP_CAP), limit,
                                                    f"train.lr_schedule={schedule}"])
        trainer, replan = Trainer(cfg, run, resume=resume), None
        if schedule != "constant" and not resume:
            replan = plan_schedule(trainer, minutes * 60)
            print(f"   lr decays ({schedule}) to 0 at step {replan.planned} (re-planned at step {replan.at})")
        trainer.train(progress=True, on_step=replan)
    step = json.loads((run / "checkpoint.json").read_text())["step"]
    result = score(run, EvalSettings(num=FID_NUM, cfg=1.0, steps=SAMPLE_STEPS, method="heun", batch_size=100),
                   ref, inception, run / "eval_final")
    point = {"variant": v.name, "minutes": minutes, "lr_schedule": schedule, "step": step,
             "seconds": round(training_seconds(metrics, LOG_EVERY), 1),
             **{k: result[k] for k in ("fid", "precision", "recall", "kid", "kid_std")},
             "eval_seconds": result["seconds"], "threads": torch.get_num_threads(), "machine": machine(),
             "precision_trained": "fp32", "config": read_config(run)}
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


def timed_seconds(records: list[dict], timing: dict | None) -> None:
    """Each point's ``timed_seconds``: its steps at the variant's one-sitting rate (None: not timed)."""
    rates = (timing or {}).get("sec_per_step", {})
    for r in records:
        for p in r["points"]:
            p["timed_seconds"] = round(p["step"] * rates[r["variant"]], 1) if r["variant"] in rates else None


def read_config(run: Path) -> dict:
    import yaml
    return yaml.safe_load((run / "config.yaml").read_text())


def at_equal_time(record: dict, seconds: float, key: str = "seconds") -> dict:
    """The evaluation point with the most training within ``seconds`` (5% slack for timing noise);
    the first point if even that took longer. key: "seconds" (the run's wall clock) or
    "timed_seconds" (steps at the one-sitting rate)."""
    within = [p for p in record["points"] if p[key] <= 1.05 * seconds]
    return within[-1] if within else record["points"][0]


def write_outputs(records: list[dict], results: Path, timing: dict | None = None, budgets=()) -> None:
    """miniature.{json,md,png}: the protocol's records, and the runs trained for a time budget."""
    timed_seconds(records, timing)
    # Equal time on the one-sitting rates when every variant has one, else on the runs' clocks.
    key = "timed_seconds" if all(p["timed_seconds"] for r in records for p in r["points"]) else "seconds"
    write_json(results / "miniature.json", {"equal_time_from": key, "timing": timing,
        "protocol": {"eval_at_steps": EVAL_AT, "fid_num": FID_NUM, "ref_num": REF_NUM,
                     "sampler": f"heun {SAMPLE_STEPS} steps", "guidance": "w=1 unless under 'guided'",
                     "sweep": SWEEP, "sweep_num": SWEEP_NUM,
                     "threads": "per point (torch threads of its training and scoring)"},
        "variants": records, "budget_runs": [{k: b[k] for k in b if k != "config"} for b in budgets]})
    base = next((r for r in records if r["variant"] == "jit-tiny"), None)
    t_jit = base["points"][-1][key] if base else None
    lines = ["# V-Co against JiT in miniature (Fashion-MNIST 28 px, 2-core CPU)", "",
             f"Each variant: its preset's training (batch, lr, EMA, seed: the same data order), fp32; "
             f"EMA-1 weights; Heun {SAMPLE_STEPS} steps; FID of {FID_NUM} samples ({FID_NUM // 10} per class) "
             f"against the {REF_NUM} test images. Unguided (w = 1) unless marked. Equal time: each variant at "
             f"its last evaluation point within JiT's training seconds"
             + (f" ({t_jit:.0f} s)" if t_jit else "")
             + (f", each variant's seconds being its steps at the rate measured for all of them in one "
                f"sitting ({timing['date']}, {timing['machine']}; `--time`)." if key == "timed_seconds"
                else ", from each run's own clock (not all variants timed in one sitting: `--time`)."), "",
             "| variant | lacks | params | " + " | ".join(f"FID @ {s} steps" for s in EVAL_AT)
             + " | s / step | FID @ equal time (step) | guided FID (w) | precision | recall |",
             "|---|---|---|" + "---|" * len(EVAL_AT) + "---|---|---|---|---|"]
    for r in records:
        by_step = {p["step"]: p for p in r["points"]}
        fids = " | ".join(f"{by_step[s]['fid']:.2f}" if s in by_step else "-" for s in EVAL_AT)
        last = r["points"][-1]
        per_step = last[key] / max(last["step"], 1)
        eq = at_equal_time(r, t_jit, key) if t_jit else None
        late = eq is not None and eq[key] > 1.05 * t_jit          # even its first point took longer
        eq_txt = f"{eq['fid']:.2f} ({eq['step']}{', ' + format(eq[key] / 60, '.0f') + ' min †' if late else ''})" \
            if eq else "-"
        g = r.get("guided")
        g_txt = f"{g['fid']:.2f} ({g['w']:g})" if g else "-"
        pr = g or last
        lines.append(f"| {r['variant']} | {r['removes']} | {r['params'] / 1e6:.2f}M | {fids} | {per_step:.2f} | "
                     f"{eq_txt} | {g_txt} | {pr['precision']:.3f} | {pr['recall']:.3f} |")
    if t_jit and any(r["points"][0][key] > 1.05 * t_jit for r in records):
        lines += ["", f"† even this variant's first evaluation point took longer than JiT's whole run "
                      f"({t_jit / 60:.0f} min): the FID against training time is in miniature.png."]
    if budgets:
        lines += ["", "Trained for a time budget instead of the steps (`--minutes`; the same preset and EMA, "
                      "fp32, scored as above; the run's own clock on a quiet machine; lr: the preset's constant "
                      "one, or decayed to 0 where the budget ends, `--schedule`):", "",
                  "| variant | budget | lr | steps | FID | precision | recall | machine |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {b['variant']} | {b['minutes']:g} min | {b.get('lr_schedule', 'constant')} | {b['step']} | "
                  f"{b['fid']:.2f} | {b['precision']:.3f} | {b['recall']:.3f} | {b['machine']} |" for b in budgets]
    pending = [v.name for v in VARIANTS if v.name not in {r["variant"] for r in records}]
    if pending:
        lines += ["", f"Not yet run: {', '.join(pending)}. `python benchmarks/miniature.py` resumes where it stopped."]
    (results / "miniature.md").write_text("\n".join(lines) + "\n")
    plot(records, results / "miniature.png", key, budgets)


def plot(records: list[dict], path: Path, key: str = "seconds", budgets=()) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=120)
    for r in records:
        pts = r["points"]
        style = "o-" if r["variant"] in ("jit-tiny", "vco-tiny") else "o--"
        for ax, xs in ((axes[0], [p[key] / 60 for p in pts]), (axes[1], [p["step"] for p in pts])):
            line, = ax.plot(xs, [p["fid"] for p in pts], style, label=r["variant"])
            for x, p in zip(xs, pts):
                ax.annotate(f"{p['fid']:.1f}", (x, p["fid"]), textcoords="offset points", xytext=(4, 4),
                            fontsize=7, color=line.get_color())
    for b in budgets:
        axes[0].plot([b["seconds"] / 60], [b["fid"]], "*", ms=11,
                     label=f"{b['variant']}, {b['minutes']:g} min budget, {b.get('lr_schedule', 'constant')} lr")
        axes[0].annotate(f"{b['fid']:.1f}", (b["seconds"] / 60, b["fid"]), textcoords="offset points",
                         xytext=(4, 4), fontsize=7)
    if budgets:
        axes[0].legend(fontsize=8)
    axes[0].set_xlabel("training time (min, 2-core CPU" + (", one-sitting rates)" if key == "timed_seconds" else ")"))
    axes[1].set_xlabel("optimizer steps")
    for ax in axes:
        ax.axhline(TARGET_FID, color="grey", ls=":", lw=1, label=f"target for jit-tiny ({TARGET_FID})")
        ax.set_ylabel("FID (2,000 samples, unguided)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.suptitle("Fashion-MNIST 28 px: FID against training time and steps")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


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
                         "(fp32), then score it (jit-tiny's FID target is for 30)")
    ap.add_argument("--schedule", default="constant", choices=("constant", "cosine", "linear"),
                    help="--minutes: the preset's constant lr, or one that decays to 0 where the budget ends")
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
        report(results)
        return
    inception = InceptionFeatures("cpu")
    ref = load_reference(reference(out, {"ref_num": REF_NUM}, inception, image_size=28))
    chosen = [BY_NAME[n] for n in args.only] if args.only else VARIANTS
    if args.minutes:
        for v in chosen:
            point = run_budget(v, out, ref, inception, args.minutes, args.schedule)
            name = budget_name(v, args.minutes, args.schedule)
            write_json(results / "miniature" / f"{name}.json", point)
            grid = out / name / "eval_final" / "samples_cfg1.png"
            if grid.is_file():
                (results / "miniature" / f"{name}.png").write_bytes(grid.read_bytes())
            print(json.dumps({k: point[k] for k in ("variant", "minutes", "step", "seconds", "fid")}), flush=True)
        report(results)
        return
    for v in chosen:
        t = time.time()
        record_path = results / "miniature" / f"{v.name}.json"
        write_json(record_path, run_variant(v, out, ref, inception, args.guided, args.until, record_path))
        grid = out / v.name / f"eval_step{EVAL_AT[-1]}" / "samples_cfg1.png"
        if grid.is_file():
            (results / "miniature" / f"{v.name}.png").write_bytes(grid.read_bytes())
        print(f"{v.name}: done in {(time.time() - t) / 60:.1f} min", flush=True)
        report(results)
    report(results)


def report(results: Path) -> None:
    records = [json.loads(p.read_text()) for v in VARIANTS
               if (p := results / "miniature" / f"{v.name}.json").is_file()]
    folder = results / "miniature"       # budget_name's files: <variant>-<m>min[-<schedule>].json
    budgets = [json.loads(p.read_text()) for p in sorted([*folder.glob("*min.json"), *folder.glob("*min-*.json")])]
    timing = results / "miniature" / TIMING_FILE
    if records:
        write_outputs(records, results, json.loads(timing.read_text()) if timing.is_file() else None, budgets)
        print(f"{len(records)}/{len(VARIANTS)} variants -> {results / 'miniature.md'}", flush=True)


if __name__ == "__main__":
    main()

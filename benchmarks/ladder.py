"""V-Co's ablation ladder in miniature: Tables 1-4 on Fashion-MNIST (the first 32x32 CPU presets, offline encoder).

    python benchmarks/ladder.py [--budget default] [--only vco-tiny jit-tiny] [--threads 2]

Every variant trains with the same budget (steps, batch, lr, seed, hence the same data order),
then is evaluated against the Fashion-MNIST test set: a small CFG sweep on a separate seed picks
w, then FID / precision / recall on ``fid_num`` samples unguided (w = 1) and guided (that w).
Each stage is cached in ``--out`` (runs resume from their last checkpoint, finished evaluations
are never recomputed), so the ladder can be stopped and restarted at any time. Results:
docs/results/ladder.{md,json,png} and docs/results/ladder/<variant>.{json,png}. A variant whose
record is in docs/results/ladder/ at this budget is finished and skipped (delete the record to
rerun it); with every variant finished, the command just rewrites the tables and the chart.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vco.config import build_config
from vco.data import build_dataset
from vco.eval import InceptionFeatures, load_reference, save_reference
from vco.eval.evaluate import EvalSettings, evaluate, write_json
from vco.models import count_params
from vco.train import Trainer, load_run_model
from vco.train.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Variant:
    name: str            # the record's name: what it changes
    preset: str
    overrides: list[str] = field(default_factory=list)
    table: str = ""      # which of the paper's tables the row belongs to
    paper: str = ""      # the paper's number for the analogous row (B/16, ImageNet-256)


# The cumulative path of the paper's recipe figure: architecture (Table 1, no auxiliary loss),
# then the unconditional branch (Table 2), the auxiliary loss (Table 3), the calibration (Table 4).
VARIANTS = [
    Variant("jit-tiny", "jit-tiny", [], "1", "32.54 unguided"),
    Variant("jit-tiny-wide", "jit-tiny-wide", [], "1", "22.67 unguided"),
    Variant("token_concat", "vco-tiny", ["fusion=token_concat", "aux_loss=none"], "1", "14.70 unguided"),
    Variant("direct_add", "vco-tiny", ["fusion=direct_add", "aux_loss=none"], "1", "15.15 unguided"),
    Variant("channel_concat", "vco-tiny", ["fusion=channel_concat", "aux_loss=none"], "1", "14.33 unguided"),
    Variant("dual_stream-no_aux", "vco-tiny", ["aux_loss=none"], "1, 2", "8.86 unguided; 3.18 guided"),
    Variant("input_dropout", "vco-tiny", ["aux_loss=none", "uncond=input_dropout_zeros"], "2", "6.69 guided"),
    Variant("vco-tiny", "vco-tiny", [], "3, 4", "2.52 guided"),
    Variant("repa", "vco-tiny", ["aux_loss=repa"], "3", "3.14 guided"),
    Variant("perceptual", "vco-tiny", ["aux_loss=perceptual"], "3", "not retrieved"),
    Variant("drifting", "vco-tiny", ["aux_loss=drifting"], "3", "not retrieved"),
    Variant("time_shift", "vco-tiny", ["calibration=time_shift"], "4", "2.93 guided"),
    Variant("calibration_none", "vco-tiny", ["calibration=none"], "4", "not retrieved"),
]
BY_NAME = {v.name: v for v in VARIANTS}

# steps/batch/lr of training; samples, sweep and sampler of the evaluation
BUDGETS = {
    "smoke": dict(steps=2, batch=16, fid_num=20, sweep_num=10, sweep=(1.5, 3.0), sample_steps=2,
                  ref_num=100),
    # Measured on 2 cores, vco-tiny: train 13 min, sample 8 (unguided) + 22 (guided) + 4 (sweep),
    # Inception 15 (5 img/s): 63 min (30-51 without the hybrid loss), ~10 h for the 13; every
    # stage is cached.
    # 150 steps of 32 were too few (jit-tiny: FID 340, blobs; EMA 0.99 still held 22% of init).
    "default": dict(steps=400, batch=16, fid_num=2000, sweep_num=100, sweep=(1.5, 2.0, 3.0),
                    sample_steps=5, ref_num=10_000),
    "long": dict(steps=1000, batch=64, fid_num=5000, sweep_num=500, sweep=(1.5, 2.0, 2.5, 3.0, 4.0),
                 sample_steps=25, ref_num=10_000),
}
LOG_EVERY = 5      # training logs (and the resume arithmetic of training_seconds)
LR = 5e-4          # the demo's lr; blr is set so that every batch size trains at it
SEED = 0


# The ladder was run with the first CPU presets (32 px, width 256; widened 360 / 6 heads; EMA
# 0.99 / 0.999; MobileNet features[:14]); they are pinned here so its records stay reproducible.
# The current presets' comparison is benchmarks/miniature.py.
LEGACY_32PX = ["model.image_size=32", "model.patch_size=4", "model.hidden_size=256", "model.num_heads=4",
               "train.ema_decays=[0.99,0.999]", "train.warmup_steps=20", "semantic.encoder_layer=14", "model.semantic_dim=96"]
LEGACY_WIDE = ["model.hidden_size=360", "model.num_heads=6"]


def variant_config(v: Variant, budget: dict):
    b = budget["batch"]
    legacy = LEGACY_32PX + (LEGACY_WIDE if v.preset.endswith("-wide") else [])
    common = legacy + ["data.name=fashion-mnist", f"train.steps={budget['steps']}", f"train.batch_size={b}",
              f"train.blr={LR * 256 / b}", f"train.seed={SEED}", f"train.log_every={LOG_EVERY}",
              "train.ckpt_every=25", "train.precision=fp32", "data.classes_per_batch=8",
              f"sampler.steps={budget['sample_steps']}", "sampler.method=heun",
              "semantic.stats_images=2048"]
    return build_config(v.preset, overrides=common + v.overrides)


def reference(out: Path, budget: dict, inception, image_size: int = 32) -> Path:
    """Inception statistics (and features, for precision/recall) of the Fashion-MNIST test set at
    the resolution the models generate (28: the native images, untouched)."""
    path = out / f"fashion-mnist-test-{image_size}px-ref{budget['ref_num']}.npz"
    if not path.is_file():
        cfg = build_config("jit-tiny", overrides=["data.name=fashion-mnist-test"])
        data = build_dataset(cfg.data, image_size, 10)
        images = data.images[:budget["ref_num"]].expand(-1, 3, -1, -1)
        feats = inception.extract(images, batch_size=25)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_reference(path, feats.mean(0), np.cov(feats, rowvar=False), feats)
    return path


def train(v: Variant, cfg, run: Path) -> dict:
    done = run / "trained.json"
    if done.is_file():
        return json.loads(done.read_text())
    trainer = Trainer(cfg, run, resume=(run / "checkpoint.json").is_file())
    trainer.train(progress=True)
    record = {"steps": trainer.step, "seconds": round(training_seconds(run / "metrics.jsonl"), 1),
              "params": count_params(cfg.model)}
    write_json(done, record)
    return record


def training_seconds(metrics: Path, log_every: int = LOG_EVERY) -> float:
    """Wall-clock of the training that the final weights went through: a run interrupted and
    resumed counts each segment only up to the checkpoint the next one resumed from (the steps
    redone after it are counted once)."""
    rows = read_metrics(metrics)
    segments, current = [], []
    for r in rows:
        if current and r["elapsed_s"] < current[-1]["elapsed_s"]:   # a new train() call began
            segments.append(current)
            current = []
        current.append(r)
    segments.append(current)
    total = 0.0
    for seg, nxt in zip(segments, segments[1:] + [None]):
        until = nxt[0]["step"] - log_every if nxt else seg[-1]["step"]   # its first log is one period in
        total += max((r["elapsed_s"] for r in seg if r["step"] <= until), default=0.0)
    return total


def evaluate_variant(run: Path, budget: dict, ref, inception) -> dict:
    out = {}
    model, cfg, meta = load_run_model(run)
    null = lambda w, num, seed: EvalSettings(num=num, cfg=w, steps=budget["sample_steps"], method="heun",
                                            seed=seed, batch_size=100)
    sweep = []
    for w in budget["sweep"]:                      # a separate seed: w is not picked on the test draw
        sweep.append(cached(run / f"ladder_sweep_w{w:g}.json",
                             lambda: evaluate(model, cfg, meta, null(w, budget["sweep_num"], 1), ref, "cpu",
                                              inception)))
    best = min(sweep, key=lambda r: r["fid"])["settings"]["cfg"]
    out["sweep"] = sweep
    out["unguided"] = cached(run / "ladder_unguided.json",
                              lambda: evaluate(model, cfg, meta, null(1.0, budget["fid_num"], 0), ref, "cpu",
                                               inception, run / "eval"))
    out["guided"] = cached(run / "ladder_guided.json",
                            lambda: evaluate(model, cfg, meta, null(best, budget["fid_num"], 0), ref, "cpu",
                                             inception, run / "eval"))
    return out


def cached(path: Path, compute) -> dict:
    """The JSON at ``path``, or ``compute()``'s result written there (so a stopped benchmark
    restarts where it was)."""
    if path.is_file():
        return json.loads(path.read_text())
    result = compute()
    write_json(path, result)
    return result


def record_of(v: Variant, trained: dict, ev: dict) -> dict:
    return {"variant": v.name, "params": trained["params"], "steps": trained["steps"],
            "seconds": trained["seconds"], "fid_unguided": round(ev["unguided"]["fid"], 3),
            "fid_guided": round(ev["guided"]["fid"], 3), "cfg": ev["guided"]["settings"]["cfg"],
            "precision": round(ev["guided"]["precision"], 4), "recall": round(ev["guided"]["recall"], 4)}


def write_outputs(runs: list[dict], budget_name: str, budget: dict, results: Path) -> None:
    """``runs``: the per-variant JSONs (``record`` + the evaluations) of the finished variants."""
    records = [run["record"] for run in runs]
    write_json(results / "ladder.json", records)
    lines = [f"# Ablation ladder on Fashion-MNIST (budget `{budget_name}`)", "",
             f"Every variant: {budget['steps']} steps of batch {budget['batch']} (8 classes per batch), "
             f"lr {LR}, seed {SEED}, fp32 on the CPU; EMA-1 weights; Heun {budget['sample_steps']} steps; "
             f"FID against {budget['ref_num']} Fashion-MNIST test images on {budget['fid_num']} samples "
             f"({budget['fid_num'] // 10} per class); w picked by FID on {budget['sweep_num']} samples of another seed "
             f"among {', '.join(f'{w:g}' for w in budget['sweep'])}. Precision/recall (k = 3) of the guided samples.",
             "KID (x1000, ± its std over subsets) shows which FID gaps are noise.",
             "", "| variant | table | params | steps | train s | FID unguided | FID guided | w | KID guided | precision | recall | paper (B/16, IN-256) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for run in runs:
        r, v, g = run["record"], BY_NAME[run["record"]["variant"]], run["guided"]
        lines.append(f"| {r['variant']} | {v.table} | {r['params'] / 1e6:.2f}M | {r['steps']} | {r['seconds']:.0f} | "
                     f"{r['fid_unguided']:.2f} | {r['fid_guided']:.2f} | {r['cfg']:g} | "
                     f"{1e3 * g['kid']:.1f} ± {1e3 * g['kid_std']:.1f} | {r['precision']:.3f} | "
                     f"{r['recall']:.3f} | {v.paper} |")
    finished = {r["variant"] for r in records}
    pending = [name for name in BY_NAME if name not in finished]
    if pending:
        lines += ["", f"Not yet run at this budget ({len(records)} of {len(BY_NAME)} done): "
                  + ", ".join(pending) + ". `python benchmarks/ladder.py` resumes where it stopped."]
    lines += ["", "Sample grids (guided): `docs/results/ladder/<variant>.png`; every run's JSON: "
              "`docs/results/ladder/<variant>.json`."]
    (results / "ladder.md").write_text("\n".join(lines) + "\n")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = [r["variant"] for r in records]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(7, 0.8 * len(names)), 4), dpi=120)
    for dx, key, label in ((-0.2, "fid_unguided", "unguided"), (0.2, "fid_guided", "guided (best w)")):
        bars = ax.bar(x + dx, [r[key] for r in records], 0.4, label=label)
        # the gaps can be a few points on a scale of 100s; vertical so neighbouring labels never overlap
        ax.bar_label(bars, fmt="%.1f", fontsize=7, rotation=90, padding=2)
    top = max(max(r["fid_unguided"], r["fid_guided"]) for r in records)
    ax.set_ylim(0, 1.25 * top)   # room above the tallest bar for its label
    ax.set_xticks(x, names, rotation=40, ha="right")
    ax.set_ylabel("FID (lower is better)")
    ax.set_title(f"V-Co ladder on Fashion-MNIST, {budget['steps']} steps x {budget['batch']}")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))   # outside: the bars fill the axes
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(results / "ladder.png")
    plt.close(fig)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", choices=sorted(BUDGETS), default="default")
    ap.add_argument("--only", nargs="+", metavar="VARIANT", help="run only these variants")
    ap.add_argument("--out", default=None, help="cache of runs and evaluations (default runs/ladder-<budget>)")
    ap.add_argument("--results", default=str(ROOT / "docs" / "results"), help="where the tables and plots go")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    budget = BUDGETS[args.budget]
    unknown = set(args.only or []) - set(BY_NAME)
    if unknown:
        ap.error(f"unknown variants {sorted(unknown)}; choose from {', '.join(BY_NAME)}")
    chosen = [BY_NAME[n] for n in args.only] if args.only else VARIANTS   # in the order given
    out = Path(args.out or ROOT / "runs" / f"ladder-{args.budget}")
    results = Path(args.results)
    (results / "ladder").mkdir(parents=True, exist_ok=True)
    # a variant whose record is in the results folder is finished, even if its runs/ cache is gone
    done = {run["record"]["variant"] for run in finished_runs(results / "ladder", args.budget)}
    todo = [v for v in chosen if v.name not in done]
    print(f"finished at budget {args.budget}: {', '.join(sorted(done)) or 'none'}; to run: "
          f"{', '.join(v.name for v in todo) or 'none'}", flush=True)
    if todo:
        inception = InceptionFeatures("cpu")
        ref = load_reference(reference(out, budget, inception))
    for v in todo:
        run = out / v.name
        print(f"== {v.name}: {v.preset} {' '.join(v.overrides)}", flush=True)
        trained = train(v, variant_config(v, budget), run)
        ev = evaluate_variant(run, budget, ref, inception)
        rec = record_of(v, trained, ev)
        write_json(results / "ladder" / f"{v.name}.json", {"record": rec, "config": v.overrides,
                                                          "preset": v.preset, "budget": args.budget,
                                                          "train": trained, **ev})
        grid = run / "eval" / f"samples_cfg{rec['cfg']:g}.png"
        if grid.is_file():
            (results / "ladder" / f"{v.name}.png").write_bytes(grid.read_bytes())
        print(json.dumps(rec), flush=True)
        report(results, args.budget, budget)
    if not todo:
        report(results, args.budget, budget)


def report(results: Path, budget_name: str, budget: dict) -> None:
    runs = finished_runs(results / "ladder", budget_name)   # every finished variant, not just this call's
    write_outputs(runs, budget_name, budget, results)
    print(f"ladder of {len(runs)}/{len(VARIANTS)} variants -> {results / 'ladder.md'}", flush=True)


def finished_runs(folder: Path, budget_name: str) -> list[dict]:
    """The JSON of every variant evaluated at this budget, in the ladder's order."""
    runs = []
    for v in VARIANTS:
        path = folder / f"{v.name}.json"
        if path.is_file() and (run := json.loads(path.read_text()))["budget"] == budget_name:
            runs.append(run)
    return runs


if __name__ == "__main__":
    main()

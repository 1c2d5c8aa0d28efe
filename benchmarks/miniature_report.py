"""The miniature's protocol (what is scored, at which steps) and its report: the tables and the plot
of docs/results/miniature.{md,json,png} from the records benchmarks/miniature.py writes."""
from __future__ import annotations

import json
from pathlib import Path

from vco.eval.evaluate import write_json

# The protocol; the training budget is the preset's own (train.steps, batch, lr, EMA).
EVAL_AT = (900, 1800)           # steps at which each variant is scored (the last = the preset's)
FID_NUM, REF_NUM = 2000, 10_000
SAMPLE_STEPS = 25               # Heun, as the presets sample
SWEEP = (1.25, 1.5, 2.0, 3.0)   # --guided: w picked on SWEEP_NUM samples of seed 1
SWEEP_NUM = 200
TARGET_FID = 40                 # the goal for jit-tiny within 30 minutes of training
TIMING_FILE = "timing.json"     # under docs/results/miniature/


def timed_seconds(records: list[dict], timing: dict | None) -> None:
    """Each point's ``timed_seconds``: its steps at the variant's one-sitting rate (None: not timed)."""
    rates = (timing or {}).get("sec_per_step", {})
    for r in records:
        for p in r["points"]:
            p["timed_seconds"] = round(p["step"] * rates[r["variant"]], 1) if r["variant"] in rates else None


def at_equal_time(record: dict, seconds: float, key: str = "seconds") -> dict:
    """The evaluation point with the most training within ``seconds`` (5% slack for timing noise);
    the first point if even that took longer. key: "seconds" (the run's wall clock) or
    "timed_seconds" (steps at the one-sitting rate)."""
    within = [p for p in record["points"] if p[key] <= 1.05 * seconds]
    return within[-1] if within else record["points"][0]


def write_outputs(records: list[dict], results: Path, timing: dict | None = None, budgets=(),
                  variant_names=()) -> None:
    """miniature.{json,md,png}: the protocol's records, and the runs trained for a time budget."""
    timed_seconds(records, timing)
    # Equal time on the one-sitting rates when every variant has one, else on the runs' clocks.
    key = "timed_seconds" if all(p["timed_seconds"] for r in records for p in r["points"]) else "seconds"
    write_json(results / "miniature.json", {"equal_time_from": key, "timing": timing,
        "protocol": {"eval_at_steps": EVAL_AT, "fid_num": FID_NUM, "ref_num": REF_NUM,
                     "sampler": f"heun {SAMPLE_STEPS} steps", "guidance": "w=1 unless under 'guided'",
                     "sweep": SWEEP, "sweep_num": SWEEP_NUM,
                     "threads": "per point (torch threads of its training and scoring)"},
        "variants": records,
        "budget_runs": [{**{k: b[k] for k in b if k != "config"}, "peak_lr": peak_lr(b)} for b in budgets]})
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
        lines += ["", "Trained for a time budget instead of the steps (`--minutes`; the same preset, batch and "
                      "EMA, scored as above; the run's own clock on a quiet machine; lr: the preset's peak or "
                      "`--lr`, constant after warmup or decayed to 0 where the budget ends, `--schedule`; "
                      "`--precision`):", "",
                  "| variant | budget | peak lr | lr after warmup | trained in | steps | FID | precision | recall "
                  "| machine |", "|---|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {b['variant']} | {b['minutes']:g} min | {peak_lr(b):g} | {b.get('lr_schedule', 'constant')} | "
                  f"{b.get('precision_trained', 'fp32')} | {b['step']} | {b['fid']:.2f} | {b['precision']:.3f} | "
                  f"{b['recall']:.3f} | {b['machine']} |" for b in budgets]
    pending = [n for n in variant_names if n not in {r["variant"] for r in records}]
    if pending:
        lines += ["", f"Not yet run: {', '.join(pending)}. `python benchmarks/miniature.py` resumes where it stopped."]
    (results / "miniature.md").write_text("\n".join(lines) + "\n")
    plot(records, results / "miniature.png", key, budgets)


def peak_lr(point: dict) -> float:
    """A budget run's peak lr, from its config (lr = blr x batch / 256)."""
    train = point["config"]["train"]
    return train["blr"] * train["batch_size"] * train.get("grad_accum", 1) / 256


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
                     label=f"{b['variant']}, {b['minutes']:g} min, lr {peak_lr(b):g} {b.get('lr_schedule', 'constant')}, "
                           f"{b.get('precision_trained', 'fp32')}")
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


def report(results: Path, variant_names: list[str]) -> None:
    records = [json.loads(p.read_text()) for name in variant_names
               if (p := results / "miniature" / f"{name}.json").is_file()]
    folder = results / "miniature"       # budget_name's files: <variant>-<m>min[-<schedule>].json
    budgets = [json.loads(p.read_text()) for p in sorted([*folder.glob("*min.json"), *folder.glob("*min-*.json")])]
    timing = results / "miniature" / TIMING_FILE
    if records:
        write_outputs(records, results, json.loads(timing.read_text()) if timing.is_file() else None, budgets,
                      variant_names)
        print(f"{len(records)}/{len(variant_names)} variants -> {results / 'miniature.md'}", flush=True)

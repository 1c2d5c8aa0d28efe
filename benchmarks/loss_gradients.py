"""How much does each loss term pull? Per-term gradients of a V-Co run at one of its checkpoints.

    python benchmarks/loss_gradients.py --run runs/miniature/vco-tiny [--batches 8] [--name vco-tiny-step900]

For training batches of the run's own schedule (same data, flips, drops, t and noise as the
trainer draws), each weighted loss term w_i L_i is differentiated separately with respect to the
model's clean-image prediction x_pred (RMS per pixel: what the term asks of the image) and to the
model's weights (global norm, and the cosine with the pixel v-loss's weight gradient: whether the
term helps the pixels, fights them, or is noise next to them). Prints a table; writes
docs/results/loss_gradients/<name>.{md,json}.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from vco.config import build_config, to_dict
from vco.eval.evaluate import write_json
from vco.losses import StepTensors
from vco.train import Trainer

ROOT = Path(__file__).resolve().parents[1]


def step_tensors(trainer: Trainer, micro: int = 0) -> StepTensors:
    """One micro-batch of the trainer's current step, as its objective sees it."""
    images, labels = next(iter(trainer.loader(trainer.step, trainer.step + 1)))
    rng = trainer.streams(micro)
    x, y, flipped = trainer.batch(images, labels, rng)
    f = None if trainer.semantic is None else trainer.semantic.targets(x, trainer.indices(micro), flipped)
    return trainer.objective.step_tensors(x, y, f, rng)


def term_gradients(trainer: Trainer) -> tuple[dict[str, dict], dict[str, torch.Tensor]]:
    """Per loss term: its figures, and its flattened gradient on the model's weights."""
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    step = step_tensors(trainer)
    step.x_pred.retain_grad()
    out, flat = {}, {}
    for slot, term in trainer.objective.terms.items():
        value = term(**step.select(term.inputs, slot))
        weighted = term.weight * value
        grads = torch.autograd.grad(weighted, [step.x_pred] + params, retain_graph=True, allow_unused=True)
        g_x = grads[0]
        g_theta = torch.cat([(g if g is not None else torch.zeros_like(p)).flatten()
                             for g, p in zip(grads[1:], params)])
        flat[slot] = g_theta
        out[slot] = {"weight": term.weight, "value": float(value.detach()), "weighted": float(weighted.detach()),
                     "x_pred_grad_rms": 0.0 if g_x is None else float(g_x.pow(2).mean().sqrt()),
                     "param_grad_norm": float(g_theta.norm())}
    base = flat["pix"]                         # every co-denoising objective has the pixel v-loss
    for slot, g in flat.items():
        # in float64: a float32 cosine of 8M-element vectors is off by 3e-3
        out[slot]["cos_with_pix"] = float(torch.nn.functional.cosine_similarity(g.double(), base.double(), dim=0))
    return out, flat


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a V-Co run folder (its checkpoint and config)")
    ap.add_argument("--batches", type=int, default=8, help="training batches to average over")
    ap.add_argument("--name", help="results name (default: the run folder's name and step)")
    ap.add_argument("--results", default=str(ROOT / "docs" / "results" / "loss_gradients"))
    args = ap.parse_args(argv)
    run = Path(args.run)
    cfg = build_config(config_file=run / "config.yaml", overrides=["train.precision=fp32"])
    trainer = Trainer(cfg, run, resume=True)
    trainer.objective.train()
    start, rows = trainer.step, []
    for b in range(args.batches):
        trainer.step = start + b               # the run's own next batches (nothing is written)
        rows.append(term_gradients(trainer)[0])
    mean = {slot: {k: sum(r[slot][k] for r in rows) / len(rows) for k in rows[0][slot]} for slot in rows[0]}
    name = args.name or f"{run.name}-step{start}"
    lines = [f"# Loss-term gradients: {name} ({args.batches} batches of {cfg.train.batch_size}, fp32)", "",
             "| term | weight | value | weighted | RMS d/dx_pred | norm d/dtheta | cos with pix (theta) |",
             "|---|---|---|---|---|---|---|"]
    for slot, m in mean.items():
        lines.append(f"| {slot} | {m['weight']:g} | {m['value']:.4g} | {m['weighted']:.4g} | "
                     f"{m['x_pred_grad_rms']:.3g} | {m['param_grad_norm']:.3g} | {m['cos_with_pix']:.3f} |")
    print("\n".join(lines))
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / f"{name}.json", {"run": str(run), "step": start, "batches": args.batches, "mean": mean,
                                      "per_batch": rows, "config": to_dict(cfg)})
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

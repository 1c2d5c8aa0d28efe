"""How visible the patch grid is in a run's samples, against the data's own images.

    python benchmarks/patch_seams.py --run linear=demo_linear/run conv=demo_conv/run [--num 200]

Samples ``--num`` class-balanced images from each run's EMA-1 weights (its own sampler settings,
``--steps`` Heun steps, seed 0) and computes the patch-seam ratio (src/vco/eval/seams.py: mean
|neighbour difference| across patch borders over that inside patches; 1 = no grid) at the run's
patch size, with the same ratio of the Fashion-MNIST test images as the reference. Writes
``<out>.json``, ``<out>.md`` and each run's grid ``<out>/<label>.png``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from vco.data import load_fashion_mnist
from vco.eval.evaluate import write_json
from vco.eval.seams import patch_seam_ratio
from vco.sampling import class_labels, generate, save_grid
from vco.train import load_run_model

ROOT = Path(__file__).resolve().parents[1]
GRID_PER_CLASS = 6          # samples of each class in the grid (the demo's)


def data_ratio(image_size: int, patch: int) -> float:
    return patch_seam_ratio(load_fashion_mnist("test", image_size).images, patch)


def run_ratio(run: Path, num: int, steps: int, grid: Path) -> dict:
    model, cfg, meta = load_run_model(run, "ema1")
    cfg.sampler.steps = steps
    labels = class_labels(num, cfg.model.num_classes)
    images = generate(model, cfg, labels, seed=0, batch_size=100)
    shown = torch.cat([torch.nonzero(labels == k)[:GRID_PER_CLASS, 0] for k in labels.unique()])
    save_grid(images[shown], labels[shown], meta["class_names"], grid)
    step = json.loads((run / "checkpoint.json").read_text())["step"]
    return {"run": str(run), "step": step, "pixel_head": cfg.model.pixel_head, "patch": cfg.model.patch_size,
            "image_size": cfg.model.image_size, "seam_ratio": round(patch_seam_ratio(images, cfg.model.patch_size), 4)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", nargs="+", required=True, metavar="LABEL=RUN_DIR", help="run folders to sample")
    ap.add_argument("--num", type=int, default=200, help="samples per run (class-balanced)")
    ap.add_argument("--steps", type=int, default=25, help="Heun steps (the demo's)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "patch_seams"))
    args = ap.parse_args(argv)
    runs = {}
    for item in args.run:
        label, sep, path = item.partition("=")
        if not sep or not Path(path, "checkpoint.json").is_file():
            ap.error(f"--run {item!r}: write LABEL=RUN_DIR, where RUN_DIR holds a checkpoint.json")
        runs[label] = Path(path)
    out = Path(args.out)
    rows = {label: run_ratio(run, args.num, args.steps, out / f"{label}.png") for label, run in runs.items()}
    sizes = {(r["image_size"], r["patch"]) for r in rows.values()}
    data = {f"{s}px/p{p}": round(data_ratio(s, p), 4) for s, p in sorted(sizes)}
    write_json(out.with_suffix(".json"), {"num": args.num, "steps": args.steps, "runs": rows, "data": data})
    lines = ["# Patch seams", "", f"Patch-seam ratio of {args.num} samples per run ({args.steps} Heun steps, "
             "EMA-1, seed 0): mean |neighbour difference| across patch borders / inside patches. "
             f"The Fashion-MNIST test images read {', '.join(f'{v} ({k})' for k, v in data.items())}.", "",
             "| run | pixel head | step | seam ratio | grid |", "|---|---|---|---|---|"]
    for label, r in rows.items():
        lines.append(f"| {label} | {r['pixel_head'].get('name')} | {r['step']} | {r['seam_ratio']} | "
                     f"[{label}.png]({out.name}/{label}.png) |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""`vco ema`: post-hoc EMA reconstruction of a run trained with train.posthoc_ema."""
from __future__ import annotations

from pathlib import Path

from .common import nonnegative_int, positive_float


def cmd_ema(args) -> None:
    from ..train.posthoc_ema import reconstruct, write_reconstructed_run
    out = Path(args.out)
    widths, info = reconstruct(args.run, args.sigma_rel, args.step)
    for sr in args.sigma_rel:
        folder = write_reconstructed_run(args.run, out / f"sigma_rel-{sr:.3f}", sr, widths[sr], info)
        w = info["widths"][f"{sr:g}"]
        print(f"sigma_rel {sr:g} (gamma {w['gamma']:.2f}) at step {info['step']} from "
              f"{len(info['snapshots'])} snapshots, profile residual {w['residual_norm']:.2e} -> {folder}")


def add_parsers(sub) -> None:
    p = sub.add_parser("ema", help="post-hoc EMA: rebuild the EMA of any width from a run's snapshots")
    p.add_argument("--run", required=True, help="a run trained with --set train.posthoc_ema=true")
    p.add_argument("--sigma-rel", type=positive_float, nargs="+", required=True,
                   help="relative EMA widths to reconstruct (EDM2's sigma_rel, e.g. 0.05 0.1)")
    p.add_argument("--step", type=nonnegative_int, help="the step to reconstruct at (a snapshot's; default: the last)")
    p.add_argument("--out", required=True, help="folder for one run folder per width (sigma_rel-0.050/ ...)")
    p.set_defaults(func=cmd_ema)

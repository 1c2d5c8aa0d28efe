"""`vco convert-official`: released V-Co / JiT checkpoints into run folders."""
from __future__ import annotations

import sys

from .common import set_overrides


def cmd_convert_official(args) -> None:
    from ..hub import resolve_file
    from ..interop import convert_official
    ckpt = resolve_file(args.ckpt, args.revision)               # hf://... -> the cached file
    stats = resolve_file(args.stats) if args.stats else None
    r = convert_official(ckpt, args.out, stats=stats, weights=args.weights, overrides=set_overrides(args))
    for note in r.notes:
        print(f"note: {note}", file=sys.stderr)
    cached = f" (cached at {ckpt})" if ckpt != args.ckpt else ""
    print(f"{args.ckpt}{cached} ({r.kind}, preset {r.preset}) -> {r.run}: weights {', '.join(r.sections)}"
          + (f"; DINOv2 encoder {r.encoder}" if r.encoder else "")
          + (f"; statistics {r.stats}" if r.stats else ""))
    weights = "" if "ema1" in r.sections else f" --weights {r.sections[0]}"
    print(f"next: vco sample --run {r.run}{weights} --out samples.png")


def add_parsers(sub) -> None:
    p = sub.add_parser("convert-official", help="convert a released V-Co/JiT .pth into a run folder")
    p.add_argument("ckpt", help="the official checkpoint (.pth): a local file, or hf://OWNER/REPO/PATH on the "
                   "Hugging Face Hub (e.g. hf://hanlincs/V-Co/<path of the .pth in that repo>)")
    p.add_argument("--revision", help="hf:// checkpoint: a branch, tag or commit of the repo (default main)")
    p.add_argument("--out", required=True, help="run folder to create (never overwritten)")
    p.add_argument("--stats", help="V-Co: RAE's stat.pt or a `vco stats` file (a local path or hf://...), "
                   "stored in the run for fine-tuning (sampling does not need it)")
    p.add_argument("--weights", default="all", choices=["all", "ema1", "ema2", "model"],
                   help="official weights to keep: all (model, ema1, ema2) or only one (ema1 samples)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   nargs="+", help="override a config value, e.g. --set model.in_context_start=4")
    p.set_defaults(func=cmd_convert_official)


"""`vco export`: a run as a folder to share (a Hugging Face model repo), optionally uploaded."""
from __future__ import annotations

import sys


def cmd_export(args) -> None:
    from ..export import SECTIONS, export_run
    from ..hub import check_push, push_folder
    if args.push:
        check_push(args.push)               # no package, a bad name or no login: stop before the work
    weights = [w.strip() for w in args.weights.split(",")] if args.weights != "all" else list(SECTIONS)
    e = export_run(args.run, args.out, weights, license=args.license, repo_id=args.push)
    for note in e.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"{args.run} (step {e.step}) -> {e.folder}: weights {', '.join(e.weights)}, "
          f"{len(e.evaluations)} evaluation(s) in the model card")
    if args.push:
        url = push_folder(e.folder, args.push, private=args.private,
                          message=f"vco export of {args.run} at step {e.step}")
        print(f"uploaded -> {url}\nnext: vco sample --run hf://{args.push} --out samples.png")
    else:
        print(f"next: vco sample --run {e.folder} --out samples.png; share it with "
              f"`vco export ... --push OWNER/REPO` or `hf upload OWNER/REPO {e.folder}`")


def add_parsers(sub) -> None:
    p = sub.add_parser("export", help="write a run as a self-contained folder to share (e.g. on the Hub)")
    p.add_argument("--run", required=True, help="run folder (from vco train, vco ema or vco convert-official)")
    p.add_argument("--out", required=True, help="folder to create (never overwritten)")
    p.add_argument("--weights", default="ema1",
                   help="comma-separated sections to keep: ema1 (default, the sampling weights), ema2, "
                        "model (raw), or all; the optimizer state is never exported")
    p.add_argument("--license", help="the model card's license field (a Hub license id, e.g. mit); "
                   "left for you to fill in when omitted")
    p.add_argument("--push", metavar="OWNER/REPO", help="also upload the folder as this Hub model repo "
                   "(created if needed; needs `hf auth login`)")
    p.add_argument("--private", action="store_true", help="--push: create the repo as private")
    p.set_defaults(func=cmd_export)

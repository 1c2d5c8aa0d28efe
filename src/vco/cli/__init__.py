"""The ``vco`` command: train, sample, info, stats, cache, eval, ema, export, convert-official, demo, data check."""
from __future__ import annotations

import argparse
import logging
import sys

from .. import __version__
from .. import config as C
from ..data import DataError
from ..device import reuse_freed_memory
from ..files import WriteError
from ..hub import HubError
from ..train.checkpoint import CheckpointError
from . import convert, ema, evaluate, export, features, train


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vco", description="Pixel diffusion with visual co-denoising")
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--version", action="version", version=f"vco {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (train, evaluate, ema, export, features, convert):
        module.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        reuse_freed_memory()                # every command's CPU work: train, sample, evaluate
        status = args.func(args)            # a command may return its own exit status
    except (C.ConfigError, DataError, CheckpointError, WriteError, HubError, ValueError,
            FileNotFoundError) as e:
        print(f"vco {args.command}: error: {e}", file=sys.stderr)
        return 2
    return status or 0


if __name__ == "__main__":
    sys.exit(main())

"""Argument helpers the ``vco`` commands share."""
from __future__ import annotations

import argparse

from .. import config as C

DATA_NAMES = ("fashion-mnist", "fashion-mnist-test", "synthetic")


def config_args(p: argparse.ArgumentParser, preset_required: bool = False) -> None:
    p.add_argument("--preset", required=preset_required, help=f"one of {', '.join(C.preset_names())}")
    p.add_argument("--config", help="a YAML config (e.g. a run's config.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   nargs="+", help="override a config value, e.g. --set steps=100 model.depth=4")


def sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cfg", type=float, help="guidance scale w (1 = none)")
    p.add_argument("--steps", type=int, help="sampler steps")
    p.add_argument("--method", choices=["heun", "euler"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--weights", default="ema1", choices=["ema1", "ema2", "model"])
    p.add_argument("--device", default="auto")


def check_sampling(cfg_scale: float | None, steps: int | None) -> None:
    if cfg_scale is not None and cfg_scale < 0:
        raise C.ConfigError(f"--cfg must be >= 0 (1 = no guidance), got {cfg_scale}")
    if steps is not None and not 1 <= steps <= 10_000:
        raise C.ConfigError(f"--steps must be in 1..10000, got {steps}")


def set_overrides(args) -> list[str]:
    return [item for group in args.overrides for item in group]


def preset_or_default(args, default: str = "vco-tiny") -> str | None:
    """--preset, else the --config's own preset, else ``default``."""
    return args.preset or (None if args.config else default)


def data_overrides(data: str | None) -> list[str]:
    if data is None:
        return []
    if data in DATA_NAMES:
        return [f"data.name={data}"]
    return ["data.name=folder", f"data.path={data}"]

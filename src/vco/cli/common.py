"""Argument helpers the ``vco`` commands share."""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from .. import config as C

DATA_NAMES = ("fashion-mnist", "fashion-mnist-test", "synthetic")


def _number(kind, low: float, low_inclusive: bool = True):
    """An argparse type: ``kind`` (int or float), finite, and >= (or >) ``low``."""
    bound = f"{'>=' if low_inclusive else '>'} {low:g}"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        if not math.isfinite(value) or (value < low if low_inclusive else value <= low):
            raise argparse.ArgumentTypeError(f"must be a finite number {bound}, got {text}")
        return value
    return parse


positive_int = _number(int, 1)
nonnegative_int = _number(int, 0)
nonnegative_float = _number(float, 0)
positive_float = _number(float, 0, low_inclusive=False)


def config_args(p: argparse.ArgumentParser, preset_required: bool = False) -> None:
    p.add_argument("--preset", required=preset_required, help=f"one of {', '.join(C.preset_names())}")
    p.add_argument("--config", help="a YAML config (e.g. a run's config.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   nargs="+", help="override a config value, e.g. --set steps=100 model.depth=4")


def sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cfg", type=nonnegative_float, help="guidance scale w (1 = none)")
    p.add_argument("--cfg-semantic", type=nonnegative_float,
                   help="V-Co: the semantic stream's own w (default: the same as --cfg; 1 = unguided)")
    p.add_argument("--steps", type=positive_int, help="sampler steps")
    p.add_argument("--method", choices=["heun", "euler"])
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--weights", default="ema1", choices=["ema1", "ema2", "model"])
    p.add_argument("--device", default="auto")


def parse_range(text: str, flag: str, example: str) -> list[float]:
    """start:stop:step -> the values from start to stop (included); ``flag`` and ``example``
    name the option in the error."""
    try:
        lo, hi, step = (float(v) for v in text.split(":"))
    except ValueError:
        raise C.ConfigError(f"{flag} takes start:stop:step, e.g. {example} (got '{text}')") from None
    if not all(map(math.isfinite, (lo, hi, step))) or step <= 0 or hi < lo:
        raise C.ConfigError(f"{flag} needs step > 0 and stop >= start (got '{text}')")
    return [round(lo + k * step, 6) for k in range(int(round((hi - lo) / step)) + 1)]


def check_sampling(steps: int | None) -> None:
    """The sampler steps a command will run (the guidance scale is checked where it is read: the
    --cfg argument's type, and the config's ranges)."""
    if steps is not None and not 1 <= steps <= 10_000:
        raise C.ConfigError(f"--steps must be in 1..10000, got {steps}")


def check_image_path(path: str) -> None:
    """Before any sampling: the grid's file name must have an extension PIL can write."""
    from PIL import Image
    suffix = Path(path).suffix.lower()
    writable = {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.SAVE}
    if suffix not in writable:
        raise C.ConfigError(f"--out {path}: cannot write an image with extension {suffix or '(none)'}; "
                            f"use .png (or {', '.join(sorted(e for e in writable if e in ('.jpg', '.webp', '.bmp')))})")


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

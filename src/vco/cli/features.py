"""`vco stats` and `vco cache`: the semantic stream's statistics and feature cache."""
from __future__ import annotations

from pathlib import Path

from .. import config as C
from .common import (config_args, data_overrides, nonnegative_int, positive_float, positive_int, preset_or_default,
                     set_overrides)


def cmd_stats(args) -> None:
    from ..data import build_dataset
    from ..semantic import save_stats
    from ..semantic.stream import dataset_stats, encoder_from_config
    from ..device import resolve_device
    # The preset's (or config's) encoder and data, unless a flag names others.
    overrides = data_overrides(args.data)
    if args.encoder:
        overrides.append(f"semantic.encoder={args.encoder}")
    if args.encoder_path:
        overrides.append(f"semantic.encoder_path={args.encoder_path}")
    cfg = C.build_config(preset_or_default(args), args.config, overrides + set_overrides(args))
    out = Path(args.out)
    if out.exists():
        raise C.ConfigError(f"{out} exists: choose another --out (nothing was overwritten)")
    device = resolve_device(args.device)
    encoder = encoder_from_config(cfg).to(device)
    dataset = build_dataset(cfg.data, cfg.model.image_size, cfg.model.num_classes)
    st = dataset_stats(encoder, dataset, args.num, args.scale, device)
    save_stats(st, out)
    print(f"{cfg.semantic.encoder}: {st.num_tokens} tokens x {st.feature_dim} channels from "
          f"{min(args.num, len(dataset))} images (both flips); pixel RMS {st.pixel_rms:.4f}, "
          f"scale s = {st.scale:.4f} -> {out}")


def cmd_cache(args) -> None:
    from ..data import build_dataset
    from ..semantic import build_feature_cache, load_stats
    from ..losses import reads_pooled_positives
    from ..semantic.stream import encoder_from_config
    from ..device import resolve_device
    cfg = C.build_config(preset_or_default(args), args.config, data_overrides(args.data) + set_overrides(args))
    sc = cfg.semantic
    encoder = encoder_from_config(cfg)
    dataset = build_dataset(cfg.data, cfg.model.image_size, cfg.model.num_classes)
    out = Path(args.out)
    if out.exists():
        raise C.ConfigError(f"{out} exists: choose another --out (nothing was overwritten)")
    stats = load_stats(sc.stats, scale=sc.scale) if sc.stats else None
    # the real images' pooled features too when the config's auxiliary loss reads them
    cache = build_feature_cache(encoder, stats, dataset, out, batch_size=args.batch_size,
                                device=resolve_device(args.device), pooled=reads_pooled_positives(cfg))
    pooled = "" if cache.pooled is None else f" and {cache.pooled.shape[-1]} pooled channels"
    print(f"cached {len(cache)} images x 2 flips x {cache.num_tokens} tokens x {cache.feature_dim} "
          f"channels{pooled} -> {out}; train with --set semantic.cache={out}")


def cmd_data_check(args) -> int:
    from ..data.check import check_folder, write_manifest
    report = check_folder(args.dir, args.workers, args.max_image_pixels)
    for rel, why in report["bad"]:
        print(f"BAD {why}")
    print(f"{len(report['good'])} readable images in {len(report['classes'])} classes, "
          f"{len(report['bad'])} unreadable or not images")
    if args.manifest:
        path = write_manifest(report, args.manifest, args.dir)
        print(f"manifest -> {path} (train from it with --set data.manifest={path})")
    return 1 if report["bad"] else 0


def add_parsers(sub) -> None:
    p = sub.add_parser("data", help="data tools: `vco data check DIR`")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    c = data_sub.add_parser("check", help="decode every image of a class-per-folder dataset in parallel; "
                            "list the bad ones; write a manifest of the good ones")
    c.add_argument("dir")
    c.add_argument("--manifest", help="write the readable files here (JSON), for --set data.manifest=FILE")
    c.add_argument("--workers", type=nonnegative_int, default=0, help="processes (0: one per CPU)")
    c.add_argument("--max-image-pixels", type=positive_int, default=C.DataConfig.max_image_pixels,
                   help="larger claimed sizes are decompression bombs (data.max_image_pixels)")
    c.set_defaults(func=cmd_data_check)

    p = sub.add_parser("stats", help="semantic feature statistics and RMS scale for a dataset")
    config_args(p)
    p.add_argument("--encoder", help="mobilenet_v2 | dinov2 (default: the preset's; vco-tiny's "
                   "without --preset/--config)")
    p.add_argument("--encoder-path", help="the encoder's weights (dinov2: local folder or hub id)")
    p.add_argument("--data", help="default: the preset's data")
    p.add_argument("--num", type=positive_int, default=4096, help="images to use (both flips of each)")
    p.add_argument("--scale", type=positive_float, help="store this RMS factor instead of the measured one")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", required=True, help="statistics file (.safetensors)")
    p.set_defaults(func=cmd_stats)


    p = sub.add_parser("cache", help="precompute the semantic features of a dataset (both flips)")
    config_args(p)
    p.add_argument("--data", help="default: the preset's data")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", required=True, help="cache folder to create")
    p.set_defaults(func=cmd_cache)


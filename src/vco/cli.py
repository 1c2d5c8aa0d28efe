"""The ``vco`` command: train, sample, info, demo, convert-official."""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import config as C
from .data import DataError
from .train.checkpoint import CheckpointError

DATA_NAMES = ("fashion-mnist", "fashion-mnist-test", "synthetic")


def _config_args(p: argparse.ArgumentParser, preset_required: bool = False) -> None:
    p.add_argument("--preset", required=preset_required, help=f"one of {', '.join(C.preset_names())}")
    p.add_argument("--config", help="a YAML config (e.g. a run's config.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   nargs="+", help="override a config value, e.g. --set steps=100 model.depth=4")


def _sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cfg", type=float, help="guidance scale w (1 = none)")
    p.add_argument("--steps", type=int, help="sampler steps")
    p.add_argument("--method", choices=["heun", "euler"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--weights", default="ema1", choices=["ema1", "ema2", "model"])
    p.add_argument("--device", default="auto")


def _check_sampling(cfg_scale: float | None, steps: int | None) -> None:
    if cfg_scale is not None and cfg_scale < 0:
        raise C.ConfigError(f"--cfg must be >= 0 (1 = no guidance), got {cfg_scale}")
    if steps is not None and not 1 <= steps <= 10_000:
        raise C.ConfigError(f"--steps must be in 1..10000, got {steps}")


def _overrides(args) -> list[str]:
    return [item for group in args.overrides for item in group]


def _data_overrides(data: str | None) -> list[str]:
    if data is None:
        return []
    if data in DATA_NAMES:
        return [f"data.name={data}"]
    return ["data.name=folder", f"data.path={data}"]


def cmd_train(args) -> None:
    from .train import Trainer
    from .train.init_from import apply_init_from, is_unstarted_conversion, prepare_init_from, source_config
    extra = _data_overrides(args.data) + ([f"train.steps={args.steps}"] if args.steps else [])
    init_source = args.init_from
    if args.resume:
        run = Path(args.resume)
        if not (run / "config.yaml").is_file():
            raise CheckpointError(f"{run} is not a run folder (no config.yaml): pass the --out of "
                                  f"an earlier `vco train`")
        if init_source:
            raise C.ConfigError("--init-from starts a new run: use it with --out, not with --resume")
        cfg = C.build_config(config_file=run / "config.yaml", overrides=extra + _overrides(args))
        out = run
        if is_unstarted_conversion(run):     # converted weights, no optimizer state yet
            init_source = run
    else:
        if not args.out:
            raise C.ConfigError("vco train needs --out RUN_DIR (or --resume RUN_DIR)")
        out = Path(args.out)
        if (out / "checkpoint.safetensors").exists():
            raise CheckpointError(f"{out} already holds a run: continue it with --resume {out}, "
                                  f"or choose another --out")
        config = args.config or (source_config(init_source) if init_source and not args.preset else None)
        cfg = C.build_config(args.preset or ("jit-tiny" if not config else None), config,
                             extra + _overrides(args))
    init = prepare_init_from(init_source, out, cfg) if init_source else None
    trainer = Trainer(cfg, out, resume=bool(args.resume) and init is None)
    if init is not None:
        state, which = init
        apply_init_from(trainer, state, init_source, which)
        print(f"initialised {out} from the {which} weights of {init_source} (both EMAs too; "
              f"fresh optimizer) -> {cfg.train.steps} steps")
    elif args.resume:
        print(f"resuming {out} at step {trainer.step} -> {cfg.train.steps}")
    summary = trainer.train(progress=not args.quiet)
    if trainer.world.is_main:
        print(f"trained {summary['steps']} steps in {summary['seconds']:.0f}s on {trainer.world.size} "
              f"process(es); checkpoint: {out / 'checkpoint.safetensors'}")
    from .train.distributed import teardown
    teardown()


def cmd_sample(args) -> None:
    from .sampling import class_labels, generate, save_grid
    from .train import load_run_model
    from .train.trainer import resolve_device
    device = resolve_device(args.device)
    model, cfg, meta = load_run_model(args.run, args.weights, device)
    for key, value in (("cfg", args.cfg), ("steps", args.steps), ("method", args.method)):
        if value is not None:
            setattr(cfg.sampler, key, value)
    _check_sampling(cfg.sampler.cfg, cfg.sampler.steps)
    if args.num < 1:
        raise C.ConfigError(f"--num must be >= 1, got {args.num}")
    labels = class_labels(args.num, cfg.model.num_classes)
    t0 = time.time()
    images = generate(model, cfg, labels, seed=args.seed, batch_size=args.batch_size, device=device)
    path = save_grid(images, labels, meta.get("class_names", []), args.out)
    print(f"{len(images)} samples in {time.time() - t0:.1f}s (cfg {cfg.sampler.cfg}, "
          f"{cfg.sampler.steps} {cfg.sampler.method} steps) -> {path}")
    if args.npz:
        npz = Path(args.out).with_suffix(".npz")
        np.savez(npz, arr_0=images.permute(0, 2, 3, 1).numpy(), labels=labels.numpy())
        print(f"uint8 samples (N, H, W, C) -> {npz}")


def cmd_info(args) -> None:
    from .models import count_params
    cfg = C.build_config(args.preset, args.config, _overrides(args))
    print(C.to_yaml(cfg), end="")
    if cfg.model.fusion != "none":
        from .losses import build_aux_loss
        with torch.device("meta"):
            aux = build_aux_loss(cfg, encoder=None)
        extra = sum(p.numel() for p in aux.parameters() if p.requires_grad) if aux is not None else 0
        if extra:
            print(f"aux_loss_params={extra}  # trained with the model, not used for sampling")
    print(f"params={count_params(cfg.model)}")


def cmd_stats(args) -> None:
    from .data import build_dataset
    from .semantic import save_stats
    from .semantic.stream import dataset_stats, encoder_from_config
    from .train.trainer import resolve_device
    overrides = _data_overrides(args.data) + [f"semantic.encoder={args.encoder}"]
    if args.encoder_path:
        overrides.append(f"semantic.encoder_path={args.encoder_path}")
    cfg = C.build_config(args.preset, overrides=overrides + _overrides(args))
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
    from .data import build_dataset
    from .semantic import build_feature_cache, load_stats
    from .semantic.stream import encoder_from_config
    from .train.trainer import resolve_device
    cfg = C.build_config(args.preset, args.config, _data_overrides(args.data) + _overrides(args))
    sc = cfg.semantic
    encoder = encoder_from_config(cfg)
    dataset = build_dataset(cfg.data, cfg.model.image_size, cfg.model.num_classes)
    out = Path(args.out)
    if out.exists():
        raise C.ConfigError(f"{out} exists: choose another --out (nothing was overwritten)")
    stats = load_stats(sc.stats, scale=sc.scale) if sc.stats else None
    cache = build_feature_cache(encoder, stats, dataset, out, batch_size=args.batch_size,
                                device=resolve_device(args.device))
    print(f"cached {len(cache)} images x 2 flips x {cache.num_tokens} tokens x {cache.feature_dim} "
          f"channels -> {out}; train with --set semantic.cache={out}")


def _parse_sweep(text: str) -> list[float]:
    try:
        lo, hi, step = (float(v) for v in text.split(":"))
    except ValueError:
        raise C.ConfigError(f"--cfg-sweep takes start:stop:step, e.g. 1.0:3.0:0.2 (got '{text}')") from None
    if step <= 0 or hi < lo:
        raise C.ConfigError(f"--cfg-sweep needs step > 0 and stop >= start (got '{text}')")
    return [round(lo + k * step, 6) for k in range(int(round((hi - lo) / step)) + 1)]


def _features_of_source(path: str, inception, num: int | None = None):
    """(mu, sigma) of an image folder, an npz of uint8 images, or stored statistics."""
    from .eval import load_images_source, load_reference, stats
    p = Path(path)
    if p.suffix == ".npz":
        with np.load(p, allow_pickle=False) as data:
            has_stats = ("mu" in data.files and "sigma" in data.files) or "feats" in data.files
        if has_stats:
            ref = load_reference(p)
            return ref.mu, ref.sigma
    images = load_images_source(p)
    return stats(inception.extract(images[:num] if num else images))


def cmd_eval(args) -> None:
    from .eval import InceptionFeatures, frechet_distance, load_reference, save_reference
    from .eval.evaluate import (EvalSettings, evaluate, rank_world, sweep_outputs, write_json)
    from .train import load_run_model
    from .train.trainer import resolve_device
    device = resolve_device(args.device)
    if args.action == "fid":
        if len(args.sources) != 2:
            raise C.ConfigError("vco eval fid takes two sources: folders, npz images or statistics")
        inception = InceptionFeatures(device)
        a, b = (_features_of_source(src, inception) for src in args.sources)
        print(f"fid={frechet_distance(*a, *b):.4f}")
        return
    if args.action == "ref":
        from .data import build_dataset
        if not args.out:
            raise C.ConfigError("vco eval ref needs --out ref.npz")
        cfg = C.build_config(args.preset, overrides=_data_overrides(args.data) + _overrides(args))
        data = build_dataset(cfg.data, cfg.model.image_size, cfg.model.num_classes)
        n = min(args.num or len(data), len(data))
        idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:n].sort().values
        feats = InceptionFeatures(device).extract(data[i][0] for i in idx.tolist())
        mu, sigma = np.mean(feats, 0), np.cov(feats, rowvar=False)
        path = save_reference(args.out, mu, sigma, feats)
        print(f"reference of {n} images of {args.data} -> {path}")
        return
    if args.action or not args.run:
        raise C.ConfigError("use `vco eval --run RUN --ref REF`, `vco eval ref ...` or `vco eval fid A B`")
    if not args.ref:
        raise C.ConfigError("--ref is required: reference statistics from `vco eval ref --data ... "
                            "--out ref.npz`, ADM's VIRTUAL_imagenet256_labeled.npz or JiT's jit_in256_stats.npz")
    _check_sampling(args.cfg, args.steps)
    if torch.distributed.is_available() and "WORLD_SIZE" in __import__("os").environ:
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    model, cfg, meta = load_run_model(args.run, args.weights, device)
    ref = load_reference(args.ref)
    inception = InceptionFeatures(device)
    out_dir = Path(args.run) / "eval"
    ws = _parse_sweep(args.cfg_sweep) if args.cfg_sweep else [args.cfg if args.cfg is not None else cfg.sampler.cfg]
    results = []
    for w in ws:
        settings = EvalSettings(num=args.num, cfg=w, steps=args.steps or cfg.sampler.steps,
                                method=args.method or cfg.sampler.method, seed=args.seed,
                                batch_size=args.batch_size, weights=args.weights)
        r = evaluate(model, cfg, meta, settings, ref, device, inception, out_dir)
        if rank_world()[0] == 0:
            results.append(r)
            extra = (f" precision={r['precision']:.4f} recall={r['recall']:.4f}" if "precision" in r else "")
            print(f"cfg={w:g} num={args.num} steps={settings.steps}: fid={r['fid']:.4f}{extra} "
                  f"(IS unavailable: no classifier head in the offline Inception)")
    if rank_world()[0] != 0:
        return
    tag = f"n{args.num}_s{results[0]['settings']['steps']}"
    if len(results) == 1:
        path = write_json(out_dir / f"eval_{tag}_cfg{ws[0]:g}.json", results[0])
        print(f"results -> {path}")
        print(f"fid={results[0]['fid']:.4f}")
    else:
        path = write_json(out_dir / f"sweep_{tag}.json", results)
        table, plot = sweep_outputs(results, out_dir, f"sweep_{tag}")
        best = min(results, key=lambda r: r["fid"])
        print(f"sweep -> {path}, {table}, {plot}; best w={best['settings']['cfg']:g}")
        print(f"fid={best['fid']:.4f}")


def cmd_convert_official(args) -> None:
    from .interop import convert_official
    r = convert_official(args.ckpt, args.out, stats=args.stats, weights=args.weights,
                         overrides=_overrides(args))
    for note in r.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"{args.ckpt} ({r.kind}, preset {r.preset}) -> {r.run}: weights {', '.join(r.sections)}"
          + (f"; DINOv2 encoder {r.encoder}" if r.encoder else "")
          + (f"; statistics {r.stats}" if r.stats else ""))
    weights = "" if "ema1" in r.sections else f" --weights {r.sections[0]}"
    print(f"next: vco sample --run {r.run}{weights} --out samples.png")


def cmd_demo(args) -> None:
    from .plots import plot_loss_curves
    from .sampling import class_labels, generate, save_grid
    from .train import Trainer, load_run_model
    out = Path(args.out)
    run = out / "run"
    # A CPU budget of minutes: small batches give more optimizer steps (the EMA needs them);
    # blr is raised to keep the preset's per-step learning rate (5e-4).
    overrides = [f"train.time_limit_min={args.minutes}", "data.name=fashion-mnist",
                 f"train.batch_size={args.batch_size}", f"train.blr={5e-4 * 256 / args.batch_size}",
                 "train.log_every=5"]
    if C.build_config(args.preset).data.classes_per_batch:
        overrides.append(f"data.classes_per_batch={max(1, args.batch_size // 4)}")
    if (run / "checkpoint.safetensors").exists():
        print(f"continuing the demo run in {run} (delete {out} to start afresh)")
        cfg = C.build_config(config_file=run / "config.yaml", overrides=overrides)
        trainer = Trainer(cfg, run, resume=True)
        cfg.train.steps = max(cfg.train.steps, trainer.step + 1)
    else:
        cfg = C.build_config(args.preset, overrides=overrides + [f"train.steps={args.max_steps}"])
        trainer = Trainer(cfg, run)
    print(f"training {cfg.preset} on Fashion-MNIST for up to {args.minutes} min "
          f"({sum(p.numel() for p in trainer.model.parameters())/1e6:.1f}M params) ...")
    summary = trainer.train()
    print(f"trained to step {summary['final_step']} in {summary['seconds'] / 60:.1f} min")
    model, cfg, meta = load_run_model(run, "ema1")
    cfg.sampler.steps = args.sample_steps
    labels = class_labels(10 * args.per_class, cfg.model.num_classes)
    images = generate(model, cfg, labels, seed=0, batch_size=100)
    grid = save_grid(images, labels, meta["class_names"], out / "samples.png")
    curve = plot_loss_curves(run / "metrics.jsonl", out / "loss.png")
    print(f"sample grid: {grid}\nloss curve:  {curve}\nrun folder:  {run}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vco", description="Pixel diffusion with visual co-denoising")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model (or --resume a run)")
    _config_args(p)
    p.add_argument("--data", help=f"{' | '.join(DATA_NAMES)} | a class-per-folder image directory")
    p.add_argument("--out", help="run folder to create")
    p.add_argument("--steps", type=int, help="total optimizer steps (train.steps)")
    p.add_argument("--resume", help="continue the run in this folder up to --steps")
    p.add_argument("--init-from", dest="init_from", metavar="RUN",
                   help="start from this run's weights (ema1, else model) with a fresh optimizer; "
                        "its config is used unless --preset/--config is given")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="sample a class-labelled grid PNG from a run")
    p.add_argument("--run", required=True, help="run folder")
    p.add_argument("--num", type=int, default=64)
    _sampling_args(p)
    p.add_argument("--out", default="samples.png")
    p.add_argument("--npz", action="store_true", help="also write the uint8 samples as .npz")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("info", help="print the resolved config and the parameter count")
    _config_args(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("stats", help="semantic feature statistics and RMS scale for a dataset")
    _config_args(p)
    p.set_defaults(preset="vco-tiny")
    p.add_argument("--encoder", default="mobilenet_v2", help="mobilenet_v2 | dinov2")
    p.add_argument("--encoder-path", help="dinov2: local folder or hub id")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--num", type=int, default=4096, help="images to use (both flips of each)")
    p.add_argument("--scale", type=float, help="store this RMS factor instead of the measured one")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", required=True, help="statistics file (.safetensors)")
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("cache", help="precompute the semantic features of a dataset (both flips)")
    _config_args(p)
    p.set_defaults(preset="vco-tiny")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", required=True, help="cache folder to create")
    p.set_defaults(func=cmd_cache)

    p = sub.add_parser("eval", help="FID / precision / recall of a run (or `ref`, `fid A B`)")
    p.add_argument("action", nargs="?", choices=["ref", "fid"], help="ref: reference statistics; "
                   "fid A B: FID between two sources; omitted: evaluate --run")
    p.add_argument("sources", nargs="*", help="fid: two image folders, npz images or npz statistics")
    _config_args(p)
    p.set_defaults(preset="jit-tiny")
    p.add_argument("--run", help="run folder to evaluate")
    p.add_argument("--ref", help="reference statistics (.npz)")
    p.add_argument("--data", default="fashion-mnist-test", help="ref: the data to describe")
    p.add_argument("--num", type=int, default=10_000, help="samples (a multiple of the classes); ref: images")
    _sampling_args(p)
    p.add_argument("--cfg-sweep", help="start:stop:step, e.g. 1.0:3.0:0.2")
    p.add_argument("--out", help="ref: output .npz")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("convert-official", help="convert a released V-Co/JiT .pth into a run folder")
    p.add_argument("ckpt", help="the official checkpoint (.pth), e.g. V-Co-B/16's checkpoint-last.pth")
    p.add_argument("--out", required=True, help="run folder to create (never overwritten)")
    p.add_argument("--stats", help="V-Co: RAE's stat.pt or a `vco stats` file, stored in the run "
                   "for fine-tuning (sampling does not need it)")
    p.add_argument("--weights", default="all", choices=["all", "ema1", "ema2", "model"],
                   help="official weights to keep: all (model, ema1, ema2) or only one (ema1 samples)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   nargs="+", help="override a config value, e.g. --set model.in_context_start=4")
    p.set_defaults(func=cmd_convert_official)

    p = sub.add_parser("demo", help="train the tiny preset on Fashion-MNIST, then sample")
    p.add_argument("--preset", default="vco-tiny")
    p.add_argument("--out", default="demo")
    p.add_argument("--minutes", type=float, default=9.0, help="training time budget")
    p.add_argument("--max-steps", type=int, default=100_000)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--per-class", type=int, default=6)
    p.add_argument("--sample-steps", type=int, default=25, help="Heun steps (50 in the paper)")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        args.func(args)
    except (C.ConfigError, DataError, CheckpointError, ValueError, FileNotFoundError) as e:
        print(f"vco {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

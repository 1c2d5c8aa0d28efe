"""`vco sample` and `vco eval`: sample grids, FID / precision / recall, sweeps."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from .. import config as C
from .common import (check_image_path, check_sampling, config_args, data_overrides, nonnegative_int,
                     parse_range, positive_int, sampling_args, set_overrides)


def cmd_sample(args) -> None:
    from ..sampling import class_labels, generate, save_grid
    from ..device import resolve_device
    from ..hub import resolve_run
    from ..train import load_run_model
    check_image_path(args.out)
    device = resolve_device(args.device)
    model, cfg, meta = load_run_model(resolve_run(args.run, args.revision), args.weights, device)
    for key, value in (("cfg", args.cfg), ("cfg_semantic", args.cfg_semantic), ("steps", args.steps),
                       ("method", args.method)):
        if value is not None:
            setattr(cfg.sampler, key, value)
    check_sampling(cfg.sampler.steps)
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


def _features_of_source(path: str, inception, num: int | None = None):
    """(mu, sigma) of an image folder, an npz of uint8 images, or stored statistics."""
    from ..eval import load_images_source, load_reference, stats
    p = Path(path)
    if p.suffix == ".npz":
        with np.load(p, allow_pickle=False) as data:
            has_stats = ("mu" in data.files and "sigma" in data.files) or "feats" in data.files
        if has_stats:
            ref = load_reference(p)
            return ref.mu, ref.sigma
    images = load_images_source(p)
    return stats(inception.extract(images[:num] if num else images))


def cmd_eval_fid(args, device) -> None:
    from ..eval import InceptionFeatures, frechet_distance
    if len(args.sources) != 2:
        raise C.ConfigError("vco eval fid takes two sources: folders, npz images or statistics")
    inception = InceptionFeatures(device)
    a, b = (_features_of_source(src, inception) for src in args.sources)
    print(f"fid={frechet_distance(*a, *b):.4f}")


def cmd_eval_ref(args, device) -> None:
    from ..data import build_dataset
    from ..eval import InceptionFeatures, save_reference
    if not args.out:
        raise C.ConfigError("vco eval ref needs --out ref.npz")
    cfg = C.build_config(args.preset, overrides=data_overrides(args.data) + set_overrides(args))
    data = build_dataset(cfg.data, cfg.model.image_size, cfg.model.num_classes)
    n = min(args.num or len(data), len(data))
    idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:n].sort().values
    feats = InceptionFeatures(device).extract(data[i][0] for i in idx.tolist())
    mu, sigma = np.mean(feats, 0), np.cov(feats, rowvar=False)
    dinov2 = None
    if args.fd_dinov2:                # a second pass over the images: no copy of the set in memory
        from ..eval.dinov2_features import DINOv2Features
        dino = DINOv2Features(args.fd_dinov2, device).extract((data[i][0] for i in idx.tolist()),
                                                               batch_size=args.batch_size, progress=True)
        dinov2 = (np.mean(dino, 0), np.cov(dino, rowvar=False))
    path = save_reference(args.out, mu, sigma, feats, dinov2=dinov2, dinov2_model=args.fd_dinov2)
    print(f"reference of {n} images of {args.data}{' (Inception and DINOv2)' if dinov2 else ''} -> {path}")


def optional_metrics(args, ref, device):
    """The Inception classifier (--inception-weights) and DINOv2 (--fd-dinov2) when asked for,
    loaded and checked before any sample is drawn."""
    classifier = dinov2 = None
    if args.inception_weights:
        from ..eval.inception_score import InceptionClassifier
        classifier = InceptionClassifier.from_file(args.inception_weights, device)
    if args.fd_dinov2:
        if ref.dinov2 is None:
            raise C.ConfigError(f"{args.ref} holds no FD-DINOv2 statistics: rebuild it with "
                                f"`vco eval ref ... --fd-dinov2 {args.fd_dinov2} --out REF`")
        if ref.dinov2_model != args.fd_dinov2:
            print(f"warning: {args.ref} has DINOv2 statistics of '{ref.dinov2_model}', the samples are "
                  f"scored with '{args.fd_dinov2}': FD-DINOv2 compares them only if the weights are the same")
        from ..eval.dinov2_features import DINOv2Features
        dinov2 = DINOv2Features(args.fd_dinov2, device)
    return classifier, dinov2


def cmd_eval(args) -> None:
    from ..device import resolve_device
    from ..eval import InceptionFeatures, load_reference
    from ..eval.evaluate import EvalSettings, evaluate
    from ..train.distributed import launched, process_rank
    from ..train import load_run_model
    device = resolve_device(args.device)
    if args.action == "fid":
        return cmd_eval_fid(args, device)
    if args.action == "ref":
        return cmd_eval_ref(args, device)
    if args.action or not args.run:
        raise C.ConfigError("use `vco eval --run RUN --ref REF`, `vco eval ref ...` or `vco eval fid A B`")
    if not args.ref:
        raise C.ConfigError("--ref is required: reference statistics from `vco eval ref --data ... "
                            "--out ref.npz`, ADM's VIRTUAL_imagenet256_labeled.npz or JiT's jit_in256_stats.npz")
    check_sampling(args.steps)
    if launched() and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    model, cfg, meta = load_run_model(args.run, args.weights, device)
    ref = load_reference(args.ref)
    inception = InceptionFeatures(device)
    classifier, dinov2 = optional_metrics(args, ref, device)
    out_dir = Path(args.run) / "eval"
    ws = parse_range(args.cfg_sweep, "--cfg-sweep", "1.0:3.0:0.2") if args.cfg_sweep else \
        [args.cfg if args.cfg is not None else cfg.sampler.cfg]
    widths = parse_range(args.ema_sweep, "--ema-sweep", "0.03:0.15:0.01") if args.ema_sweep else [None]
    results = []
    for width in widths:
        if width is not None:           # one width at a time: memory for one extra weight set
            from ..train.posthoc_ema import load_into, reconstruct
            weights, info = reconstruct(args.run, [width], args.ema_step)
            load_into(model, weights[width], args.run)
        for w in ws:
            settings = EvalSettings(num=args.num, cfg=w, cfg_semantic=args.cfg_semantic,
                                    steps=args.steps or cfg.sampler.steps,
                                    method=args.method or cfg.sampler.method, seed=args.seed,
                                    batch_size=args.batch_size, sigma_rel=width,
                                    weights=args.weights if width is None else "posthoc_ema")
            r = evaluate(model, cfg, meta, settings, ref, device, inception, out_dir, classifier, dinov2)
            if process_rank()[0] != 0:
                continue
            if width is not None:
                r["posthoc_ema"] = {"sigma_rel": width, "step": info["step"], **info["widths"][f"{width:g}"]}
            results.append(r)
            extra = (f" precision={r['precision']:.4f} recall={r['recall']:.4f}" if "precision" in r else "")
            ema = "" if width is None else f"sigma_rel={width:g} "
            print(f"{ema}cfg={w:g} num={args.num} steps={settings.steps}: fid={r['fid']:.4f}{extra}"
                  + "".join(f" {k}={r[k]:.4f}" for k in ("fd_dinov2", "inception_score") if r.get(k) is not None))
    if process_rank()[0] == 0:
        best, plots = write_outputs(results, out_dir, f"n{args.num}_s{results[0]['settings']['steps']}",
                                    ema_sweep=bool(args.ema_sweep))
        # the best result, its grid and the sweep's plot, to the run's TensorBoard / W&B
        from ..eval.evaluate import grid_path
        from ..train.loggers import log_evaluation
        log_evaluation(Path(args.run), cfg, int(meta.get("step", 0)), best,
                       [grid_path(out_dir, EvalSettings(**best["settings"])), *plots])


def write_outputs(results: list[dict], out_dir: Path, tag: str, ema_sweep: bool) -> tuple[dict, list[Path]]:
    """One evaluation's JSON, or a sweep's JSON, table and plot; the last line fid=<best>.
    Returns the best result and the plots written."""
    from ..eval.evaluate import ema_sweep_outputs, sweep_outputs, write_json
    best, plots = min(results, key=lambda r: r["fid"]), []
    if ema_sweep:
        path = write_json(out_dir / f"ema_sweep_{tag}.json", results)
        table, plot = ema_sweep_outputs(results, out_dir, f"ema_sweep_{tag}")
        plots.append(plot)
        print(f"EMA sweep -> {path}, {table}, {plot}; best sigma_rel={best['posthoc_ema']['sigma_rel']:g} "
              f"w={best['settings']['cfg']:g}")
    elif len(results) == 1:
        path = write_json(out_dir / f"eval_{tag}_cfg{results[0]['settings']['cfg']:g}.json", results[0])
        print(f"results -> {path}")
    else:
        path = write_json(out_dir / f"sweep_{tag}.json", results)
        table, plot = sweep_outputs(results, out_dir, f"sweep_{tag}")
        plots.append(plot)
        print(f"sweep -> {path}, {table}, {plot}; best w={best['settings']['cfg']:g}")
    print(f"fid={best['fid']:.4f}")
    return best, plots


def add_parsers(sub) -> None:
    p = sub.add_parser("sample", help="sample a class-labelled grid PNG from a run")
    p.add_argument("--run", required=True, help="run folder, or an exported run on the Hugging Face Hub: "
                   "hf://OWNER/REPO (see `vco export`)")
    p.add_argument("--revision", help="hf:// run: a branch, tag or commit (default main)")
    p.add_argument("--num", type=positive_int, default=64)
    sampling_args(p)
    p.add_argument("--out", default="samples.png")
    p.add_argument("--npz", action="store_true", help="also write the uint8 samples as .npz")
    p.set_defaults(func=cmd_sample)


    p = sub.add_parser("eval", help="FID / precision / recall of a run (or `ref`, `fid A B`)")
    p.add_argument("action", nargs="?", choices=["ref", "fid"], help="ref: reference statistics; "
                   "fid A B: FID between two sources; omitted: evaluate --run")
    p.add_argument("sources", nargs="*", help="fid: two image folders, npz images or npz statistics")
    config_args(p)
    p.set_defaults(preset="jit-tiny")
    p.add_argument("--run", help="run folder to evaluate")
    p.add_argument("--ref", help="reference statistics (.npz)")
    p.add_argument("--data", default="fashion-mnist-test", help="ref: the data to describe")
    p.add_argument("--num", type=positive_int, default=10_000, help="samples (a multiple of the classes); ref: images")
    sampling_args(p)
    p.add_argument("--cfg-sweep", help="start:stop:step, e.g. 1.0:3.0:0.2")
    p.add_argument("--ema-sweep", help="post-hoc EMA widths start:stop:step, e.g. 0.03:0.15:0.01 (a run "
                   "trained with train.posthoc_ema; combines with --cfg-sweep)")
    p.add_argument("--ema-step", type=nonnegative_int, help="--ema-sweep: reconstruct at this snapshot step "
                   "(default: the last)")
    p.add_argument("--out", help="ref: output .npz")
    p.add_argument("--fd-dinov2", metavar="MODEL",
                   help="also FD-DINOv2 (ref: also store its statistics), with these DINOv2 weights: a local "
                        "folder or hub id, e.g. facebook/dinov2-large (ViT-L/14, as Stein et al. 2023)")
    p.add_argument("--inception-weights", metavar="PTH",
                   help="also the Inception Score, from pt_inception-2015-12-05-6726825d.pth (the 2015 "
                        "Inception with its 1008-way head, as the PyTorch FID packages download it)")
    p.set_defaults(func=cmd_eval)


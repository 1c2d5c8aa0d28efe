"""`vco train`, `vco demo` and `vco info`."""
from __future__ import annotations

from pathlib import Path

import torch

from .. import config as C
from ..train.checkpoint import CheckpointError
from .common import DATA_NAMES, config_args, data_overrides, positive_float, positive_int, set_overrides


def cmd_train(args) -> None:
    from ..train import Trainer
    from ..train.init_from import apply_init_from, is_unstarted_conversion, prepare_init_from, source_config
    from ..hub import resolve_run
    extra = data_overrides(args.data) + ([f"train.steps={args.steps}"] if args.steps is not None else [])
    init_source = resolve_run(args.init_from) if args.init_from else None    # hf:// -> cached folder
    if args.resume:
        run = Path(args.resume)
        if not (run / "config.yaml").is_file():
            raise CheckpointError(f"{run} is not a run folder (no config.yaml): pass the --out of "
                                  f"an earlier `vco train`")
        if init_source:
            raise C.ConfigError("--init-from starts a new run: use it with --out, not with --resume")
        if args.preset or args.config:
            raise C.ConfigError(f"--{'preset' if args.preset else 'config'} cannot apply to a resumed run: "
                                f"{run}/config.yaml is its config. Change single values with --set KEY=VALUE "
                                f"(listed and recorded), or start a new run from it with --init-from {run}")
        before = C.build_config(config_file=run / "config.yaml")
        cfg = C.build_config(config_file=run / "config.yaml", overrides=extra + set_overrides(args))
        changes = C.config_changes(before, cfg)
        if changes:
            print(f"resuming {run} with changed settings (the earlier config.yaml is kept in "
                  f"{run}/config_history/):\n  " + "\n  ".join(changes))
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
                             extra + set_overrides(args))
    init = prepare_init_from(init_source, out, cfg) if init_source else None
    trainer = Trainer(cfg, out, resume=bool(args.resume) and init is None)
    if init is not None:
        state, which = init
        apply_init_from(trainer, state, init_source, which)
        print(f"initialised {out} from the {which} weights of {init_source} (both EMAs too; "
              f"fresh optimizer) -> {cfg.train.steps} steps")
    elif args.resume:
        print(f"resuming {out} at step {trainer.step} -> {cfg.train.steps}")
    if trainer.power_emas and trainer.world.is_main:
        from ..train.posthoc_ema import storage_bytes
        tc = trainer.cfg.train
        print(f"post-hoc EMA: widths {', '.join(f'{w:g}' for w in tc.posthoc_ema_widths)} saved every "
              f"{tc.posthoc_ema_every} steps to {out / 'posthoc_ema'}: "
              f"{storage_bytes(trainer.power_emas, tc.posthoc_ema_every, tc.steps) / 2**30:.2f} GiB over "
              f"{tc.steps} steps")
    summary = trainer.train(progress=not args.quiet)
    if trainer.world.is_main:
        print(f"trained {summary['steps']} steps in {summary['seconds']:.0f}s on {trainer.world.size} "
              f"process(es); checkpoint: {out / 'checkpoint.safetensors'}")
    from ..train.distributed import teardown
    teardown()


def cmd_demo(args) -> None:
    from ..demo import run_demo
    run_demo(args.out, args.preset, args.minutes, args.batch_size, args.per_class, args.sample_steps,
             args.max_steps, extra=set_overrides(args))


def cmd_info(args) -> None:
    from ..losses import aux_loss
    from ..losses.base import BuildContext
    from ..models import count_params
    from ..resolve import resolve_config
    cfg = resolve_config(C.build_config(args.preset, args.config, set_overrides(args)))
    print(C.to_yaml(cfg), end="")
    aux, options = aux_loss(cfg) if cfg.model.co_denoising else (None, None)
    if aux is not None and not aux.uses_encoder:   # an encoder-space loss trains nothing itself
        with torch.device("meta"):
            term = aux(options, BuildContext(cfg.model, cfg.diffusion))
        extra = sum(p.numel() for p in term.parameters() if p.requires_grad)
        if extra:
            print(f"aux_loss_params={extra}  # trained with the model, not used for sampling")
    print(f"params={count_params(cfg.model)}")


def add_parsers(sub) -> None:
    p = sub.add_parser("train", help="train a model (or --resume a run)")
    config_args(p)
    p.add_argument("--data", help=f"{' | '.join(DATA_NAMES)} | a class-per-folder image directory")
    p.add_argument("--out", help="run folder to create")
    p.add_argument("--steps", type=positive_int, help="total optimizer steps (train.steps)")
    p.add_argument("--resume", help="continue the run in this folder up to --steps")
    p.add_argument("--init-from", dest="init_from", metavar="RUN",
                   help="start from this run's weights (ema1, else model) with a fresh optimizer; "
                        "its config is used unless --preset/--config is given; a folder or hf://OWNER/REPO")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)


    p = sub.add_parser("info", help="print the resolved config and the parameter count")
    config_args(p)
    p.set_defaults(func=cmd_info)


    p = sub.add_parser("demo", help="train the tiny preset on Fashion-MNIST, then sample")
    p.add_argument("--preset", default="vco-tiny")
    p.add_argument("--out", default="demo")
    p.add_argument("--minutes", type=positive_float, default=9.0,
                   help="wall-clock budget of the whole job: setup, training, sampling and plots")
    p.add_argument("--max-steps", type=positive_int, default=100_000)
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--per-class", type=positive_int, default=6)
    p.add_argument("--sample-steps", type=positive_int, default=25, help="Heun steps (50 in the paper)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", nargs="+",
                   help="override a config value of the demo run, e.g. --set train.blr=0.016")
    p.set_defaults(func=cmd_demo)

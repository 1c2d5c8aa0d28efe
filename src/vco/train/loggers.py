"""Where a run's metrics go besides metrics.jsonl, chosen by ``train.loggers``.

    tensorboard   event files under RUN/tb (the default)
    wandb         Weights & Biases (``pip install 'vco[wandb]'``): project ``train.wandb_project``,
                  run name ``train.wandb_name`` (default: the run folder's name). The W&B run id is
                  kept in RUN/wandb.json, so ``vco train --resume`` and ``vco eval`` continue the
                  same W&B run; WANDB_MODE=offline logs to RUN/wandb/ for a later ``wandb sync``.

Each logger takes scalars by step and images (PNG files) by step; evaluation results go under
``eval/`` and are plotted against ``train_step`` (a resumed W&B run refuses steps it has passed:
so do the few steps that a run resumed after a crash redoes since its last checkpoint).
"""
from __future__ import annotations

import json
import logging
import secrets
from pathlib import Path

from ..config import Config, ConfigError, to_dict
from ..files import atomic_write_text

log = logging.getLogger("vco.train")
WANDB_RUN_FILE = "wandb.json"


class TensorBoardLogger:
    def __init__(self, run_dir: Path, cfg: Config):
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(str(Path(run_dir) / "tb"))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)

    def image(self, step: int, name: str, path: Path) -> None:
        import numpy as np
        from PIL import Image
        with Image.open(path) as im:
            self.writer.add_image(name, np.asarray(im.convert("RGB")), step, dataformats="HWC")

    def close(self) -> None:
        self.writer.close()


class WandbLogger:
    def __init__(self, run_dir: Path, cfg: Config):
        import wandb
        self.wandb, run_dir, tc = wandb, Path(run_dir), cfg.train
        stored = run_dir / WANDB_RUN_FILE
        if stored.is_file():                       # the same W&B run as before this resume
            ident = json.loads(stored.read_text())
        else:                                      # recorded before init: a crash keeps the id
            ident = {"id": secrets.token_hex(4), "project": tc.wandb_project,
                     "entity": tc.wandb_entity or None, "name": tc.wandb_name or run_dir.resolve().name}
            atomic_write_text(stored, json.dumps(ident, indent=2))
        self.run = wandb.init(id=ident["id"], project=ident["project"], entity=ident["entity"],
                              name=ident["name"], resume="allow", dir=str(run_dir), config=to_dict(cfg))
        self.run.define_metric("train_step")
        self.run.define_metric("eval/*", step_metric="train_step")

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if any(k.startswith("eval/") for k in values):
            self.run.log({**values, "train_step": step})
        else:
            self.run.log(values, step=step)

    def image(self, step: int, name: str, path: Path) -> None:
        self.run.log({name: self.wandb.Image(str(path)), "train_step": step})

    def close(self) -> None:
        self.run.finish()


LOGGERS = {"tensorboard": TensorBoardLogger, "wandb": WandbLogger}
# the package each logger imports, and how to get it
REQUIRES = {"tensorboard": ("torch.utils.tensorboard", "pip install tensorboard"),
            "wandb": ("wandb", "pip install 'vco[wandb]'")}


def check_loggers(names) -> None:
    """A ConfigError for an unknown logger or one whose package is missing (before any work)."""
    import importlib
    for name in names:
        if name not in LOGGERS:
            raise ConfigError(f"train.loggers: unknown logger {name!r}; choose from {', '.join(LOGGERS)} "
                              f"(e.g. --set 'train.loggers=[tensorboard,wandb]', or [] for metrics.jsonl only)")
        module, install = REQUIRES[name]
        try:
            importlib.import_module(module)
        except ImportError:
            raise ConfigError(f"train.loggers includes {name}, but {module} is not installed: {install}, "
                              f"or drop it with --set 'train.loggers=[...]'") from None


def build_loggers(run_dir: Path, cfg: Config) -> list:
    check_loggers(cfg.train.loggers)
    return [LOGGERS[name](run_dir, cfg) for name in cfg.train.loggers]


def log_evaluation(run_dir: Path, cfg: Config, step: int, result: dict, images: list[Path]) -> None:
    """An evaluation's metrics (eval/fid, eval/precision, ...) and sample grids, sent to the run's
    loggers at the checkpoint's step; a logger that fails only warns (the results are on disk)."""
    keys = ("fid", "precision", "recall", "kid", "fd_dinov2", "inception_score")
    values = {f"eval/{k}": float(result[k]) for k in keys if isinstance(result.get(k), (int, float))}
    values["eval/cfg"] = float(result["settings"]["cfg"])
    for name in cfg.train.loggers:
        try:
            check_loggers([name])
            logger = LOGGERS[name](run_dir, cfg)
            logger.scalars(step, values)
            for path in images:
                if Path(path).is_file():
                    logger.image(step, f"eval/{Path(path).stem}", Path(path))
            logger.close()
        except Exception as e:  # noqa: BLE001 (a logger's own errors: W&B login, network, ...)
            log.warning("evaluation not sent to %s: %s", name, e)

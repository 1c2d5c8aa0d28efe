"""``vco train --init-from RUN``: start a new run from another run's weights.

The source is any run folder (one written by ``vco train`` or by ``vco convert-official``). Its
sampling weights (``ema1`` if it has them, else ``model``) initialise the model and both EMAs; the
optimizer and the step counter start fresh (there is no RNG state to carry: training randomness
is a function of seed, step and sample position). Statistics of the semantic stream stored in the
source run are copied along, so a V-Co fine-tune does not recompute them.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import torch

from ..config import Config
from .checkpoint import (CheckpointError, atomic_write, load_tensors, load_weights, read_meta,
                         state_mismatch)
from .distributed import process_rank


def source_config(run: str | Path) -> Path:
    """The config.yaml of a source run (used when ``vco train`` gets no --preset / --config)."""
    path = Path(run) / "config.yaml"
    if not path.is_file():
        raise CheckpointError(f"{run} is not a run folder (no config.yaml): --init-from takes a folder "
                              f"written by `vco train` or `vco convert-official`")
    return path


def is_unstarted_conversion(run: str | Path) -> bool:
    """A run written by ``vco convert-official`` that has not been trained yet: it holds weights
    but no optimizer state and is at step 0, so ``--resume`` starts it like ``--init-from`` (in place)."""
    meta = read_meta(run)
    return bool(meta.get("converted_from")) and int(meta.get("step", 0)) == 0


def init_weights(run: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """(state dict, which) of a run: the ``model`` section overlaid with ``ema1`` when present."""
    read_meta(run)                                   # a clear error for a foreign or damaged file
    state = load_tensors(run, "model")
    ema1 = load_tensors(run, "ema1")
    if not state and not ema1:
        raise CheckpointError(f"{run} holds neither 'model' nor 'ema1' weights")
    state.update(ema1)
    return state, "ema1" if ema1 else "model"


def prepare_init_from(source: str | Path, out: str | Path, cfg: Config) -> tuple[dict[str, torch.Tensor], str]:
    """Check that ``source``'s weights fit ``cfg``'s model (before anything heavy is built) and
    copy its semantic statistics into ``out`` when ``cfg`` names none; returns init_weights()."""
    from ..models import build_model
    state, which = init_weights(source)
    own = build_model(cfg.model, device="meta").state_dict()
    # the sin-cos position embedding is a fixed buffer the model computes itself: it may be absent
    lines = state_mismatch(own, state, optional=("pos_embed",), limit=3)
    if lines:
        raise CheckpointError(f"the weights of {source} do not fit this model ({'; '.join(lines)}): train with "
                              f"the source's config (omit --preset/--config) or a matching preset")
    if cfg.model.fusion != "none" and not cfg.semantic.stats and not cfg.semantic.cache:
        from ..semantic.stream import STATS_NAME
        src, dst = Path(source) / STATS_NAME, Path(out) / STATS_NAME
        # under torchrun only rank 0 writes; the others read it after the trainer's barrier
        main = process_rank()[0] == 0
        if main and src.is_file() and not dst.exists() and src.resolve() != dst.resolve():
            atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))
    return state, which


@torch.no_grad()
def apply_init_from(trainer, state: dict[str, torch.Tensor], source: str | Path, which: str) -> None:
    """Load ``state`` into ``trainer.model`` (strictly) and restart both EMAs from it; the
    optimizer keeps no state (it was just built), so it starts fresh. ``which`` (the section the
    weights came from) is not used here: the caller prints it."""
    full = dict(trainer.model.state_dict())
    full.update(state)
    load_weights(trainer.model, full, source=str(source))
    params = {n: p.detach() for n, p in trainer.model.named_parameters()}
    for ema in trainer.emas:
        ema.load_state_dict(params)
    if any(trainer.optimizer.state.values()):
        raise CheckpointError("--init-from needs a fresh optimizer, but it already holds state")

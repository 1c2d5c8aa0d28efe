"""Reading a run folder back: the model of its config with the chosen weights."""
from __future__ import annotations

from pathlib import Path

from ..config import from_dict
from ..models import build_model
from .checkpoint import CheckpointError, load_tensors, load_weights, read_meta


def load_run_model(run: str | Path, weights: str = "ema1", device="cpu"):
    """(model in eval mode, config, meta) of a run folder, with the chosen weights
    ('ema1' for sampling, 'ema2', or 'model' for the raw weights)."""
    meta = read_meta(run)
    held = meta.get("weights")               # a post-hoc EMA reconstruction or an export: some only
    if held is not None and weights not in held:
        what = (f"a post-hoc EMA reconstruction of {meta['posthoc_ema'].get('source', 'a run')}"
                if "posthoc_ema" in meta else f"exported from {meta.get('exported_from', 'a run')}")
        raise CheckpointError(f"{run} holds only the {', '.join(held)} weights ({what}); "
                              f"use --weights {held[0]}")
    cfg = from_dict(meta["config"])
    model = build_model(cfg.model, device)
    state = dict(model.state_dict())
    state.update(load_tensors(run, "model"))
    if weights != "model":
        ema = load_tensors(run, weights)
        if not ema:
            raise CheckpointError(f"{run} holds no '{weights}' weights (choose ema1, ema2 or model)")
        state.update(ema)
    load_weights(model, state, source=str(run))
    return model.eval(), cfg, meta

"""Checkpoints: one safetensors file (weights, both EMAs, optimizer, RNG) + a JSON sidecar.

Writes are atomic: a temporary file in the same folder is written, flushed and fsynced, then
renamed over the old one, so the last good checkpoint survives a crash mid-save.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import save_file

FORMAT = "vco-checkpoint-1"
CKPT_NAME = "checkpoint.safetensors"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written or used; the message says which and why."""


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass  # not every filesystem supports fsync on a directory


def atomic_write(path: Path, write) -> None:
    """``write(tmp_path)`` then fsync and rename onto ``path``; the old file stays until then."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except Exception as e:  # OSError, or the writer's own error wrapping one (e.g. disk full)
        Path(tmp).unlink(missing_ok=True)
        reason = getattr(e, "strerror", None) or e
        raise CheckpointError(f"could not write {path}: {reason}. The previous file (if any) is "
                              f"intact; free disk space or choose another --out.") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def optimizer_tensors(optimizer: torch.optim.Optimizer, names: dict) -> dict[str, torch.Tensor]:
    """AdamW state keyed by parameter name: optim/<name>/<exp_avg|exp_avg_sq|step>."""
    out = {}
    for p, state in optimizer.state.items():
        for k, v in state.items():
            out[f"optim/{names[p]}/{k}"] = v.detach().reshape(-1) if v.dim() == 0 else v.detach()
    return out


def load_optimizer_tensors(optimizer: torch.optim.Optimizer, params: dict, tensors: dict) -> None:
    """Inverse of optimizer_tensors; ``params``: name -> parameter; ``tensors`` keys are
    '<name>/<state key>' (prefix stripped)."""
    for key, v in tensors.items():
        name, k = key.rsplit("/", 1)
        if name not in params:
            raise CheckpointError(f"optimizer state for unknown parameter '{name}'")
        p = params[name]
        optimizer.state[p][k] = v.reshape(()) if k == "step" else v.to(p.device)


def digest(t: torch.Tensor) -> str:
    """SHA-256 of a tensor's bytes (any dtype), to detect a tampered or bit-rotted file."""
    return hashlib.sha256(t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy()).hexdigest()


def remove_stale_temporaries(run_dir: Path) -> None:
    """Temporary files of a save that was killed midway (the real files were never touched)."""
    for tmp in Path(run_dir).glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def save_checkpoint(run_dir: Path, tensors: dict[str, torch.Tensor], meta: dict) -> Path:
    """Write ``tensors`` (flat names) with ``meta`` (JSON-able) atomically; returns the path.
    The metadata holds a SHA-256 per tensor, checked on every load."""
    run_dir = Path(run_dir)
    path = run_dir / CKPT_NAME
    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    meta = dict(meta, format=FORMAT)
    digests = json.dumps({k: digest(v) for k, v in flat.items()})
    atomic_write(path, lambda tmp: save_file(flat, str(tmp), metadata={"meta": json.dumps(meta),
                                                                       "sha256": digests}))
    atomic_write(run_dir / "checkpoint.json",
                 lambda tmp: tmp.write_text(json.dumps(meta, indent=2, sort_keys=True)))
    return path


def checkpoint_path(run: str | Path) -> Path:
    run = Path(run)
    path = run / CKPT_NAME if run.is_dir() else run
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: pass a run folder written by `vco train`")
    return path


def read_meta(run: str | Path) -> dict:
    path = checkpoint_path(run)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("meta", "{}"))
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"{path} is truncated or corrupt ({e}); use an earlier copy") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a vco checkpoint (format {meta.get('format')!r})")
    return meta


def load_tensors(run: str | Path, prefix: str | None = None) -> dict[str, torch.Tensor]:
    """All tensors, or those under ``prefix/`` with the prefix stripped; each is checked
    against the SHA-256 stored when it was written."""
    path = checkpoint_path(run)
    read_meta(path)
    try:
        out = {}
        with safe_open(str(path), framework="pt") as f:
            digests = json.loads((f.metadata() or {}).get("sha256", "{}"))
            for k in f.keys():
                if prefix is None or k.startswith(prefix + "/"):
                    t = f.get_tensor(k)
                    if digests.get(k) != digest(t):
                        raise CheckpointError(f"{path}: tensor '{k}' does not match its checksum; the "
                                              f"file was modified or damaged: use an earlier copy")
                    out[k if prefix is None else k[len(prefix) + 1:]] = t
        return out
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(f"{path} is truncated or corrupt ({e}); use an earlier copy") from None


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Strict load that names every missing, unexpected or mis-shaped tensor."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        lines = ([f"missing ({len(missing)}): {', '.join(missing[:8])}"] if missing else []) + \
                ([f"unexpected ({len(unexpected)}): {', '.join(unexpected[:8])}"] if unexpected else []) + \
                ([f"shape mismatch ({len(shapes)} tensors): {'; '.join(shapes[:8])}"] if shapes else [])
        raise CheckpointError(f"{source} does not fit this model (another preset or config?):\n  "
                              + "\n  ".join(lines))
    model.load_state_dict(state)

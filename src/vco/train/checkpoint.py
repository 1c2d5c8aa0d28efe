"""Checkpoints: one safetensors file (weights, both EMAs, optimizer state) + a JSON sidecar.

No RNG state is stored: the training randomness is a pure function of (seed, step, sample position)
(vco.diffusion.randomness), so the step counter is all a resume needs.
Writes are atomic (vco.files.atomic_write): a temporary file in the same folder is written, fsynced,
then renamed over the old one, so the last good checkpoint survives a crash mid-save.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable, Mapping

import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import save_file

from .. import files
from ..files import WriteError

FORMAT = "vco-checkpoint-1"
CKPT_NAME = "checkpoint.safetensors"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written or used; the message says which and why."""


class CheckpointWriteError(CheckpointError, WriteError):
    """A checkpoint file that could not be written (the previous one is intact)."""


def atomic_write(path: Path, write) -> None:
    """vco.files.atomic_write, failing with a CheckpointWriteError that says what to do."""
    try:
        files.atomic_write(path, write)
    except WriteError as e:
        raise CheckpointWriteError(f"{e} Free disk space or choose another --out.") from None


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


# torch dtype -> the name safetensors' header (and get_slice(...).get_dtype()) gives it
_SAFETENSORS_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16",
                       torch.bfloat16: "BF16", torch.int64: "I64", torch.int32: "I32", torch.int16: "I16",
                       torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL"}


def digest(t: torch.Tensor) -> str:
    """SHA-256 of a tensor's bytes (any dtype), to detect a tampered or bit-rotted file."""
    return hashlib.sha256(t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy()).hexdigest()


def header_digest(meta: str, digests: str, layout: dict[str, tuple[str, list[int]]]) -> str:
    """SHA-256 of everything a checkpoint's header says: the metadata JSON, the per-tensor
    digests, and each tensor's dtype and shape (which the tensor digests do not cover)."""
    text = json.dumps([meta, digests, sorted((k, str(d), list(s)) for k, (d, s) in layout.items())])
    return hashlib.sha256(text.encode()).hexdigest()


def save_checkpoint(run_dir: Path, tensors: dict[str, torch.Tensor], meta: dict) -> Path:
    """Write ``tensors`` (flat names) with ``meta`` (JSON-able) atomically; returns the path.
    The header holds a SHA-256 per tensor and one of the header itself, checked on every load."""
    run_dir = Path(run_dir)
    path = run_dir / CKPT_NAME
    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    meta = json.dumps(dict(meta, format=FORMAT))
    digests = json.dumps({k: digest(v) for k, v in flat.items()})
    layout = {k: (_SAFETENSORS_DTYPES[v.dtype], list(v.shape)) for k, v in flat.items()}
    header = {"meta": meta, "sha256": digests, "header_sha256": header_digest(meta, digests, layout)}
    atomic_write(path, lambda tmp: save_file(flat, str(tmp), metadata=header))
    meta = json.loads(meta)
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
    """The checkpoint's metadata, after checking the header against its own SHA-256 (written
    since that check exists; older checkpoints have only the per-tensor digests)."""
    path = checkpoint_path(run)
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            slices = {k: f.get_slice(k) for k in f.keys()}
            layout = {k: (v.get_dtype(), v.get_shape()) for k, v in slices.items()}
        meta = json.loads(header.get("meta", "{}"))
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"{path} is truncated or corrupt ({e}); use an earlier copy") from None
    stored = header.get("header_sha256")
    if stored is not None and stored != header_digest(header.get("meta", ""), header.get("sha256", ""), layout):
        raise CheckpointError(f"{path} is corrupt: its header (step, config, tensor shapes) does not match "
                              f"its checksum; the file was modified or damaged: use an earlier copy")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a vco checkpoint (format {meta.get('format')!r})")
    return meta


def checkpoint_sections(run: str | Path) -> list[str]:
    """The sections of a checkpoint (model, ema1, ema2, optim, ...), read from its header only."""
    with safe_open(str(checkpoint_path(run)), framework="pt") as f:
        return sorted({k.split("/", 1)[0] for k in f.keys()})


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


def _shape(v) -> tuple[int, ...]:
    return tuple(v.shape) if hasattr(v, "shape") else tuple(v)


def state_mismatch(expected: Mapping[str, torch.Tensor | torch.Size | tuple[int, ...]],
                   state: Mapping[str, torch.Tensor | torch.Size | tuple[int, ...]],
                   optional: Iterable[str] = (), limit: int = 8) -> list[str]:
    """Why ``state`` does not fit ``expected`` (e.g. ``model.state_dict()``, or name -> shape):
    one line each for missing, unexpected and mis-shaped keys, naming up to ``limit`` of each;
    [] when it fits. Expected keys ending with one of ``optional`` may be missing."""
    optional = tuple(optional)
    missing = sorted(k for k in expected if k not in state and not k.endswith(optional))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{k}: checkpoint {_shape(state[k])} vs model {_shape(v)}"
              for k, v in expected.items() if k in state and _shape(state[k]) != _shape(v)]
    return ([f"missing ({len(missing)}): {', '.join(missing[:limit])}"] if missing else []) + \
           ([f"unexpected ({len(unexpected)}): {', '.join(unexpected[:limit])}"] if unexpected else []) + \
           ([f"shape mismatch ({len(shapes)} tensors): {'; '.join(shapes[:limit])}"] if shapes else [])


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Strict load that names every missing, unexpected or mis-shaped tensor."""
    lines = state_mismatch(model.state_dict(), state)
    if lines:
        raise CheckpointError(f"{source} does not fit this model (another preset or config?):\n  "
                              + "\n  ".join(lines))
    model.load_state_dict(state)

"""Read the released official V-Co and JiT checkpoints (``.pth``) into vco run folders.

What a converted run holds, and what is checked, is described in docs/official-checkpoints.md.
In short:

* The file is a torch pickle ``{"model", "model_ema1", "model_ema2", "optimizer", "epoch", "args"}``;
  ``args`` is an ``argparse.Namespace``. It is read with ``torch.load(weights_only=True)`` and only
  ``argparse.Namespace`` (and plain paths) allow-listed, so no arbitrary object is ever unpickled.
* Network weights are renamed onto ours (:mod:`.official_keys`); the config is inferred from their
  shapes and the stored args (:mod:`.official_config`).
* ``net.pos_embed`` is a frozen Parameter in the official code, yet the official EMAs update it too,
  so the EMA sections hold it slightly moved. It is checked against the 2-D sin-cos embedding our
  model computes and then kept from each section, so that converted weights reproduce the official
  outputs exactly.
* V-Co checkpoints carry two frozen DINOv2-with-registers copies; they become one HF folder
  (``semantic_encoder/``) in the run (:mod:`.official_dinov2`).
* ``img_mean``/``img_std`` (ImageNet statistics of the hybrid loss) are checked and dropped: our
  encoder applies the same normalisation itself.

Entry point: :func:`convert_official` (CLI: ``vco convert-official CKPT --out RUN``).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PosixPath, PurePosixPath
from typing import Any

import torch

from .. import config as C
from ..train.checkpoint import save_checkpoint
from .errors import ConversionError
from .official_config import Shapes, infer_config
from .official_dinov2 import build_semantic_encoder, compare_dino_copies, pick_dinov2, save_encoder
from .official_keys import BUFFER, NET, POS_EMBED, WEIGHT, classify, model_kind, our_name, transform_for

# official top-level entry -> our checkpoint section
SECTIONS = {"model": "model", "model_ema1": "ema1", "model_ema2": "ema2"}
WEIGHT_CHOICES = ("all", "ema1", "ema2", "model")
ENCODER_DIR = "semantic_encoder"
REPORT_NAME = "conversion.json"


# --------------------------------------------------------------------------- reading
def load_official(path: str | os.PathLike) -> dict:
    """The official checkpoint as a dict, read without unpickling arbitrary objects.

    Only tensors, containers, primitives and ``argparse.Namespace`` (plus plain POSIX paths) are
    accepted; anything else is refused with a clear error.
    """
    path = Path(path)
    if not path.exists():
        raise ConversionError(f"checkpoint not found: {path} (download the official .pth first)")
    if not path.is_file():
        raise ConversionError(f"{path} is not a file: pass the official checkpoint .pth itself")
    allowed = [argparse.Namespace, PosixPath, PurePosixPath]
    mmap = zipfile.is_zipfile(path)          # torch's zip format can be memory-mapped
    try:
        with torch.serialization.safe_globals(allowed):
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # noqa: BLE001 - torch raises many types for damaged files
        text = " ".join(str(e).split())
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if found:
            what = found.group(1)
            raise ConversionError(
                f"{path} holds {what}, which is not allowed when loading without unpickling "
                f"arbitrary code (only tensors and argparse.Namespace are); this is not an official "
                f"V-Co/JiT checkpoint, or it was re-saved with extra objects") from None
        detail = re.search(r"WeightsUnpickler error:\s*(.*?)\s*(Check the documentation|$)", text)
        text = detail.group(1) if detail else text.split(". This is an internal")[0]
        raise ConversionError(f"{path} is truncated or corrupt ({text[:120]}); download it again "
                              f"and compare its size with the published one") from None
    if not isinstance(obj, dict):
        raise ConversionError(f"{path} is not an official V-Co/JiT checkpoint: it holds a "
                              f"{type(obj).__name__}, not a dict with 'model'/'model_ema1' weights")
    return obj


def official_sections(obj: dict, source: str = "checkpoint") -> dict[str, dict[str, torch.Tensor]]:
    """{'model' | 'model_ema1' | 'model_ema2': state dict} of an official checkpoint (a bare
    state dict with ``net.*`` keys counts as 'model')."""
    sections = {k: obj[k] for k in SECTIONS if isinstance(obj.get(k), dict)}
    if not sections and any(isinstance(k, str) and k.startswith(NET) for k in obj):
        sections = {"model": obj}
    if not sections:
        keys = ", ".join(sorted(map(str, obj))[:8])
        raise ConversionError(f"{source} is not an official V-Co/JiT checkpoint: no 'model' or "
                              f"'model_ema1' weights (top-level keys: {keys})")
    for name, sd in sections.items():
        bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise ConversionError(f"{source}: entry '{name}' holds non-tensor values (e.g. {bad[0]!r}); "
                                  f"not an official V-Co/JiT checkpoint")
        if not any(k.startswith(NET + "blocks.") for k in sd):
            raise ConversionError(f"{source} is not an official V-Co/JiT checkpoint: '{name}' has no "
                                  f"'net.blocks.*' weights (keys start with "
                                  f"{sorted({k.split('.')[0] for k in sd})[:5]})")
    return sections


def args_dict(args: Any) -> dict:
    """The checkpoint's stored training arguments as a plain dict of primitives (metadata only)."""
    if args is None:
        return {}
    d = vars(args) if isinstance(args, argparse.Namespace) else dict(args) if isinstance(args, dict) else {}
    prim = (str, int, float, bool, type(None))
    out = {}
    for k, v in d.items():
        if isinstance(v, prim):
            out[str(k)] = v
        elif isinstance(v, (list, tuple)) and all(isinstance(x, prim) for x in v):
            out[str(k)] = list(v)
        elif isinstance(v, PurePosixPath):
            out[str(k)] = str(v)
    return out


# --------------------------------------------------------------------------- mapping
@dataclass
class Plan:
    """A conversion before anything is written: our tensors per section and every official
    tensor's role."""
    kind: str
    cfg: C.Config
    preset: str
    sections: dict[str, dict[str, torch.Tensor]]        # ours: model/ema1/ema2 -> name -> tensor
    names: dict[str, str]                               # our name -> official key (with net.)
    usage: dict[str, dict[str, str]]                    # official section -> key -> role
    dinov2: dict[str, dict[str, torch.Tensor]]          # semantic / loss -> HF key -> tensor
    dinov2_section: str | None
    args: dict
    epoch: Any
    notes: list[str] = field(default_factory=list)


def _pos_embed_check(official: torch.Tensor, hidden: int, grid: int, section: str) -> str | None:
    """None if equal to our sin-cos embedding, a note if within the drift the official EMAs give
    this frozen tensor; raises if it is another embedding altogether."""
    if official.is_meta:
        return None
    from ..nn.layers import sincos_pos_embed_2d
    ours = sincos_pos_embed_2d(hidden, grid)
    if tuple(official.shape) != tuple(ours.shape):
        raise ConversionError(f"{section}: net.pos_embed {tuple(official.shape)} vs ours {tuple(ours.shape)}")
    diff = (official.float() - ours).abs().max().item()
    if diff <= 1e-5:
        return None
    if diff <= 2e-3:
        return (f"{section}: net.pos_embed is within {diff:.1e} of the sin-cos embedding (the official "
                f"EMA also updates this frozen tensor); kept from the checkpoint for exact parity")
    raise ConversionError(
        f"{section}: net.pos_embed differs from the 2-D sin-cos embedding by up to {diff:.3g}: the "
        f"weights assume another position layout, so they cannot run in this model")


def plan_conversion(obj: dict, weights: str = "all", overrides: list[str] | None = None,
                    source: str = "checkpoint") -> Plan:
    """Map an official checkpoint dict (see :func:`load_official`) onto our model's names."""
    if weights not in WEIGHT_CHOICES:
        raise ConversionError(f"--weights must be one of {', '.join(WEIGHT_CHOICES)}, got {weights!r}")
    sections = official_sections(obj, source)
    args = args_dict(obj.get("args"))
    first = next(iter(sections.values()))
    kind = model_kind(first)
    cfg, shapes, notes = infer_config(first, args, overrides)
    if "model_ema1" not in sections:
        notes.append("the checkpoint has no model_ema1 (the sampling weights): sample with --weights "
                     + ("model" if "model" in sections else "ema2"))
    keep = list(sections) if weights == "all" else [k for k, v in SECTIONS.items() if v == weights]
    if not any(k in sections for k in keep):
        raise ConversionError(f"{source} has no '{keep[0]}' weights to convert (it has: "
                              f"{', '.join(sections)}); choose another --weights")
    usage: dict[str, dict[str, str]] = {}
    for sec, sd in sections.items():
        if any(not isinstance(k, str) for k in sd):
            raise ConversionError(f"{source}: '{sec}' has non-string keys; not an official checkpoint")
        if model_kind(sd) != kind:
            raise ConversionError(f"{source}: '{sec}' holds another architecture than the other sections")
        usage[sec] = {k: classify(k, kind) for k in sd}
    dino_sec, dinov2 = pick_dinov2(sections, usage, notes)
    if dino_sec is None and kind == "vco":
        notes.append("the checkpoint holds no DINOv2 copies: training from this run downloads "
                     f"{cfg.semantic.encoder_path}")

    from ..models import build_model
    model = build_model(cfg.model, device="meta")
    own = dict(model.state_dict())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    names: dict[str, str] = {}
    ours_by_section: dict[str, dict[str, torch.Tensor]] = {}
    for sec, sd in sections.items():
        mapped = _map_section(sd, usage[sec], kind, "pos_embed" in own, shapes, sec, names, notes)
        expected = set(own) if sec == "model" else trainable | ({"pos_embed"} & set(own))
        _check_fits(mapped, own, expected, sec, source, {n: names[n] for n in mapped})
        if sec in keep:
            ours_by_section[SECTIONS[sec]] = mapped
    if dinov2:
        notes += compare_dino_copies(dinov2)
    return Plan(kind=kind, cfg=cfg, preset=cfg.preset, sections=ours_by_section, names=names,
                usage=usage, dinov2=dinov2, dinov2_section=dino_sec, args=args,
                epoch=obj.get("epoch") if isinstance(obj.get("epoch"), (int, float)) else None,
                notes=notes)


def _map_section(sd: dict, usage: dict, kind: str, keep_pos: bool, shapes: Shapes, sec: str,
                 names: dict, notes: list[str]) -> dict[str, torch.Tensor]:
    """Our tensors of one official section; records our name -> official key in ``names``."""
    mapped: dict[str, torch.Tensor] = {}
    for key, role in usage.items():
        if role == WEIGHT:
            name = our_name(key[len(NET):], kind)
            if name in mapped:
                raise ConversionError(f"two official tensors map to '{name}'")
            mapped[name] = transform_for(key[len(NET):])(sd[key])
            names[name] = key
        elif role == POS_EMBED:
            note = _pos_embed_check(sd[key], shapes.hidden, shapes.grid, sec)
            if note:
                notes.append(note)
            if keep_pos:                      # our buffer takes the checkpoint's value (exact parity)
                mapped["pos_embed"] = sd[key]
                names["pos_embed"] = key
        elif role == BUFFER:
            note = _buffer_check(key, sd[key])
            if note:
                notes.append(f"{sec}: {note}")
    return mapped


def _buffer_check(key: str, t: torch.Tensor) -> str | None:
    if t.is_meta:
        return None
    from ..semantic.base import IMAGENET_MEAN, IMAGENET_STD
    ref = torch.tensor(IMAGENET_MEAN if key == "img_mean" else IMAGENET_STD).view(1, 3, 1, 1)
    if t.shape != ref.shape or not torch.allclose(t.float(), ref, atol=1e-6):
        return (f"{key} = {t.flatten().tolist()} is not the ImageNet statistic our hybrid loss uses "
                f"({ref.flatten().tolist()}); fine-tuning will use ours")
    return None


def _check_fits(mapped: dict, own: dict, expected: set, sec: str, source: str, origin: dict) -> None:
    missing = sorted(expected - set(mapped))
    unexpected = sorted(origin[k] for k in set(mapped) - set(own))
    if unexpected:
        raise ConversionError(
            f"unexpected tensor{'s' if len(unexpected) > 1 else ''} {', '.join(repr(k) for k in unexpected[:3])}"
            f"{' ...' if len(unexpected) > 3 else ''} in {source} ({sec}): not part of the final V-Co "
            f"recipe or the pixel-only JiT layout, so it cannot be converted faithfully")
    shapes = [f"{k}: {tuple(mapped[k].shape)} vs ours {tuple(own[k].shape)}"
              for k in mapped if k in own and tuple(mapped[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = ([f"{len(missing)} of our tensors have no official source (e.g. {', '.join(missing[:3])})"]
                 if missing else []) + \
                ([f"shape mismatch: {'; '.join(shapes[:3])}"] if shapes else [])
        raise ConversionError(f"{source} ({sec}) does not fit the inferred model: {'; '.join(parts)}")


# --------------------------------------------------------------------------- writing
@dataclass
class ConversionResult:
    run: Path
    preset: str
    kind: str
    sections: list[str]
    notes: list[str]
    encoder: Path | None
    stats: Path | None


def _report(plan: Plan, ckpt: Path) -> dict:
    counts = {sec: {} for sec in plan.usage}
    for sec, roles in plan.usage.items():
        for role in roles.values():
            counts[sec][role] = counts[sec].get(role, 0) + 1
    return {"source": str(ckpt), "kind": plan.kind, "preset": plan.preset, "epoch": plan.epoch,
            "official_model": plan.args.get("model"), "sections": sorted(plan.sections),
            "dinov2_from": plan.dinov2_section, "roles": counts,
            "names": {ours: off for ours, off in sorted(plan.names.items())},
            "notes": plan.notes, "args": plan.args}


def convert_official(ckpt: str | os.PathLike, out: str | os.PathLike, stats: str | os.PathLike | None = None,
                     weights: str = "all", overrides: list[str] | None = None) -> ConversionResult:
    """Convert an official V-Co/JiT ``.pth`` into the vco run folder ``out`` (must not exist).

    The folder holds config.yaml, checkpoint.safetensors (sections model/ema1/ema2, as written by
    ``vco train``), semantic_encoder/ (V-Co: the DINOv2 encoder as an HF folder; the config points
    at it), the semantic statistics if ``stats`` is given, and conversion.json (what went where).
    """
    ckpt, out = Path(ckpt), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConversionError(f"{out} already exists: choose another --out (nothing was overwritten)")
    obj = load_official(ckpt)
    plan = plan_conversion(obj, weights, overrides, source=str(ckpt))
    cfg = plan.cfg
    final = out.resolve()
    tmp = final.parent / f".{final.name}.converting-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        encoder_dir = None
        if plan.dinov2:
            save_encoder(build_semantic_encoder(plan.dinov2), tmp / ENCODER_DIR)
            encoder_dir = final / ENCODER_DIR
            cfg.semantic.encoder = "dinov2"
            cfg.semantic.encoder_path = str(encoder_dir)
        stats_path = None
        if stats is not None:
            stats_path = _write_stats(stats, cfg, tmp)
        tensors = {f"{sec}/{k}": v for sec, sd in plan.sections.items() for k, v in sd.items()}
        meta = {"step": 0, "skipped_steps": 0, "config": C.to_dict(cfg), "class_names": [],
                "ema_decays": list(cfg.train.ema_decays),
                "converted_from": {"file": ckpt.name, "kind": plan.kind, "epoch": plan.epoch,
                                   "official_model": plan.args.get("model"),
                                   "sections": sorted(plan.sections)}}
        C.save_config(cfg, tmp / "config.yaml")
        save_checkpoint(tmp, tensors, meta)
        (tmp / REPORT_NAME).write_text(json.dumps(_report(plan, ckpt), indent=1, default=str))
        if final.exists():
            final.rmdir()                    # an empty folder: checked above
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    from ..semantic.stream import STATS_NAME
    return ConversionResult(run=out, preset=plan.preset, kind=plan.kind, sections=sorted(plan.sections),
                            notes=plan.notes, encoder=out / ENCODER_DIR if encoder_dir else None,
                            stats=out / STATS_NAME if stats_path else None)


def _write_stats(stats: str | os.PathLike, cfg: C.Config, run: Path) -> Path:
    """RAE ``stat.pt`` or a ``vco stats`` file -> the run's statistics file, with the run's scale."""
    from ..semantic import load_stats, save_stats
    from ..semantic.stream import STATS_NAME
    if not cfg.model.co_denoising:
        raise ConversionError("--stats is for V-Co checkpoints; this is a pixel-only JiT checkpoint")
    try:
        st = load_stats(stats, scale=cfg.semantic.scale)
    except FileNotFoundError:
        raise ConversionError(f"--stats file not found: {stats}") from None
    except Exception as e:  # noqa: BLE001 - a damaged or foreign file
        raise ConversionError(f"--stats {stats} is not RAE's stat.pt or a `vco stats` file: {e}") from None
    n, c = (cfg.model.image_size // cfg.model.patch_size) ** 2, cfg.model.semantic_dim
    try:
        st.check_matches(n, c)
    except ValueError as e:
        raise ConversionError(f"--stats {stats}: {e}") from None
    path = run / STATS_NAME
    save_stats(st, path)
    return path

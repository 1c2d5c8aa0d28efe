"""Read the released official V-Co and JiT checkpoints (``.pth``) into vco run folders.

The official layout and every forward convention the weights assume are documented in
shared/spec/official-layout.md. In short:

* The file is a torch pickle ``{"model", "model_ema1", "model_ema2", "optimizer", "epoch", "args"}``;
  ``args`` is an ``argparse.Namespace``. It is read with ``torch.load(weights_only=True)`` and only
  ``argparse.Namespace`` (and plain paths) allow-listed, so no arbitrary object is ever unpickled.
* Network weights live under ``net.``. JiT's names are ours already (``blocks.{i}.attn.qkv`` ...);
  V-Co's dual-stream names get a fixed rename (``blocks.{i}.qkv_pixel`` -> ``blocks.{i}.pixel.attn.qkv``,
  ``x_embedder.dino_proj1`` [b, E, 1, 1] -> ``s_embedder.proj1`` [b, E], ...). Every official tensor
  is used exactly once; anything unknown is an error, not silently dropped.
* ``net.pos_embed`` is a frozen Parameter in the official code, so the EMAs moved it slightly
  (official-layout.md section 3.6). It is checked against the 2-D sin-cos embedding our model
  computes and then kept from each section, so that converted weights reproduce the official
  outputs exactly.
* V-Co checkpoints carry two frozen DINOv2-with-registers copies: ``net.x_embedder.dinov2.encoder.
  encoder.*`` (semantic stream, final LayerNorm affine removed) and ``drifting_dinov2.*`` (hybrid loss,
  affine kept). Our ``DINOv2Encoder`` uses one network for both views, so the run gets one HF folder
  (``semantic_encoder/``) with the transformer of the semantic copy and the final LayerNorm affine
  of the loss copy (the two copies hold the same pretrained weights; a difference is reported).
* ``img_mean``/``img_std`` (ImageNet statistics of the hybrid loss) are checked and dropped: our
  encoder applies the same normalisation itself.

Entry point: :func:`convert_official` (CLI: ``vco convert-official CKPT --out RUN``).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PosixPath, PurePosixPath
from typing import Any, Callable

import torch

from .. import config as C
from ..train.checkpoint import CheckpointError, save_checkpoint

# official top-level entry -> our checkpoint section
SECTIONS = {"model": "model", "model_ema1": "ema1", "model_ema2": "ema2"}
WEIGHT_CHOICES = ("all", "ema1", "ema2", "model")
NET = "net."
SEMANTIC_DINO = "net.x_embedder.dinov2.encoder.encoder."
LOSS_DINO = "drifting_dinov2."
BUFFERS = ("img_mean", "img_std")
ENCODER_DIR = "semantic_encoder"
REPORT_NAME = "conversion.json"

# Roles of an official tensor in the conversion (each tensor gets exactly one).
WEIGHT = "weight"                  # renamed (and reshaped) into our model
POS_EMBED = "pos_embed"            # checked against our sin-cos embedding, kept for exact parity
SEMANTIC_ENCODER = "semantic_encoder"  # DINOv2 transformer of the semantic stream
LOSS_ENCODER = "loss_encoder"      # DINOv2 loss copy: final LayerNorm affine used, rest compared
FROZEN_COPY = "frozen_copy"        # DINOv2 entries of the other sections (EMA-perturbed): dropped
BUFFER = "buffer"                  # img_mean / img_std: checked and dropped

# In-context start block of the official model families (model_vco.py: JiT_models).
_OFFICIAL_IN_CONTEXT_START = {"B": 4, "L": 8, "H": 10, "G": 10}


class ConversionError(CheckpointError):
    """An official checkpoint that cannot be converted; the message says why and what to do."""


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


# --------------------------------------------------------------------------- layout
def model_kind(sd: dict[str, torch.Tensor]) -> str:
    """'vco' (dual-stream, separate QKV) or 'jit' (pixel-only) from the key names."""
    if NET + "blocks.0.qkv_pixel.weight" in sd:
        return "vco"
    if NET + "blocks.0.attn.qkv.weight" in sd:
        return "jit"
    sample = sorted(k for k in sd if k.startswith(NET + "blocks.0."))[:4]
    raise ConversionError(
        "the checkpoint's network is neither V-Co's final recipe (net.blocks.0.qkv_pixel.*: "
        "--use_mmdit --separate_qkv) nor the pixel-only JiT (net.blocks.0.attn.qkv.*); found "
        f"{', '.join(sample) or 'no block 0'}. Other official variants are not supported")


_VCO_BLOCK = re.compile(r"^blocks\.(\d+)\.(norm1|norm2|qkv|q_norm|k_norm|proj|mlp|adaLN_modulation)_"
                        r"(pixel|dino)(\..+)$")
_VCO_BLOCK_SUB = {"norm1": "norm1", "norm2": "norm2", "qkv": "attn.qkv", "q_norm": "attn.q_norm",
                  "k_norm": "attn.k_norm", "proj": "attn.proj", "mlp": "mlp",
                  "adaLN_modulation": "adaLN_modulation"}
_VCO_HEAD = re.compile(r"^final_layer\.(pixels|dinov2)_(adaLN_modulation|norm_final|linear)(\..+)$")
_VCO_EMBED = {
    "x_embedder.pix_proj1.weight": "x_embedder.proj1.weight",
    "x_embedder.pix_proj2.weight": "x_embedder.proj2.weight",
    "x_embedder.pix_proj2.bias": "x_embedder.proj2.bias",
    "x_embedder.dino_proj1.weight": "s_embedder.proj1.weight",     # [b, E, 1, 1] -> [b, E]
    "x_embedder.dino_proj2.weight": "s_embedder.proj2.weight",     # [H, b, 1, 1] -> [H, b]
    "x_embedder.dino_proj2.bias": "s_embedder.proj2.bias",
}
_FLATTEN_1X1 = {"x_embedder.dino_proj1.weight", "x_embedder.dino_proj2.weight"}
_SHARED = re.compile(r"^(t_embedder\.|y_embedder\.|in_context_posemb$)")


def our_name(official: str, kind: str) -> str | None:
    """Our parameter name for an official network key (``net.`` stripped); None if unknown."""
    if kind == "jit":
        return official
    if official in _VCO_EMBED:
        return _VCO_EMBED[official]
    if _SHARED.match(official):
        return official
    m = _VCO_BLOCK.match(official)
    if m:
        i, part, stream, rest = m.groups()
        return f"blocks.{i}.{'pixel' if stream == 'pixel' else 'semantic'}.{_VCO_BLOCK_SUB[part]}{rest}"
    m = _VCO_HEAD.match(official)
    if m:
        head, part, rest = m.groups()
        return f"{'pixel_head' if head == 'pixels' else 'semantic_head'}.{part}{rest}"
    return None


def _transform(official: str) -> Callable[[torch.Tensor], torch.Tensor]:
    if official in _FLATTEN_1X1:            # 1x1 conv kernel -> linear weight
        return lambda t: t.reshape(t.shape[0], t.shape[1])
    return lambda t: t


def classify(key: str, kind: str) -> str:
    """The role of an official top-level key (before the per-section DINOv2 choice)."""
    if key.startswith(SEMANTIC_DINO):
        return SEMANTIC_ENCODER
    if key.startswith(LOSS_DINO):
        return LOSS_ENCODER
    if key in BUFFERS:
        return BUFFER
    if key == NET + "pos_embed":
        return POS_EMBED
    if key.startswith(NET) and our_name(key[len(NET):], kind) is not None:
        return WEIGHT
    raise ConversionError(
        f"unexpected tensor '{key}' in the checkpoint: this is not the final V-Co recipe or the "
        f"pixel-only JiT layout (official-layout.md section 1), so it cannot be converted faithfully")


# --------------------------------------------------------------------------- shapes -> config
@dataclass
class Shapes:
    """What the official tensors say about the architecture."""
    kind: str
    depth: int
    hidden: int
    heads: int
    patch: int
    in_channels: int
    bottleneck: int
    grid: int
    num_classes: int
    mlp_hidden: int
    in_context_len: int
    semantic_dim: int = 0
    semantic_bottleneck: int = 0


def _get(sd, key, source="checkpoint") -> torch.Tensor:
    if key not in sd:
        raise ConversionError(f"{source} lacks '{key}', which every official V-Co/JiT network "
                              f"has: not a supported checkpoint")
    return sd[key]


def infer_shapes(sd: dict[str, torch.Tensor]) -> Shapes:
    kind = model_kind(sd)
    blocks = {int(m.group(1)) for k in sd if (m := re.match(r"^net\.blocks\.(\d+)\.", k))}
    depth = len(blocks)
    if blocks != set(range(depth)):
        raise ConversionError(f"the checkpoint's blocks are not numbered 0..{depth - 1}: {sorted(blocks)[:8]}")
    q_norm = "blocks.0.q_norm_pixel.weight" if kind == "vco" else "blocks.0.attn.q_norm.weight"
    w12 = "blocks.0.mlp_pixel.w12.weight" if kind == "vco" else "blocks.0.mlp.w12.weight"
    proj1 = "x_embedder.pix_proj1.weight" if kind == "vco" else "x_embedder.proj1.weight"
    t2 = _get(sd, NET + "t_embedder.mlp.2.weight")
    hidden = t2.shape[0]
    head_dim = _get(sd, NET + q_norm).shape[0]
    if hidden % head_dim:
        raise ConversionError(f"q/k norm width {head_dim} does not divide the hidden width {hidden}")
    p1 = _get(sd, NET + proj1)
    n_pos = _get(sd, NET + "pos_embed").shape[1]
    grid = math.isqrt(n_pos)
    if grid * grid != n_pos:
        raise ConversionError(f"net.pos_embed has {n_pos} positions, not a square grid")
    ctx = sd.get(NET + "in_context_posemb")
    shapes = Shapes(kind=kind, depth=depth, hidden=hidden, heads=hidden // head_dim,
                    patch=p1.shape[-1], in_channels=p1.shape[1], bottleneck=p1.shape[0], grid=grid,
                    num_classes=_get(sd, NET + "y_embedder.embedding_table.weight").shape[0] - 1,
                    mlp_hidden=_get(sd, NET + w12).shape[0] // 2,
                    in_context_len=ctx.shape[1] if ctx is not None else 0)
    if kind == "vco":
        d1 = _get(sd, NET + "x_embedder.dino_proj1.weight")
        shapes.semantic_dim, shapes.semantic_bottleneck = d1.shape[1], d1.shape[0]
    return shapes


def mlp_ratio_for(hidden: int, mlp_hidden: int) -> float:
    """The ratio r with int(int(hidden * r) * 2 / 3) == mlp_hidden (SwiGLU width, as ours)."""
    for ratio in (4.0, 8.0, 12.0, 14.0):
        if int(int(hidden * ratio) * 2 / 3) == mlp_hidden:
            return ratio
    for wide in range(math.floor(mlp_hidden * 1.5), math.ceil(mlp_hidden * 1.5) + 3):
        ratio = wide / hidden
        if int(int(hidden * ratio) * 2 / 3) == mlp_hidden:
            return ratio
    raise ConversionError(f"SwiGLU width {mlp_hidden} at hidden {hidden} matches no mlp_ratio")


def _official_family(args: dict) -> tuple[str, int] | None:
    """('B', 16) from args.model = 'JiT-B/16-co' (or 'JiT_B/16-hidden_size_1088'), else None."""
    m = re.match(r"^JiT[-_]([BLHG])/(\d+)", str(args.get("model", "")))
    return (m.group(1), int(m.group(2))) if m else None


def _size_overrides(s: Shapes, in_context_start: int | None) -> dict[str, Any]:
    d = {"model.image_size": s.grid * s.patch, "model.patch_size": s.patch,
         "model.in_channels": s.in_channels, "model.hidden_size": s.hidden, "model.depth": s.depth,
         "model.num_heads": s.heads, "model.mlp_ratio": mlp_ratio_for(s.hidden, s.mlp_hidden),
         "model.bottleneck_dim": s.bottleneck, "model.in_context_len": s.in_context_len,
         "model.num_classes": s.num_classes}
    if in_context_start is not None:
        d["model.in_context_start"] = in_context_start
    if s.kind == "vco":
        d["model.semantic_dim"] = s.semantic_dim
        d["model.semantic_bottleneck"] = 0 if s.semantic_bottleneck == s.bottleneck else s.semantic_bottleneck
    return d


def _matches(cfg: C.Config, sizes: dict[str, Any]) -> bool:
    m = cfg.model
    return all(getattr(m, k.split(".", 1)[1]) == v for k, v in sizes.items())


def _args_overrides(kind: str, args: dict, preset_matched: bool) -> tuple[dict[str, Any], list[str]]:
    """Config values the official training arguments fix (only those present and well-typed)."""
    out: dict[str, Any] = {}
    notes: list[str] = []

    def num(name):
        v = args.get(name)
        return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    for arg, key in (("attn_dropout", "model.attn_dropout"), ("proj_dropout", "model.proj_dropout"),
                     ("P_mean", "diffusion.P_mean"), ("P_std", "diffusion.P_std"),
                     ("noise_scale", "diffusion.noise_scale"), ("t_eps", "diffusion.t_eps"),
                     ("interval_min", "sampler.interval_min"), ("interval_max", "sampler.interval_max"),
                     ("blr", "train.blr"), ("weight_decay", "train.weight_decay")):
        if num(arg) is not None:
            out[key] = float(num(arg))
    if isinstance(args.get("num_sampling_steps"), int) and args["num_sampling_steps"] > 0:
        out["sampler.steps"] = args["num_sampling_steps"]
    if args.get("sampling_method") in ("heun", "euler"):
        out["sampler.method"] = args["sampling_method"]
    if num("ema_decay1") is not None and num("ema_decay2") is not None:
        out["train.ema_decays"] = [float(args["ema_decay1"]), float(args["ema_decay2"])]
    if not preset_matched and num("cfg") is not None:
        out["sampler.cfg"] = float(args["cfg"])       # standard presets keep the paper's eval value
    joint = num("label_dinov2_drop_prob")
    if kind == "vco" and joint:
        out["diffusion.label_drop_prob"] = float(joint)
    elif num("label_drop_prob") is not None and (kind == "jit" or "label_dinov2_drop_prob" not in args):
        out["diffusion.label_drop_prob"] = float(args["label_drop_prob"])
    if kind == "vco":
        null = args.get("dinov2_null_type")
        if null == "attn_mask_symmetric":
            out["model.uncond"] = "joint_symmetric_mask"
        elif null not in (None, "attn_mask_asymmetric"):
            notes.append(f"the checkpoint was trained with dinov2_null_type={null!r}; the converted "
                         f"run keeps the final recipe's joint asymmetric-mask CFG")
        if num("dinov2_loss_coef") is not None:
            out["semantic.loss_weight"] = float(args["dinov2_loss_coef"])
        if args.get("drifting_v3_loss") is True:
            out["semantic.aux_loss"] = "hybrid"
            for arg, key in (("drifting_v3_loss_coef", "semantic.aux_weight"),
                             ("drifting_v3_gate_tau", "semantic.gate_tau"),
                             ("drifting_v3_repulsion_tau", "semantic.repulsion_tau")):
                if num(arg) is not None:
                    out[key] = float(args[arg])
        if args.get("use_dino_time_shift") is True and num("dino_time_shift_alpha") is not None:
            out["semantic.calibration"] = "time_shift"
            out["semantic.scale"] = float(args["dino_time_shift_alpha"])
        else:
            out["semantic.scale"] = float(num("match_pixel_norm") or 0.485)
    return out, notes


def _as_overrides(d: dict[str, Any]) -> list[str]:
    return [f"{k}={json.dumps(v)}" for k, v in d.items()]


def infer_config(sd: dict[str, torch.Tensor], args: dict | None = None,
                 overrides: list[str] | None = None) -> tuple[C.Config, Shapes, list[str]]:
    """The resolved vco config of an official network state dict: sizes from the tensor shapes,
    the in-context start block and training settings from the stored args (when present), the
    matching standard preset (vco-b16 ... jit-h16) where the sizes are standard.
    ``overrides`` (``key=value``) win over everything."""
    args = args or {}
    notes: list[str] = []
    s = infer_shapes(sd)
    family = _official_family(args)
    user = C.parse_overrides(overrides)
    start = user.get("model", {}).get("in_context_start")
    sizes = _size_overrides(s, None)
    prefix = "vco" if s.kind == "vco" else "jit"
    standard = [p for p in (f"{prefix}-b16", f"{prefix}-l16", f"{prefix}-h16")
                if _matches(C.build_config(p), sizes)]
    preset = standard[0] if standard else f"{prefix}-b16"
    if start is None and family is not None:
        start = _OFFICIAL_IN_CONTEXT_START[family[0]]
        if family[1] != s.patch:
            notes.append(f"args.model={args['model']!r} but the weights have patch size {s.patch}")
    if start is None and standard:
        start = C.build_config(preset).model.in_context_start
    if start is None and s.in_context_len > 0:
        raise ConversionError(
            f"cannot infer the in-context start block of this non-standard model (depth {s.depth}, "
            f"hidden {s.hidden}; the checkpoint stores no official model name): pass "
            f"--set model.in_context_start=K")
    if not standard:
        notes.append(f"non-standard sizes (depth {s.depth}, hidden {s.hidden}): the config is {preset} "
                     f"with the checkpoint's sizes")
    if standard:
        std = C.build_config(preset).model
        if start != std.in_context_start:
            notes.append(f"in-context start {start} differs from {preset}'s {std.in_context_start}")
    sizes = _size_overrides(s, start if start is not None else 0)
    img = args.get("img_size")
    if isinstance(img, int) and img != sizes["model.image_size"]:
        raise ConversionError(f"args.img_size={img} but net.pos_embed is a {s.grid}x{s.grid} grid of "
                              f"{s.patch}px patches ({sizes['model.image_size']}px): unsupported")
    from_args, arg_notes = _args_overrides(s.kind, args, bool(standard))
    notes += arg_notes
    cfg = C.build_config(preset, overrides=_as_overrides({**sizes, **from_args}) + list(overrides or []))
    return cfg, s, notes


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
    """None if equal to our sin-cos embedding, a note if within the EMA drift of section 3.6;
    raises if it is another embedding altogether."""
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


def _norm_dino_key(k: str) -> str:
    from ..semantic.dinov2 import _V4_TO_V5
    for old, new in _V4_TO_V5.items():
        k = k.replace(old, new)
    return k


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
    dino_sec, dinov2 = _pick_dinov2(sections, usage, notes)
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
        notes += _compare_dino_copies(dinov2)
    return Plan(kind=kind, cfg=cfg, preset=cfg.preset, sections=ours_by_section, names=names,
                usage=usage, dinov2=dinov2, dinov2_section=dino_sec, args=args,
                epoch=obj.get("epoch") if isinstance(obj.get("epoch"), (int, float)) else None,
                notes=notes)


def _pick_dinov2(sections: dict, usage: dict, notes: list[str]):
    """(section, {semantic, loss} HF state dicts) of the frozen DINOv2 copies: exact in `model`
    (the EMAs perturb them, section 3.6); the copies in the other sections become FROZEN_COPY."""
    roles = (SEMANTIC_ENCODER, LOSS_ENCODER)
    dino_sec = next((s for s in ("model", "model_ema1", "model_ema2") if s in sections
                     and any(r in roles for r in usage[s].values())), None)
    if dino_sec is None:
        return None, {}
    sd = sections[dino_sec]
    dinov2 = {"semantic": {k[len(SEMANTIC_DINO):]: v for k, v in sd.items() if k.startswith(SEMANTIC_DINO)},
              "loss": {k[len(LOSS_DINO):]: v for k, v in sd.items() if k.startswith(LOSS_DINO)}}
    if dino_sec != "model":
        notes.append(f"the DINOv2 encoders come from {dino_sec} (no 'model' entry): their EMA copies "
                     f"may differ from the pretrained weights by ~1e-4 relative")
    for sec in sections:
        if sec != dino_sec:
            usage[sec] = {k: FROZEN_COPY if r in roles else r for k, r in usage[sec].items()}
    return dino_sec, dinov2


def _map_section(sd: dict, usage: dict, kind: str, keep_pos: bool, shapes: Shapes, sec: str,
                 names: dict, notes: list[str]) -> dict[str, torch.Tensor]:
    """Our tensors of one official section; records our name -> official key in ``names``."""
    mapped: dict[str, torch.Tensor] = {}
    for key, role in usage.items():
        if role == WEIGHT:
            name = our_name(key[len(NET):], kind)
            if name in mapped:
                raise ConversionError(f"two official tensors map to '{name}'")
            mapped[name] = _transform(key[len(NET):])(sd[key])
            names[name] = key
        elif role == POS_EMBED:
            note = _pos_embed_check(sd[key], shapes.hidden, shapes.grid, sec)
            if note:
                notes.append(note)
            if keep_pos:                      # our buffer takes the checkpoint's value (section 3.6)
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


def _compare_dino_copies(dinov2: dict) -> list[str]:
    notes = []
    sem = {_norm_dino_key(k): v for k, v in dinov2["semantic"].items()}
    loss = {_norm_dino_key(k): v for k, v in dinov2["loss"].items()}
    if not sem or not loss:
        notes.append(f"only the {'loss' if not sem else 'semantic'} DINOv2 copy is in the checkpoint")
        return notes
    only_sem = sorted(set(sem) - set(loss))
    only_loss = sorted(set(loss) - set(sem) - {"layernorm.weight", "layernorm.bias"})
    if only_sem or only_loss:
        raise ConversionError(f"the two DINOv2 copies have different layouts (only in the semantic copy: "
                              f"{only_sem[:3]}, only in the loss copy: {only_loss[:3]})")
    if any(v.is_meta for v in sem.values()):
        return notes
    differ = [(k, (sem[k].float() - loss[k].float()).abs().max().item()) for k in sem
              if not torch.equal(sem[k], loss[k])]
    if differ:
        worst = max(differ, key=lambda kv: kv[1])
        notes.append(f"WARNING: the semantic and loss DINOv2 copies differ in {len(differ)} tensors "
                     f"(largest |diff| {worst[1]:.3g} in {worst[0]}); the converted encoder uses the "
                     f"semantic copy's transformer for both views, so hybrid-loss features will differ "
                     f"slightly from the official run")
    return notes


# --------------------------------------------------------------------------- DINOv2
def dinov2_config_for(sd: dict[str, torch.Tensor]):
    """`Dinov2WithRegistersConfig` of a DINOv2 state dict (HF keys, prefix stripped)."""
    from ..semantic.dinov2 import _transformers, dinov2_base_config
    try:
        hidden = sd["embeddings.cls_token"].shape[-1]
        patch = sd["embeddings.patch_embeddings.projection.weight"].shape[-1]
        n_pos = sd["embeddings.position_embeddings"].shape[1] - 1
        fc1 = sd["encoder.layer.0.mlp.fc1.weight"].shape[0]
    except KeyError as e:
        raise ConversionError(f"the DINOv2 copy lacks {e}: not a DINOv2-with-registers state dict") from None
    layers = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"^encoder\.layer\.(\d+)\.", k)))
    regs = sd["embeddings.register_tokens"].shape[1] if "embeddings.register_tokens" in sd else 0
    side = math.isqrt(n_pos)
    if (hidden, layers, regs, patch, side * patch, fc1) == (768, 12, 4, 14, 518, 3072):
        return dinov2_base_config()
    if hidden % 64:
        raise ConversionError(f"DINOv2 width {hidden} is not a multiple of the head width 64")
    return _transformers().Dinov2WithRegistersConfig(
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=hidden // 64,
        mlp_ratio=fc1 // hidden, patch_size=patch, image_size=side * patch,
        num_register_tokens=regs, layer_norm_eps=1e-6)


def build_semantic_encoder(dinov2: dict[str, dict[str, torch.Tensor]]):
    """One `Dinov2WithRegistersModel`: the semantic copy's transformer (the loss copy's if there
    is no semantic copy) with the loss copy's final LayerNorm affine."""
    from ..semantic.dinov2 import _transformers, dinov2_from_state_dict
    try:
        _transformers()
    except ImportError as e:
        raise ConversionError(f"this V-Co checkpoint carries its DINOv2 encoders, and {e}") from None
    sem, loss = dinov2.get("semantic") or {}, dinov2.get("loss") or {}
    base = {k: v for k, v in (sem or loss).items() if k not in ("layernorm.weight", "layernorm.bias")}
    for k in ("layernorm.weight", "layernorm.bias"):
        if k in loss:
            base[k] = loss[k]
    try:
        return dinov2_from_state_dict(base, dinov2_config_for(base))
    except KeyError as e:
        raise ConversionError(f"the DINOv2 copy does not load into Dinov2WithRegistersModel: {e}") from None


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
            _save_encoder(build_semantic_encoder(plan.dinov2), tmp / ENCODER_DIR)
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


def _save_encoder(model, folder: Path) -> None:
    """save_pretrained (config.json + model.safetensors) without transformers' progress bar."""
    from transformers.utils import logging as hf_logging
    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(str(folder))
    finally:
        if shown:
            hf_logging.enable_progress_bar()


def _write_stats(stats: str | os.PathLike, cfg: C.Config, run: Path) -> Path:
    """RAE ``stat.pt`` or a ``vco stats`` file -> the run's statistics file, with the run's scale."""
    from ..semantic import load_stats, save_stats
    from ..semantic.stream import STATS_NAME
    if cfg.model.fusion == "none":
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

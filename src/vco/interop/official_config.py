"""The vco Config of an official V-Co / JiT network: sizes from its tensor shapes, the rest from the
training arguments stored in the checkpoint, and the matching standard preset (vco-b16 ... jit-h16)."""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

import torch

from .. import config as C
from .errors import ConversionError
from .official_keys import NET, model_kind

# In-context start block of the official model families (model_vco.py: JiT_models).
_OFFICIAL_IN_CONTEXT_START = {"B": 4, "L": 8, "H": 10, "G": 10}


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


def _number(args: dict, name: str) -> int | float | None:
    """args[name] if it is an int or float (not a bool), else None."""
    v = args.get(name)
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _args_overrides(kind: str, args: dict, preset_matched: bool) -> tuple[dict[str, Any], list[str]]:
    """Config values the official training arguments fix (only those present and well-typed)."""
    out: dict[str, Any] = {}
    for arg, key in (("attn_dropout", "model.attn_dropout"), ("proj_dropout", "model.proj_dropout"),
                     ("P_mean", "diffusion.P_mean"), ("P_std", "diffusion.P_std"),
                     ("noise_scale", "diffusion.noise_scale"), ("t_eps", "diffusion.t_eps"),
                     ("interval_min", "sampler.interval_min"), ("interval_max", "sampler.interval_max"),
                     ("blr", "train.blr"), ("weight_decay", "train.weight_decay")):
        if _number(args, arg) is not None:
            out[key] = float(_number(args, arg))
    if isinstance(args.get("num_sampling_steps"), int) and args["num_sampling_steps"] > 0:
        out["sampler.steps"] = args["num_sampling_steps"]
    if args.get("sampling_method") in ("heun", "euler"):
        out["sampler.method"] = args["sampling_method"]
    if _number(args, "ema_decay1") is not None and _number(args, "ema_decay2") is not None:
        out["train.ema_decays"] = [float(args["ema_decay1"]), float(args["ema_decay2"])]
    if not preset_matched and _number(args, "cfg") is not None:
        out["sampler.cfg"] = float(args["cfg"])       # standard presets keep the paper's eval value
    joint = _number(args, "label_dinov2_drop_prob")
    if kind == "vco" and joint:
        out["diffusion.label_drop_prob"] = float(joint)
    elif (_number(args, "label_drop_prob") is not None
          and (kind == "jit" or "label_dinov2_drop_prob" not in args)):
        out["diffusion.label_drop_prob"] = float(args["label_drop_prob"])
    if kind != "vco":
        return out, []
    semantic, notes = _vco_args_overrides(args)
    return {**out, **semantic}, notes


def _vco_args_overrides(args: dict) -> tuple[dict[str, Any], list[str]]:
    """The semantic-stream settings of a V-Co checkpoint's training arguments."""
    out: dict[str, Any] = {}
    notes: list[str] = []
    null = args.get("dinov2_null_type")
    if null == "attn_mask_symmetric":
        out["model.uncond"] = "joint_symmetric_mask"
    elif null not in (None, "attn_mask_asymmetric"):
        notes.append(f"the checkpoint was trained with dinov2_null_type={null!r}; the converted "
                     f"run keeps the final recipe's joint asymmetric-mask CFG")
    if _number(args, "dinov2_loss_coef") is not None:
        out["semantic.loss_weight"] = float(args["dinov2_loss_coef"])
    if args.get("drifting_v3_loss") is True:
        out["semantic.aux_loss"] = "hybrid"
        for arg, key in (("drifting_v3_loss_coef", "semantic.aux_loss.weight"),
                         ("drifting_v3_gate_tau", "semantic.aux_loss.gate_tau"),
                         ("drifting_v3_repulsion_tau", "semantic.aux_loss.repulsion_tau")):
            if _number(args, arg) is not None:
                out[key] = float(args[arg])
    if args.get("use_dino_time_shift") is True and _number(args, "dino_time_shift_alpha") is not None:
        out["semantic.calibration"] = "time_shift"
        out["semantic.calibration.alpha"] = float(args["dino_time_shift_alpha"])
        out["semantic.scale"] = float(args["dino_time_shift_alpha"])
    else:
        out["semantic.scale"] = float(_number(args, "match_pixel_norm") or C.PAPER_DINOV2_B_SCALE)
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

"""The two frozen DINOv2-with-registers copies of a V-Co checkpoint -> one encoder folder.

``net.x_embedder.dinov2.encoder.encoder.*`` is the semantic stream's copy (final LayerNorm affine
removed), ``drifting_dinov2.*`` the hybrid loss's copy (affine kept). Our ``DINOv2Encoder`` uses one
network for both views, so the run gets one HF folder with the transformer of the semantic copy and
the final LayerNorm affine of the loss copy (the two copies hold the same pretrained weights; a
difference is reported). Only the ``model`` section holds them exactly: the official EMAs also
update these frozen tensors, so the EMA sections' copies are dropped.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import torch

from .errors import ConversionError
from .official_keys import FROZEN_COPY, LOSS_DINO, LOSS_ENCODER, SEMANTIC_DINO, SEMANTIC_ENCODER

LAYERNORM = ("layernorm.weight", "layernorm.bias")     # the final LayerNorm affine


def pick_dinov2(sections: dict, usage: dict, notes: list[str]):
    """(section, {semantic, loss} HF state dicts) of the frozen DINOv2 copies: exact in `model`
    (the EMAs perturb them); the copies in the other sections become FROZEN_COPY."""
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


def _norm_dino_key(k: str) -> str:
    from ..semantic.dinov2 import V4_TO_V5
    for old, new in V4_TO_V5.items():
        k = k.replace(old, new)
    return k


def compare_dino_copies(dinov2: dict) -> list[str]:
    """Notes on the two copies (one missing, or differing values); raises if their layouts differ."""
    notes = []
    sem = {_norm_dino_key(k): v for k, v in dinov2["semantic"].items()}
    loss = {_norm_dino_key(k): v for k, v in dinov2["loss"].items()}
    if not sem or not loss:
        notes.append(f"only the {'loss' if not sem else 'semantic'} DINOv2 copy is in the checkpoint")
        return notes
    only_sem = sorted(set(sem) - set(loss))
    only_loss = sorted(set(loss) - set(sem) - set(LAYERNORM))
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


def dinov2_config_for(sd: dict[str, torch.Tensor]):
    """`Dinov2WithRegistersConfig` of a DINOv2 state dict (HF keys, prefix stripped)."""
    from ..semantic.dinov2 import dinov2_base_config, import_transformers
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
    return import_transformers().Dinov2WithRegistersConfig(
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=hidden // 64,
        mlp_ratio=fc1 // hidden, patch_size=patch, image_size=side * patch,
        num_register_tokens=regs, layer_norm_eps=1e-6)


def build_semantic_encoder(dinov2: dict[str, dict[str, torch.Tensor]]):
    """One `Dinov2WithRegistersModel`: the semantic copy's transformer (the loss copy's if there
    is no semantic copy) with the loss copy's final LayerNorm affine."""
    from ..semantic.dinov2 import dinov2_from_state_dict, import_transformers
    try:
        import_transformers()
    except ImportError as e:
        raise ConversionError(f"this V-Co checkpoint carries its DINOv2 encoders, and {e}") from None
    sem, loss = dinov2.get("semantic") or {}, dinov2.get("loss") or {}
    base = {k: v for k, v in (sem or loss).items() if k not in LAYERNORM}
    for k in LAYERNORM:
        if k in loss:
            base[k] = loss[k]
    try:
        return dinov2_from_state_dict(base, dinov2_config_for(base))
    except KeyError as e:
        raise ConversionError(f"the DINOv2 copy does not load into Dinov2WithRegistersModel: {e}") from None


def save_encoder(model, folder: Path) -> None:
    """save_pretrained (config.json + model.safetensors) without transformers' progress bar."""
    from transformers.utils import logging as hf_logging
    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(str(folder))
    finally:
        if shown:
            hf_logging.enable_progress_bar()

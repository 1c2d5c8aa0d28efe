"""Official V-Co / JiT tensor names -> ours, and the role of every official tensor.

Network weights live under ``net.``. JiT's names are ours already (``blocks.{i}.attn.qkv`` ...);
V-Co's dual-stream names get a fixed rename (``blocks.{i}.qkv_pixel`` -> ``blocks.{i}.pixel.attn.qkv``,
``x_embedder.dino_proj1`` [b, E, 1, 1] -> ``s_embedder.proj1`` [b, E], ...). Every official tensor
gets exactly one role; anything unknown is an error, not silently dropped.
"""
from __future__ import annotations

import re
from typing import Callable

import torch

from .errors import ConversionError

NET = "net."
SEMANTIC_DINO = "net.x_embedder.dinov2.encoder.encoder."
LOSS_DINO = "drifting_dinov2."
BUFFERS = ("img_mean", "img_std")

# Roles of an official tensor in the conversion (each tensor gets exactly one).
WEIGHT = "weight"                  # renamed (and reshaped) into our model
POS_EMBED = "pos_embed"            # checked against our sin-cos embedding, kept for exact parity
SEMANTIC_ENCODER = "semantic_encoder"  # DINOv2 transformer of the semantic stream
LOSS_ENCODER = "loss_encoder"      # DINOv2 loss copy: final LayerNorm affine used, rest compared
FROZEN_COPY = "frozen_copy"        # DINOv2 entries of the other sections (EMA-perturbed): dropped
BUFFER = "buffer"                  # img_mean / img_std: checked and dropped


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


def transform_for(official: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """How an official network tensor (``net.`` stripped) is reshaped into ours."""
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
        f"pixel-only JiT layout, so it cannot be converted faithfully")

"""Named presets: plain data over the config dataclasses' defaults (vco.config builds from them).

CPU scale (jit-tiny, vco-tiny, jit-tiny-wide) for Fashion-MNIST; ImageNet sizes B/L/H of JiT and
their V-Co counterparts.
"""
from __future__ import annotations

import copy
from typing import Any

from .components import COMPONENTS, component_spec

# V-Co's RMS factor for DINOv2-B-reg features with RAE's ImageNet statistics ("empirically
# calculated" in the official code): the pixels' RMS over the normalised features' RMS.
PAPER_DINOV2_B_SCALE = 0.485

# Presets differ only in numbers. Sizes of B/L/H follow JiT (Li & He 2025, Table 9).
_IMAGENET = dict(image_size=256, patch_size=16, num_classes=1000, in_context_len=32)
PRESETS: dict[str, dict[str, Any]] = {
    # CPU scale, sized so that a 2-core CPU sees several Fashion-MNIST epochs in half an hour:
    # the native 28 px on a 7 x 7 grid of 4 px patches (49 tokens), width 192; a larger lr and a
    # much faster EMA than the ImageNet recipe (0.9999 would still hold mostly the initial weights
    # after a few thousand steps; EMA-1 averages over the last ~200 steps, EMA-2 over ~1000).
    "jit-tiny": dict(model=dict(image_size=28, patch_size=4, hidden_size=192, depth=6, num_heads=4,
                                bottleneck_dim=32, in_context_len=8, in_context_start=2),
                     train=dict(batch_size=64, steps=1800, blr=4e-3, warmup_steps=100,
                                ema_decays=(0.995, 0.999), ckpt_every=200),
                     sampler=dict(cfg=2.0, steps=25)),
    "jit-b16": dict(model=dict(_IMAGENET, hidden_size=768, depth=12, num_heads=12,
                               bottleneck_dim=128, in_context_start=4),
                    data=dict(name="imagenet"), train=dict(batch_size=128, steps=250_000,
                                                           warmup_steps=6_255, ckpt_every=5_000),
                    sampler=dict(cfg=2.9)),
    "jit-l16": dict(model=dict(_IMAGENET, hidden_size=1024, depth=24, num_heads=16,
                               bottleneck_dim=128, in_context_start=8),
                    data=dict(name="imagenet"), train=dict(batch_size=128, steps=250_000,
                                                           warmup_steps=6_255, ckpt_every=5_000),
                    sampler=dict(cfg=2.4)),
    "jit-h16": dict(model=dict(_IMAGENET, hidden_size=1280, depth=32, num_heads=16,
                               bottleneck_dim=256, in_context_start=10,
                               attn_dropout=0.2, proj_dropout=0.2),
                    data=dict(name="imagenet"), train=dict(batch_size=128, steps=250_000,
                                                           warmup_steps=6_255, ckpt_every=5_000),
                    sampler=dict(cfg=2.2)),
}


def merge(base: dict, update: dict, path: str = "") -> dict:
    """``update`` over ``base``, recursively. A component (COMPONENTS) named anew by ``update``
    starts from its own defaults: the options of the component it replaces do not carry over."""
    out = copy.deepcopy(base)
    for k, v in update.items():
        key = f"{path}{k}"
        if key in COMPONENTS:
            v, current = component_spec(v, key), component_spec(out.get(k), key)
            if v.get("name", current.get("name")) != current.get("name"):
                out[k] = copy.deepcopy(v)
                continue
            out[k] = current
        out[k] = merge(out[k], v, f"{key}.") if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# V-Co presets: the JiT sizes with a second stream (V-Co Table 5 / official scripts).
_DINOV2 = dict(encoder="dinov2", encoder_path="facebook/dinov2-with-registers-base",
               scale=PAPER_DINOV2_B_SCALE)
for _size, _cfg_scale in (("b16", 1.8), ("l16", 1.8), ("h16", 1.5)):
    PRESETS[f"vco-{_size}"] = merge(PRESETS[f"jit-{_size}"], dict(
        model=dict(fusion="dual_stream", stream_blocks=2, semantic_dim=768, attn_dropout=0.0, proj_dropout=0.0),
        semantic=_DINOV2, data=dict(classes_per_batch=1), sampler=dict(cfg=_cfg_scale)))
# The offline MobileNetV2's features[:7] (32 channels, stride 8) give the 7 x 7 semantic grid
# from a 56 px input: a quarter of the pixels (and of the encoder's cost) of features[:14] at 112 px.
PRESETS["vco-tiny"] = merge(PRESETS["jit-tiny"], dict(
    model=dict(fusion="dual_stream", semantic_dim=32), data=dict(classes_per_batch=8),
    semantic=dict(encoder_layer=7, stats_images=1024)))


# JiT widened to V-Co's parameter count (Table 1's "widened" row): B at hidden 1088, 16 heads
# (261,950,744 params vs V-Co-B's 260,666,112); tiny at hidden 272, 4 heads (8,341,100 vs 8,275,344).
PRESETS["jit-b16-wide"] = merge(PRESETS["jit-b16"], dict(model=dict(hidden_size=1088, num_heads=16)))
PRESETS["jit-tiny-wide"] = merge(PRESETS["jit-tiny"], dict(model=dict(hidden_size=272, num_heads=4)))


def preset_names() -> list[str]:
    return sorted(PRESETS)

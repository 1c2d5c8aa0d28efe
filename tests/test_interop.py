"""Loading the released official V-Co / JiT checkpoints (vco.interop.official).

Official-layout state dicts are generated from the shape formulas of the released code's layout
(docs/official-checkpoints.md; checked against the B/16 key list in tests/data), filled with random
values, converted, and compared with an independent re-implementation of the official forward
(ref_vco_forward below), on the raw official key names.
"""
from __future__ import annotations

import argparse
import math
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vco.cli import main
from vco.config import build_config
from vco.interop import ConversionError, convert_official, infer_config, plan_conversion
from vco.interop import official as O
from vco.interop.official_keys import (BUFFER, FROZEN_COPY, LOSS_DINO, LOSS_ENCODER, POS_EMBED, SEMANTIC_DINO,
                                       SEMANTIC_ENCODER, WEIGHT)
from vco.models import build_model
from vco.nn.layers import unpatchify
from vco.semantic.dinov2 import V4_TO_V5

# The key list of the released B/16 checkpoint (names and shapes)
SPEC = Path(__file__).resolve().parent / "data" / "official-vco-b16-keys.tsv"
transformers = pytest.importorskip("transformers")

# The tiny configuration: D blocks, hidden H, NH heads (head dim 32), bottleneck B, L in-context
# tokens before block S, patch P on a G x G grid (16 px), K classes, DINOv2 width E (1 head of 64).
D, H, NH, B, L, S, P, G, K, E = 3, 64, 2, 8, 4, 1, 4, 4, 5, 64
TINY_SET = ["--set", f"model.in_context_start={S}"]


# ----------------------------------------------------------------------------- layouts
def official_net_shapes(kind, depth, hidden, heads, bottleneck, ctx, patch, classes, dino, grid,
                        channels=3, ratio=4.0):
    """Official ``net.*`` names and shapes from the released code's shape formulas."""
    f, dh, n = int(int(hidden * ratio) * 2 / 3), hidden // heads, grid * grid
    s = {"pos_embed": (1, n, hidden), "in_context_posemb": (1, ctx, hidden),
         "t_embedder.mlp.0.weight": (hidden, 256), "t_embedder.mlp.0.bias": (hidden,),
         "t_embedder.mlp.2.weight": (hidden, hidden), "t_embedder.mlp.2.bias": (hidden,),
         "y_embedder.embedding_table.weight": (classes + 1, hidden)}

    def block(prefix, suffix):
        s.update({f"{prefix}norm1{suffix}.weight": (hidden,), f"{prefix}norm2{suffix}.weight": (hidden,)})
        for name, out, inp in (("qkv", 3 * hidden, hidden), ("proj", hidden, hidden),
                               ("mlp{}.w12", 2 * f, hidden), ("mlp{}.w3", hidden, f),
                               ("adaLN_modulation{}.1", 6 * hidden, hidden)):
            key = name.format(suffix) if "{}" in name else (name + suffix if suffix else "attn." + name)
            s[f"{prefix}{key}.weight"], s[f"{prefix}{key}.bias"] = (out, inp), (out,)

    if kind == "vco":
        s.update({"x_embedder.pix_proj1.weight": (bottleneck, channels, patch, patch),
                  "x_embedder.pix_proj2.weight": (hidden, bottleneck, 1, 1), "x_embedder.pix_proj2.bias": (hidden,),
                  "x_embedder.dino_proj1.weight": (bottleneck, dino, 1, 1),
                  "x_embedder.dino_proj2.weight": (hidden, bottleneck, 1, 1), "x_embedder.dino_proj2.bias": (hidden,)})
        for i in range(depth):
            for st in ("pixel", "dino"):
                block(f"blocks.{i}.", f"_{st}")
                s[f"blocks.{i}.q_norm_{st}.weight"] = s[f"blocks.{i}.k_norm_{st}.weight"] = (dh,)
        for head, out in (("pixels", channels * patch * patch), ("dinov2", dino)):
            s.update({f"final_layer.{head}_adaLN_modulation.1.weight": (2 * hidden, hidden),
                      f"final_layer.{head}_adaLN_modulation.1.bias": (2 * hidden,),
                      f"final_layer.{head}_norm_final.weight": (hidden,),
                      f"final_layer.{head}_linear.weight": (out, hidden), f"final_layer.{head}_linear.bias": (out,)})
    else:
        s.update({"x_embedder.proj1.weight": (bottleneck, channels, patch, patch),
                  "x_embedder.proj2.weight": (hidden, bottleneck, 1, 1), "x_embedder.proj2.bias": (hidden,)})
        for i in range(depth):
            block(f"blocks.{i}.", "")
            s[f"blocks.{i}.attn.q_norm.weight"] = s[f"blocks.{i}.attn.k_norm.weight"] = (dh,)
        s.update({"final_layer.adaLN_modulation.1.weight": (2 * hidden, hidden),
                  "final_layer.adaLN_modulation.1.bias": (2 * hidden,), "final_layer.norm_final.weight": (hidden,),
                  "final_layer.linear.weight": (channels * patch * patch, hidden),
                  "final_layer.linear.bias": (channels * patch * patch,)})
    return {"net." + k: v for k, v in s.items()}


def dinov2_shapes(width=768, layers=12, regs=4, patch=14, side=37, mlp=4, layernorm=False, v5=True):
    s = {"embeddings.cls_token": (1, 1, width), "embeddings.mask_token": (1, width),
         "embeddings.position_embeddings": (1, 1 + side * side, width),
         "embeddings.register_tokens": (1, regs, width),
         "embeddings.patch_embeddings.projection.weight": (width, 3, patch, patch),
         "embeddings.patch_embeddings.projection.bias": (width,)}
    attn = (["attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj"] if v5 else
            ["attention.attention.query", "attention.attention.key", "attention.attention.value",
             "attention.output.dense"])
    for i in range(layers):
        p = f"encoder.layer.{i}."
        for n in ("norm1", "norm2"):
            s[p + n + ".weight"] = s[p + n + ".bias"] = (width,)
        for n in attn:
            s[p + n + ".weight"], s[p + n + ".bias"] = (width, width), (width,)
        s[p + "layer_scale1.lambda1"] = s[p + "layer_scale2.lambda1"] = (width,)
        s[p + "mlp.fc1.weight"], s[p + "mlp.fc1.bias"] = (mlp * width, width), (mlp * width,)
        s[p + "mlp.fc2.weight"], s[p + "mlp.fc2.bias"] = (width, mlp * width), (width,)
    if layernorm:
        s["layernorm.weight"] = s["layernorm.bias"] = (width,)
    return s


def official_b16_shapes(kind="vco"):
    s = official_net_shapes(kind, 12, 768, 12, 128, 32, 16, 1000, 768, 16)
    if kind == "vco":
        s.update({"img_mean": (1, 3, 1, 1), "img_std": (1, 3, 1, 1)})
        s.update({SEMANTIC_DINO + k: v for k, v in dinov2_shapes().items()})
        s.update({LOSS_DINO + k: v for k, v in dinov2_shapes(layernorm=True).items()})
    return s


def meta_official(shapes):
    return {k: torch.empty(v, device="meta") for k, v in shapes.items()}


# ----------------------------------------------------------------------------- reference (spec)
def ref_sincos(hidden, grid):
    """Section 2.3: first half encodes the column, each half [sin, cos], float64 -> float32."""
    q = hidden // 4
    omega = torch.tensor([10000.0 ** (-k / q) for k in range(q)], dtype=torch.float64)
    rows = []
    for i in range(grid):
        for j in range(grid):
            col, row = j * omega, i * omega
            rows.append(torch.cat([col.sin(), col.cos(), row.sin(), row.cos()]))
    return torch.stack(rows).float().unsqueeze(0)


def ref_rope(dh, grid, prefix):
    """Section 2.4 as complex rotations exp(i phi) per interleaved pair: pairs [0, dh/4) rotate
    with the row, the rest with the column; in-context rows are the identity."""
    f = [10000.0 ** (-2 * k / (dh / 2)) for k in range(dh // 4)]
    phis = [[0.0] * (dh // 2)] * prefix
    for i in range(grid):
        for j in range(grid):
            phis.append([i * fk for fk in f] + [j * fk for fk in f])
    return torch.polar(torch.ones(len(phis), dh // 2), torch.tensor(phis, dtype=torch.float32))


def ref_rotate(x, rot):
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2).contiguous())
    return torch.view_as_real(xc * rot).flatten(-2)


def ref_rms(x, w):
    return w * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


def ref_lin(sd, key, x):
    return x @ sd[key + ".weight"].T + sd[key + ".bias"]


def ref_patchify(x, p):
    """(B, C, G p, G p) -> (B, G^2, C p p): token i G + j, vector in (c, kh, kw) order."""
    b, c, h, w = x.shape
    g = h // p
    out = torch.empty(b, g * g, c * p * p)
    for i in range(g):
        for j in range(g):
            out[:, i * g + j] = x[:, :, i * p:(i + 1) * p, j * p:(j + 1) * p].reshape(b, -1)
    return out


def ref_unpatchify(v, p, c):
    """(B, G^2, p p C) in (kh, kw, c) order -> image[c, i p + kh, j p + kw]."""
    b, n, _ = v.shape
    g = math.isqrt(n)
    img = torch.empty(b, c, g * p, g * p)
    for i in range(g):
        for j in range(g):
            for kh in range(p):
                for kw in range(p):
                    for ch in range(c):
                        img[:, ch, i * p + kh, j * p + kw] = v[:, i * g + j, (kh * p + kw) * c + ch]
    return img


def ref_swiglu(sd, key, x):
    hidden = ref_lin(sd, key + ".w12", x)
    a, g = hidden[..., :hidden.shape[-1] // 2], hidden[..., hidden.shape[-1] // 2:]   # a first
    return ref_lin(sd, key + ".w3", F.silu(a) * g)


def ref_cond(sd, t, y):
    """Section 2.1: raw t, cos first, c = t_emb + y_emb."""
    omega = torch.exp(-math.log(10000.0) * torch.arange(128, dtype=torch.float32) / 128)
    freq = torch.cat([torch.cos(t[:, None] * omega), torch.sin(t[:, None] * omega)], -1)
    t_emb = ref_lin(sd, "net.t_embedder.mlp.2", F.silu(ref_lin(sd, "net.t_embedder.mlp.0", freq)))
    y_emb = sd["net.y_embedder.embedding_table.weight"][y]
    return t_emb + y_emb, y_emb


def ref_vco_forward(sd, x, t, y, zs, flags=None, heads=NH, ctx=L, start=S, patch=P):
    """The official dual-stream forward, written from the released model code, on the raw official keys.
    Returns (pixel x-prediction, DINO x-prediction, per-block [pixel, dino] states)."""
    n_ = lambda k: sd["net." + k]
    depth = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("net.blocks."))
    hidden = n_("t_embedder.mlp.2.weight").shape[0]
    dh, bsz = hidden // heads, x.shape[0]
    grid = x.shape[-1] // patch
    c, y_emb = ref_cond(sd, t, y)
    b_ = n_("x_embedder.pix_proj1.weight").shape[0]
    pix = ref_patchify(x, patch) @ n_("x_embedder.pix_proj1.weight").reshape(b_, -1).T
    pix = pix @ n_("x_embedder.pix_proj2.weight").reshape(hidden, b_).T + n_("x_embedder.pix_proj2.bias")
    dino = zs @ n_("x_embedder.dino_proj1.weight").reshape(b_, -1).T
    dino = dino @ n_("x_embedder.dino_proj2.weight").reshape(hidden, b_).T + n_("x_embedder.dino_proj2.bias")
    pos = n_("pos_embed")
    streams = {"pixel": pix + pos, "dino": dino + pos}
    prefix, states = 0, []
    for i in range(depth):
        if i == start:
            ic = y_emb[:, None].repeat(1, ctx, 1) + n_("in_context_posemb")
            streams = {k: torch.cat([ic.clone(), v], 1) for k, v in streams.items()}
            prefix = ctx
        rot = ref_rope(dh, grid, prefix)
        mods, qs, ks, vs = {}, [], [], []
        for st, h in streams.items():
            m = ref_lin(sd, f"net.blocks.{i}.adaLN_modulation_{st}.1", F.silu(c))
            mods[st] = [m[:, j * hidden:(j + 1) * hidden][:, None] for j in range(6)]
            sh, sc = mods[st][0], mods[st][1]
            qkv = ref_lin(sd, f"net.blocks.{i}.qkv_{st}", ref_rms(h, n_(f"blocks.{i}.norm1_{st}.weight")) * (1 + sc) + sh)
            qkv = qkv.reshape(bsz, h.shape[1], 3, heads, dh)
            q = ref_rotate(ref_rms(qkv[:, :, 0], n_(f"blocks.{i}.q_norm_{st}.weight")), rot[:, None])
            k = ref_rotate(ref_rms(qkv[:, :, 1], n_(f"blocks.{i}.k_norm_{st}.weight")), rot[:, None])
            qs.append(q), ks.append(k), vs.append(qkv[:, :, 2])
        q, k, v = (torch.cat(z, 1).transpose(1, 2) for z in (qs, ks, vs))   # (B, heads, S, dh)
        n_pix = streams["pixel"].shape[1]
        logits = q @ k.transpose(-1, -2) / math.sqrt(dh)
        if flags is not None:
            mask = torch.zeros(bsz, 1, 2 * n_pix, 2 * n_pix)
            mask[flags, :, :n_pix, n_pix:] = float("-inf")
            logits = logits + mask
        o = (logits.softmax(-1) @ v).transpose(1, 2).reshape(bsz, 2 * n_pix, hidden)
        outs = {"pixel": o[:, :n_pix], "dino": o[:, n_pix:]}
        new = {}
        for st, h in streams.items():
            sh_msa, sc_msa, g_msa, sh_mlp, sc_mlp, g_mlp = mods[st]
            h = h + g_msa * ref_lin(sd, f"net.blocks.{i}.proj_{st}", outs[st])
            z = ref_rms(h, n_(f"blocks.{i}.norm2_{st}.weight")) * (1 + sc_mlp) + sh_mlp
            new[st] = h + g_mlp * ref_swiglu(sd, f"net.blocks.{i}.mlp_{st}", z)
        streams = new
        states.append([streams["pixel"], streams["dino"]])
    heads_out = {}
    for st, name in (("pixel", "pixels"), ("dino", "dinov2")):
        h = streams[st][:, prefix:]
        m = ref_lin(sd, f"net.final_layer.{name}_adaLN_modulation.1", F.silu(c))
        shift, scale = m[:, None, :hidden], m[:, None, hidden:]                   # shift first
        z = ref_rms(h, n_(f"final_layer.{name}_norm_final.weight")) * (1 + scale) + shift
        heads_out[st] = ref_lin(sd, f"net.final_layer.{name}_linear", z)
    return ref_unpatchify(heads_out["pixel"], patch, 3), heads_out["dino"], states


def ref_jit_forward(sd, x, t, y, heads=NH, ctx=L, start=S, patch=P):
    n_ = lambda k: sd["net." + k]
    depth = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("net.blocks."))
    hidden = n_("t_embedder.mlp.2.weight").shape[0]
    dh, bsz, grid = hidden // heads, x.shape[0], x.shape[-1] // patch
    c, y_emb = ref_cond(sd, t, y)
    b_ = n_("x_embedder.proj1.weight").shape[0]
    h = ref_patchify(x, patch) @ n_("x_embedder.proj1.weight").reshape(b_, -1).T
    h = h @ n_("x_embedder.proj2.weight").reshape(hidden, b_).T + n_("x_embedder.proj2.bias") + n_("pos_embed")
    prefix = 0
    for i in range(depth):
        if i == start:
            h = torch.cat([y_emb[:, None].repeat(1, ctx, 1) + n_("in_context_posemb"), h], 1)
            prefix = ctx
        rot = ref_rope(dh, grid, prefix)
        m = ref_lin(sd, f"net.blocks.{i}.adaLN_modulation.1", F.silu(c))
        sh_msa, sc_msa, g_msa, sh_mlp, sc_mlp, g_mlp = (m[:, j * hidden:(j + 1) * hidden][:, None] for j in range(6))
        qkv = ref_lin(sd, f"net.blocks.{i}.attn.qkv", ref_rms(h, n_(f"blocks.{i}.norm1.weight")) * (1 + sc_msa) + sh_msa)
        qkv = qkv.reshape(bsz, h.shape[1], 3, heads, dh)
        q = ref_rotate(ref_rms(qkv[:, :, 0], n_(f"blocks.{i}.attn.q_norm.weight")), rot[:, None]).transpose(1, 2)
        k = ref_rotate(ref_rms(qkv[:, :, 1], n_(f"blocks.{i}.attn.k_norm.weight")), rot[:, None]).transpose(1, 2)
        o = ((q @ k.transpose(-1, -2) / math.sqrt(dh)).softmax(-1) @ qkv[:, :, 2].transpose(1, 2))
        h = h + g_msa * ref_lin(sd, f"net.blocks.{i}.attn.proj", o.transpose(1, 2).reshape(bsz, -1, hidden))
        h = h + g_mlp * ref_swiglu(sd, f"net.blocks.{i}.mlp", ref_rms(h, n_(f"blocks.{i}.norm2.weight")) * (1 + sc_mlp) + sh_mlp)
    h = h[:, prefix:]
    m = ref_lin(sd, "net.final_layer.adaLN_modulation.1", F.silu(c))
    z = ref_rms(h, n_("final_layer.norm_final.weight")) * (1 + m[:, None, hidden:]) + m[:, None, :hidden]
    return ref_unpatchify(ref_lin(sd, "net.final_layer.linear", z), patch, 3)


# ----------------------------------------------------------------------------- tiny checkpoints
def tiny_dinov2_state(seed=0):
    cfg = transformers.Dinov2WithRegistersConfig(
        hidden_size=E, num_hidden_layers=2, num_attention_heads=1, mlp_ratio=2, patch_size=2,
        image_size=8, num_register_tokens=4, layer_norm_eps=1e-6)
    torch.manual_seed(seed)
    model = transformers.Dinov2WithRegistersModel(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        model.layernorm.weight.normal_(1.0, 0.5)      # a real affine: removed vs kept differ
        model.layernorm.bias.normal_(0.0, 0.5)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def random_like_official(shapes, gen):
    sd = {}
    for k, shape in shapes.items():
        if k.endswith("pos_embed"):
            sd[k] = ref_sincos(shape[-1], math.isqrt(shape[1]))
        elif k.endswith(".bias"):
            sd[k] = 0.1 * torch.randn(shape, generator=gen)
        elif len(shape) == 1:                                  # RMSNorm weights
            sd[k] = 1 + 0.2 * torch.randn(shape, generator=gen)
        elif "in_context_posemb" in k or "embedding_table" in k:
            sd[k] = 0.5 * torch.randn(shape, generator=gen)
        else:
            fan_in = math.prod(shape[1:])
            sd[k] = torch.randn(shape, generator=gen) / math.sqrt(fan_in)
    return sd


def tiny_official(kind="vco", v4_names=False, seed=0, dino_differs=False):
    """A complete official checkpoint dict of the tiny configuration: model, model_ema1 and
    model_ema2 differ (the EMAs also moved pos_embed and the frozen DINOv2 copies a little)."""
    gen = torch.Generator().manual_seed(seed)
    net = random_like_official(official_net_shapes(kind, D, H, NH, B, L, P, K, E, G), gen)
    model = dict(net)
    if kind == "vco":
        dino = tiny_dinov2_state(seed)
        if v4_names:
            back = {v: k for k, v in V4_TO_V5.items()}
            dino = {_rename(k, back): v for k, v in dino.items()}
        model.update({SEMANTIC_DINO + k: v for k, v in dino.items() if not k.startswith("layernorm.")})
        model.update({LOSS_DINO + k: v.clone() for k, v in dino.items()})
        if dino_differs:
            key = LOSS_DINO + "embeddings.cls_token"
            model[key] = model[key] + 1e-3
        model["img_mean"] = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        model["img_std"] = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def ema(scale):
        return {k: (v if k.startswith("img_") else v + scale * torch.randn(v.shape, generator=gen))
                for k, v in model.items()}

    args = argparse.Namespace(model="JiT-tiny/4-co" if kind == "vco" else "JiT-tiny/4", img_size=16,
                              match_pixel_norm=0.5, cfg=1.5, interval_min=0.1, interval_max=1.0,
                              num_sampling_steps=7, sampling_method="heun", ema_decay1=0.9999,
                              ema_decay2=0.9996, label_drop_prob=0.0, label_dinov2_drop_prob=0.1,
                              dinov2_null_type="attn_mask_asymmetric", dinov2_loss_coef=0.1,
                              drifting_v3_loss=True, drifting_v3_loss_coef=10.0, drifting_v3_gate_tau=10.0,
                              drifting_v3_repulsion_tau=0.2, class_num=K)
    return {"model": model, "optimizer": {"state": {}, "param_groups": []}, "epoch": 599, "args": args,
            "model_ema1": ema(1e-4), "model_ema2": ema(3e-4)}


def _rename(k, mapping):
    for a, b in mapping.items():
        k = k.replace(a, b)
    return k


def our_state(plan, section):
    return plan.sections[section]


def converted_model(plan, section="ema1"):
    model = build_model(plan.cfg.model)
    state = dict(model.state_dict())
    state.update(plan.sections.get("model", {}))
    state.update(plan.sections[section])
    model.load_state_dict(state)
    return model.eval()


@pytest.fixture(scope="module")
def tiny_vco():
    obj = tiny_official("vco")
    return obj, plan_conversion(obj, overrides=TINY_SET[1:])


@pytest.fixture(scope="module")
def converted_run(tmp_path_factory, tiny_vco):
    """The tiny official checkpoint written as a .pth and converted through the CLI."""
    from vco.semantic import FeatureStats, save_stats
    root = tmp_path_factory.mktemp("official")
    pth = root / "checkpoint-last.pth"
    torch.save(tiny_vco[0], pth)
    stats = root / "stats.safetensors"
    save_stats(FeatureStats(var=torch.rand(G * G, E) + 0.5, scale=1.0), stats)
    run = root / "run"
    assert main(["convert-official", str(pth), "--out", str(run), "--stats", str(stats), *TINY_SET]) == 0
    return pth, run


# ----------------------------------------------------------------------------- layout and inference
def test_shape_formulas_reproduce_the_official_b16_key_list():
    rows = [line.split("\t") for line in SPEC.read_text().splitlines()[1:] if line.strip()]
    listed = {r[0]: tuple(int(v) for v in r[1].strip("[]").split(",")) for r in rows}
    assert len(listed) == 807
    assert official_b16_shapes("vco") == listed
    net = sum(math.prod(v) for k, v in listed.items() if k.startswith("net.") and not k.startswith(SEMANTIC_DINO))
    assert net == 260_862_720                                       # section 1.1 size check
    jit = sum(math.prod(v) for v in official_b16_shapes("jit").values())
    assert jit == 131_320_320                                       # section 1.2


def test_b16_on_meta_every_tensor_used_exactly_once():
    model = meta_official(official_b16_shapes("vco"))
    ema = {k: v for k, v in model.items()}
    obj = {"model": model, "model_ema1": ema, "model_ema2": dict(ema), "epoch": 599,
           "args": argparse.Namespace(model="JiT-B/16-co", img_size=256, match_pixel_norm=0.485)}
    plan = plan_conversion(obj)
    assert plan.kind == "vco" and plan.preset == "vco-b16"
    ref = build_config("vco-b16")
    assert plan.cfg.model == ref.model and plan.cfg.semantic.scale == 0.485
    roles = {sec: {} for sec in plan.usage}
    for sec, usage in plan.usage.items():
        assert set(usage) == set(obj[sec])                          # every tensor has one role
        for role in usage.values():
            roles[sec][role] = roles[sec].get(role, 0) + 1
    assert roles["model"] == {WEIGHT: 358, POS_EMBED: 1, SEMANTIC_ENCODER: 222,
                              LOSS_ENCODER: 224, BUFFER: 2}
    assert roles["model_ema1"] == {WEIGHT: 358, POS_EMBED: 1, FROZEN_COPY: 446, BUFFER: 2}
    ours = build_model(ref.model, device="meta").state_dict()
    assert set(plan.sections) == {"model", "ema1", "ema2"}
    for sec in plan.sections.values():                              # our names, our shapes
        assert set(sec) == set(ours)
        assert all(tuple(sec[k].shape) == tuple(ours[k].shape) for k in sec)
    assert len(set(plan.names.values())) == len(plan.names) == len(ours)  # a bijection
    assert {k: v for k, v in plan.names.items() if "blocks.7.semantic.attn" in k} == {
        "blocks.7.semantic.attn.qkv.weight": "net.blocks.7.qkv_dino.weight",
        "blocks.7.semantic.attn.qkv.bias": "net.blocks.7.qkv_dino.bias",
        "blocks.7.semantic.attn.q_norm.weight": "net.blocks.7.q_norm_dino.weight",
        "blocks.7.semantic.attn.k_norm.weight": "net.blocks.7.k_norm_dino.weight",
        "blocks.7.semantic.attn.proj.weight": "net.blocks.7.proj_dino.weight",
        "blocks.7.semantic.attn.proj.bias": "net.blocks.7.proj_dino.bias"}


@pytest.mark.parametrize("kind", ["vco", "jit"])
@pytest.mark.parametrize("size,dims", [("b16", (12, 768, 12, 128, 4)), ("l16", (24, 1024, 16, 128, 8)),
                                       ("h16", (32, 1280, 16, 256, 10))])
def test_preset_inferred_from_shapes_on_meta(kind, size, dims):
    depth, hidden, heads, bottleneck, start = dims
    sd = meta_official(official_net_shapes(kind, depth, hidden, heads, bottleneck, 32, 16, 1000, 768, 16))
    cfg, shapes, _ = infer_config(sd)                               # no args: shapes alone
    preset = f"{kind}-{size}"
    assert cfg.preset == preset and cfg.model == build_config(preset).model
    assert (shapes.depth, shapes.hidden, shapes.heads, shapes.bottleneck) == (depth, hidden, heads, bottleneck)
    assert cfg.model.in_context_start == start
    named = {"b16": "B", "l16": "L", "h16": "H"}[size]
    cfg2, _, _ = infer_config(sd, {"model": f"JiT-{named}/16" + ("-co" if kind == "vco" else "")})
    assert cfg2.model == cfg.model


def test_nonstandard_model_needs_its_in_context_start():
    sd = meta_official(official_net_shapes("vco", D, H, NH, B, L, P, K, E, G))
    with pytest.raises(ConversionError, match="in_context_start"):
        infer_config(sd)
    cfg, _, _ = infer_config(sd, overrides=[f"model.in_context_start={S}"])
    m = cfg.model
    assert (m.depth, m.hidden_size, m.num_heads, m.bottleneck_dim, m.in_context_len, m.image_size,
            m.patch_size, m.num_classes, m.semantic_dim) == (D, H, NH, B, L, G * P, P, K, E)
    wide = meta_official(official_net_shapes("jit", 12, 1088, 16, 128, 32, 16, 1000, 0, 16))
    cfg, _, _ = infer_config(wide, {"model": "JiT_B/16-hidden_size_1088"})
    assert cfg.model == build_config("jit-b16-wide").model          # Table 1's widened JiT


# ----------------------------------------------------------------------------- tensors land in place
def test_every_tiny_tensor_lands_in_its_place(tiny_vco):
    obj, plan = tiny_vco
    for sec_off, sec in (("model", "model"), ("model_ema1", "ema1"), ("model_ema2", "ema2")):
        ours = plan.sections[sec]
        for name, official in plan.names.items():
            want = obj[sec_off][official]
            assert torch.equal(ours[name], want.reshape(ours[name].shape)), (sec, name)
    # a few written out by hand, independently of the converter's rename table
    by_hand = {"blocks.2.pixel.mlp.w12.weight": "net.blocks.2.mlp_pixel.w12.weight",
               "blocks.0.semantic.adaLN_modulation.1.bias": "net.blocks.0.adaLN_modulation_dino.1.bias",
               "blocks.1.pixel.norm2.weight": "net.blocks.1.norm2_pixel.weight",
               "pixel_head.linear.weight": "net.final_layer.pixels_linear.weight",
               "semantic_head.norm_final.weight": "net.final_layer.dinov2_norm_final.weight",
               "x_embedder.proj1.weight": "net.x_embedder.pix_proj1.weight",
               "s_embedder.proj1.weight": "net.x_embedder.dino_proj1.weight",
               "in_context_posemb": "net.in_context_posemb", "pos_embed": "net.pos_embed"}
    for ours, official in by_hand.items():
        assert plan.names[ours] == official
    assert plan.sections["ema1"]["s_embedder.proj1.weight"].shape == (B, E)
    assert torch.equal(plan.sections["ema1"]["pos_embed"], obj["model_ema1"]["net.pos_embed"])


def test_patch_embedding_equals_the_official_convolution_by_hand(tiny_vco):
    obj, plan = tiny_vco
    model = converted_model(plan)
    sd = obj["model_ema1"]
    x = torch.randn(2, 3, G * P, G * P)
    w1, w2, b2 = (sd["net.x_embedder." + k] for k in ("pix_proj1.weight", "pix_proj2.weight", "pix_proj2.bias"))
    by_hand = torch.empty(2, G * G, H)
    for i in range(G):
        for j in range(G):
            patch = x[:, :, i * P:(i + 1) * P, j * P:(j + 1) * P].reshape(2, -1)   # (c, kh, kw)
            by_hand[:, i * G + j] = (patch @ w1.reshape(B, -1).T) @ w2.reshape(H, B).T + b2
    with torch.no_grad():
        assert torch.allclose(model.x_embedder(x), by_hand, atol=1e-5)
        assert torch.allclose(model.x_embedder(x), F.conv2d(F.conv2d(x, w1, stride=P), w2, b2)
                              .flatten(2).transpose(1, 2), atol=1e-5)
        # one bright pixel: (row 5, col 13, channel 2) is token (5 // 4) * 4 + 13 // 4 = 7
        probe = torch.zeros(1, 3, G * P, G * P)
        probe[0, 2, 5, 13] = 1.0
        out = model.x_embedder(probe)[0]
        expect = w2.reshape(H, B) @ w1[:, 2, 5 % P, 13 % P] + b2
        assert torch.allclose(out[7], expect, atol=1e-6)
        assert torch.allclose(out[torch.arange(G * G) != 7], b2.expand(G * G - 1, H), atol=1e-6)


def test_swiglu_and_adaln_chunk_orders_with_probe_vectors(tiny_vco):
    obj, plan = tiny_vco
    model = converted_model(plan)
    sd = obj["model_ema1"]
    x = torch.randn(3, 5, H)
    with torch.no_grad():
        for ours, off in ((model.blocks[1].pixel.mlp, "net.blocks.1.mlp_pixel"),
                          (model.blocks[2].semantic.mlp, "net.blocks.2.mlp_dino")):
            assert torch.allclose(ours(x), ref_swiglu(sd, off, x), atol=1e-5)   # w12 = [a; g]
        # adaLN: a zero weight and a bias whose 6 chunks are the constants 1..6 in official order
        # (shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp)
        probe = dict(sd)
        probe["net.blocks.0.adaLN_modulation_pixel.1.weight"] = torch.zeros(6 * H, H)
        probe["net.blocks.0.adaLN_modulation_pixel.1.bias"] = torch.arange(1.0, 7.0).repeat_interleave(H)
        m = converted_model(plan_conversion({"model_ema1": probe}, overrides=TINY_SET[1:]))
        chunks = m.blocks[0].pixel.adaLN_modulation(torch.randn(2, H)).chunk(6, -1)
        assert [float(c.mean()) for c in chunks] == [1, 2, 3, 4, 5, 6]
        # both gates 0 -> the pixel stream passes block 0 unchanged (pixel output of block 0 = input)
        probe["net.blocks.0.adaLN_modulation_pixel.1.bias"] = torch.tensor(
            [0.3, 0.2, 0.0, -0.1, 0.5, 0.0]).repeat_interleave(H)
        m = converted_model(plan_conversion({"model_ema1": probe}, overrides=TINY_SET[1:]))
        seen = {}
        m.blocks[0].register_forward_hook(lambda mod, a, out: seen.update(inp=a[0][0], out=out[0]))
        m(torch.randn(2, 3, 16, 16), torch.rand(2), torch.tensor([0, 1]), torch.randn(2, G * G, E))
        assert torch.equal(seen["inp"], seen["out"])
        # the final layer: chunk 0 is the shift (bias [1; 0] -> output = linear(norm(x) + 1))
        probe["net.final_layer.pixels_adaLN_modulation.1.weight"] = torch.zeros(2 * H, H)
        probe["net.final_layer.pixels_adaLN_modulation.1.bias"] = torch.cat([torch.ones(H), torch.zeros(H)])
        m = converted_model(plan_conversion({"model_ema1": probe}, overrides=TINY_SET[1:]))
        h = torch.randn(2, G * G, H)
        want = ref_lin(probe, "net.final_layer.pixels_linear",
                       ref_rms(h, probe["net.final_layer.pixels_norm_final.weight"]) + 1)
        want = unpatchify(want, m.cfg.patch_size, m.cfg.in_channels)          # the head's image output
        assert torch.allclose(m.pixel_head(h, torch.randn(2, H)), want, atol=1e-5)


def test_sincos_and_pos_embed_check():
    from vco.nn.layers import sincos_pos_embed_2d
    assert torch.allclose(sincos_pos_embed_2d(768, 16), ref_sincos(768, 16), atol=1e-7)
    assert O._pos_embed_check(ref_sincos(64, 4), 64, 4, "model") is None
    assert "EMA" in O._pos_embed_check(ref_sincos(64, 4) + 1e-4, 64, 4, "model_ema1")
    transposed = ref_sincos(64, 4).reshape(1, 4, 4, 64).transpose(1, 2).reshape(1, 16, 64)  # row first
    with pytest.raises(ConversionError, match="position layout"):
        O._pos_embed_check(transposed, 64, 4, "model")


# ----------------------------------------------------------------------------- numerics
@pytest.mark.parametrize("flags", [None, [False, True, True]])
def test_converted_vco_reproduces_the_official_forward(tiny_vco, flags):
    obj, plan = tiny_vco
    model = converted_model(plan)
    sd = obj["model_ema1"]
    gen = torch.Generator().manual_seed(1)
    x, zs = torch.randn(3, 3, 16, 16, generator=gen), torch.randn(3, G * G, E, generator=gen)
    t, y = torch.rand(3, generator=gen), torch.tensor([0, 3, K])            # K = the null label
    drop = None if flags is None else torch.tensor(flags)
    ours_states = []
    for blk in model.blocks:
        blk.register_forward_hook(lambda mod, a, out: ours_states.append([s.detach() for s in out]))
    with torch.no_grad():
        x_pred, f_pred = model(x, t, y, zs, drop)
        ref_x, ref_f, ref_states = ref_vco_forward(sd, x, t, y, zs, drop)
    for i, (o, r) in enumerate(zip(ours_states, ref_states)):       # the dual-stream block, one by one
        assert torch.allclose(o[0], r[0], atol=2e-5, rtol=1e-5), f"block {i} pixel stream"
        assert torch.allclose(o[1], r[1], atol=2e-5, rtol=1e-5), f"block {i} DINO stream"
    assert x_pred.abs().mean() > 0.1
    assert torch.allclose(x_pred, ref_x, atol=2e-5, rtol=1e-5)
    assert torch.allclose(f_pred, ref_f, atol=2e-5, rtol=1e-5)
    if flags is not None:   # a flagged sample's pixels ignore its DINO input, as officially
        with torch.no_grad():
            other, _ = model(x, t, y, zs + torch.randn_like(zs), drop)
        assert torch.allclose(other[1:], x_pred[1:], atol=1e-5) and not torch.allclose(other[0], x_pred[0])


def test_converted_jit_reproduces_the_official_forward():
    obj = tiny_official("jit")
    plan = plan_conversion(obj, overrides=TINY_SET[1:])
    assert plan.kind == "jit" and plan.cfg.model.fusion == "none"
    model = converted_model(plan)
    x, t, y = torch.randn(2, 3, 16, 16), torch.rand(2), torch.tensor([1, K])
    with torch.no_grad():
        ours, _ = model(x, t, y)
        assert torch.allclose(ours, ref_jit_forward(obj["model_ema1"], x, t, y), atol=2e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- DINOv2 copies
@pytest.mark.parametrize("v4", [False, True])
def test_dinov2_copies_become_one_encoder(tmp_path, v4):
    from vco.semantic import DINOv2Encoder
    obj = tiny_official("vco", v4_names=v4)
    pth = tmp_path / "c.pth"
    torch.save(obj, pth)
    r = convert_official(pth, tmp_path / "run", overrides=TINY_SET[1:])
    enc = DINOv2Encoder.from_pretrained(str(r.encoder), grid=G)
    dino = tiny_dinov2_state()                                     # v5 names, the source values
    got = enc.model.state_dict()
    assert set(got) == set(dino)
    for k, v in dino.items():
        assert torch.equal(got[k], v), k                         # transformer + loss LN affine
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        ref = transformers.Dinov2WithRegistersModel(enc.model.config)
        ref.load_state_dict(dino)
        ref.eval()
        u = F.interpolate(images * 0.5 + 0.5, size=(8, 8), mode="bicubic", align_corners=False)
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        hidden = ref.encoder(ref.embeddings((u - mean) / std))[0]
        no_affine = F.layer_norm(hidden, (E,), eps=1e-6)[:, 5:]     # the RAE (semantic) copy
        assert torch.allclose(enc.patch_features(images), no_affine, atol=1e-5)
    assert not any("differ" in n for n in r.notes)


def test_differing_dinov2_copies_are_reported(tmp_path):
    plan = plan_conversion(tiny_official("vco", dino_differs=True), overrides=TINY_SET[1:])
    assert any("WARNING" in n and "differ in 1 tensors" in n for n in plan.notes)


# ----------------------------------------------------------------------------- CLI end to end
def test_convert_official_then_sample_through_the_cli(converted_run, tiny_vco, tmp_path, capsys):
    from vco.config import load_config
    from vco.semantic import load_stats
    from vco.semantic.stream import STATS_NAME
    from vco.train import load_run_model
    pth, run = converted_run
    obj, plan = tiny_vco
    cfg = load_config(run / "config.yaml")
    assert cfg.semantic.scale == 0.5 and cfg.semantic.encoder == "dinov2"      # match_pixel_norm
    assert Path(cfg.semantic.encoder_path) == (run / O.ENCODER_DIR).resolve()
    assert (cfg.sampler.cfg, cfg.sampler.steps, cfg.diffusion.label_drop_prob) == (1.5, 7, 0.1)
    assert cfg.semantic.aux_loss["name"] == "hybrid" and cfg.semantic.aux_loss["weight"] == 10.0
    st = load_stats(run / STATS_NAME)
    assert st.scale == 0.5 and st.var.shape == (G * G, E)
    model, _, meta = load_run_model(run, "ema1")
    assert meta["converted_from"]["epoch"] == 599
    x, t, y, zs = torch.randn(2, 3, 16, 16), torch.rand(2), torch.tensor([0, 4]), torch.randn(2, G * G, E)
    with torch.no_grad():                                           # the written files, end to end
        ours = model(x, t, y, zs, torch.tensor([False, True]))
        ref = ref_vco_forward(obj["model_ema1"], x, t, y, zs, torch.tensor([False, True]))
    assert torch.allclose(ours[0], ref[0], atol=2e-5, rtol=1e-5)
    assert torch.allclose(ours[1], ref[1], atol=2e-5, rtol=1e-5)
    assert main(["sample", "--run", str(run), "--num", "5", "--steps", "2", "--batch-size", "5",
                 "--device", "cpu", "--out", str(tmp_path / "grid.png")]) == 0
    assert (tmp_path / "grid.png").is_file()
    assert main(["convert-official", str(pth), "--out", str(run)]) == 2        # never overwrites
    assert "already exists" in capsys.readouterr().err


def test_convert_official_from_the_hub_cache_offline(converted_run, tmp_path, monkeypatch, capsys):
    """hf://OWNER/REPO/PATH (and --stats hf://...) read from a Hub cache built in the library's
    layout, offline: the same run as converting the local files."""
    import huggingface_hub.constants
    from helpers import hub_cache
    from vco.train.checkpoint import load_tensors
    pth, run = converted_run
    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    hub_cache(cache, "hanlincs/V-Co", {"tiny/checkpoint-last.pth": pth}, revision="v1")
    hub_cache(cache, "nyu-visionx/RAE-collections", {"stats/stat.safetensors": pth.parent / "stats.safetensors"})
    out = tmp_path / "from-hub"
    assert main(["convert-official", "hf://hanlincs/V-Co/tiny/checkpoint-last.pth", "--revision", "v1",
                 "--stats", "hf://nyu-visionx/RAE-collections/stats/stat.safetensors", "--out", str(out),
                 *TINY_SET]) == 0
    assert "next: vco sample --run" in capsys.readouterr().out
    ours, local = load_tensors(out), load_tensors(run)
    assert ours.keys() == local.keys() and all(torch.equal(ours[k], local[k]) for k in local)
    # not in the cache: the error names the file to fetch and the folder it belongs in
    assert main(["convert-official", "hf://hanlincs/V-Co/B16/checkpoint-last.pth", "--out",
                 str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "hf download hanlincs/V-Co B16/checkpoint-last.pth --revision main" in err
    assert str(cache) in err and not (tmp_path / "x").exists()


def test_clear_errors(tmp_path, capsys):
    good = tmp_path / "good.pth"
    torch.save(tiny_official("jit"), good)
    data = good.read_bytes()
    (tmp_path / "trunc.pth").write_bytes(data[:len(data) // 2])
    torch.save({"model": {"encoder.layer.0.weight": torch.zeros(2)}, "epoch": 1}, tmp_path / "other.pth")
    torch.save({"state_dict": {"conv.weight": torch.zeros(2)}}, tmp_path / "foreign.pth")
    variant = dict(tiny_official("vco")["model"])
    variant["net.blocks.0.qkv.weight"] = variant.pop("net.blocks.0.qkv_pixel.weight")
    torch.save({"model": variant}, tmp_path / "variant.pth")
    extra = dict(tiny_official("jit")["model"], **{"net.refiner.weight": torch.zeros(2)})
    torch.save({"model_ema1": extra}, tmp_path / "extra.pth")
    cases = {"missing.pth": "not found", "trunc.pth": "truncated or corrupt",
             "other.pth": "not an official V-Co/JiT checkpoint", "foreign.pth": "not an official",
             "variant.pth": "neither V-Co's final recipe", "extra.pth": "unexpected tensor 'net.refiner.weight'"}
    for name, message in cases.items():
        assert main(["convert-official", str(tmp_path / name), "--out", str(tmp_path / f"o-{name}"),
                     *TINY_SET]) == 2, name
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
        assert not (tmp_path / f"o-{name}").exists()
    assert main(["convert-official", str(good), "--out", str(tmp_path / "n")]) == 2   # no start block
    assert "--set model.in_context_start" in capsys.readouterr().err
    with pytest.raises(ConversionError, match="Fraction"):
        import fractions
        torch.save({"model": {}, "args": fractions.Fraction(1, 3)}, tmp_path / "pickle.pth")
        O.load_official(tmp_path / "pickle.pth")


def test_weights_ema1_only(tmp_path):
    from vco.train import load_run_model
    from vco.train.checkpoint import load_tensors
    pth = tmp_path / "c.pth"
    obj = tiny_official("jit")
    torch.save(obj, pth)
    r = convert_official(pth, tmp_path / "run", weights="ema1", overrides=TINY_SET[1:])
    assert r.sections == ["ema1"] and set(load_tensors(r.run)) == {f"ema1/{k}" for k in
                                                                   plan_conversion(obj, overrides=TINY_SET[1:]).sections["ema1"]}
    model, _, _ = load_run_model(r.run, "ema1")
    assert torch.equal(model.state_dict()["blocks.1.attn.qkv.weight"], obj["model_ema1"]["net.blocks.1.attn.qkv.weight"])


# ----------------------------------------------------------------------------- fine-tuning
def test_init_from_and_resume_a_converted_run(converted_run, tiny_vco, tmp_path, capsys):
    from vco.config import load_config
    from vco.train import Trainer
    from vco.train.checkpoint import read_meta
    from vco.train.init_from import apply_init_from, prepare_init_from
    from vco.semantic.stream import STATS_NAME
    _, run = converted_run
    obj, plan = tiny_vco
    small = ["data.name=synthetic", "synthetic_size=20", "batch_size=4", "precision=fp32",
             "train.device=cpu", "log_every=1", "warmup_steps=1"]
    cfg = build_config(config_file=run / "config.yaml", overrides=small)
    out = tmp_path / "ft"
    state, which = prepare_init_from(run, out, cfg)
    assert which == "ema1" and (out / STATS_NAME).is_file()       # the statistics come along
    trainer = Trainer(cfg, out)
    apply_init_from(trainer, state, run, which)
    for name, official in plan.names.items():
        want = obj["model_ema1"][official]
        got = trainer.model.state_dict()[name]
        assert torch.equal(got, want.reshape(got.shape)), name
    for ema in trainer.emas:
        for n, v in ema.state_dict().items():
            assert torch.equal(v, dict(trainer.model.named_parameters())[n].float())
    assert not trainer.optimizer.state
    # through the CLI: --init-from takes the source's config; then --resume on the converted run
    args = ["--quiet", "--steps", "1", "--set", *small]
    assert main(["train", "--init-from", str(run), "--out", str(tmp_path / "ft2"), *args]) == 0
    assert "initialised" in capsys.readouterr().out
    assert read_meta(tmp_path / "ft2")["step"] == 1
    assert load_config(tmp_path / "ft2" / "config.yaml").semantic.scale == 0.5
    copy = tmp_path / "copy"                 # --resume of an untrained conversion: starts in place
    shutil.copytree(run, copy)
    assert main(["train", "--resume", str(copy), *args]) == 0
    assert read_meta(copy)["step"] == 1 and "converted_from" not in read_meta(copy)
    assert main(["train", "--preset", "jit-tiny", "--init-from", str(run), "--out",
                 str(tmp_path / "bad"), *args]) == 2
    assert "do not fit this model" in capsys.readouterr().err

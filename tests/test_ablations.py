"""The paper's ablations (Tables 1-4) as config-selected components: each one's defining property,
its parameter count, and a few training steps of every choice on a tiny vco-tiny."""
import subprocess
import sys

import pytest
import torch
from helpers import velocity_loss
from test_model import jit_params_by_hand

from vco.config import DiffusionConfig, SamplerConfig, build_config
from vco.diffusion import sample
from vco.models.unconditional import UNCONDITIONAL, build_unconditional
from vco.losses import AUX_LOSSES, build_loss_terms, resolved_aux_loss
from vco.models import MODELS, build_model, count_params
from vco.semantic import CALIBRATIONS, build_calibration
from vco.semantic.calibration import ShiftedTime
from vco.train import Trainer, load_run_model
from vco.train.checkpoint import load_tensors

TINY = ["image_size=16", "hidden_size=32", "depth=4", "num_heads=2", "bottleneck_dim=8",
        "in_context_len=2", "in_context_start=1", "semantic_dim=6", "stream_blocks=1"]


def tiny(*extra):
    return build_config("vco-tiny", overrides=TINY + list(extra))


def randomised(model):
    """Random weights everywhere (heads and adaLN start at zero) so every path carries signal."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model.eval()


def batch(b=2):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(b, 3, 16, 16, generator=g), torch.rand(b, generator=g),
            torch.arange(b) % 10, torch.randn(b, 16, 6, generator=g))


def inputs_of(module):
    """Records the first positional input of ``module`` on the next forwards."""
    seen = []
    module.register_forward_hook(lambda m, args, out: seen.append(args[0].detach().clone()))
    return seen


# ----------------------------------------------------------------------- Table 1: fusion
# The official classes' counts: V-Co-B/16, JiT-B/16, and the official shared-JiT classes with
# K = 2 stream blocks (published with the released code). token_concat is not an official model: below.
@pytest.mark.parametrize("fusion,official", [
    ("dual_stream", 260_666_112), ("none", 131_123_712),
    ("direct_add", 154_355_712), ("channel_concat", 156_717_312)])
def test_b16_parameter_count_of_every_fusion(fusion, official):
    assert count_params(build_config("vco-b16", overrides=[f"fusion={fusion}"]).model) == official


def shared_trunk_params_by_hand(m, fusion):
    """A shared-trunk model from its layer list: JiT with depth - K shared + 2K stream blocks
    (= depth + K blocks), plus the semantic embedding C -> b (no bias) -> H, the semantic head
    (norm, adaLN 2H, linear H -> C) and, for channel_concat, Linear(2H, H) and Linear(H, 2H)."""
    h, c, b = m.hidden_size, m.semantic_dim, m.semantic_bottleneck or m.bottleneck_dim
    jit = jit_params_by_hand(m.depth + m.stream_blocks, h, m.num_heads, m.bottleneck_dim,
                             m.patch_size, m.num_classes, m.in_context_len)
    semantic = (c * b + b * h + h) + (h + 2 * h * h + 2 * h + h * c + c)
    fuse = (2 * h * h + h) + (2 * h * h + 2 * h) if fusion == "channel_concat" else 0
    return jit + semantic + fuse


@pytest.mark.parametrize("preset", ["vco-b16", "vco-tiny"])          # K = 2 and K = 1
@pytest.mark.parametrize("fusion", ["direct_add", "channel_concat", "token_concat"])
def test_shared_trunk_parameter_counts_by_hand(preset, fusion):
    """token_concat holds the same weights as direct_add (it only lays the tokens out
    differently); the hand count also reproduces the two official counts above at B/16."""
    m = build_config(preset, overrides=[f"fusion={fusion}"]).model
    assert count_params(m) == shared_trunk_params_by_hand(m, fusion)


def test_widened_jit_matches_the_official_widening_and_vco_size():
    wide = build_config("jit-b16-wide").model                       # official widening: hidden 1088
    assert count_params(wide) == jit_params_by_hand(12, 1088, 16, 128) == 261_950_744
    vco_b = count_params(build_config("vco-b16").model)
    assert abs(count_params(wide) - vco_b) / vco_b < 0.01          # "param-matched"
    tiny_wide, vco_tiny = (count_params(build_config(p).model) for p in ("jit-tiny-wide", "vco-tiny"))
    assert abs(tiny_wide - vco_tiny) / vco_tiny < 0.01


@pytest.mark.parametrize("fusion", ["direct_add", "channel_concat", "token_concat", "dual_stream"])
def test_info_prints_the_parameter_count_of_each_fusion(fusion):
    r = subprocess.run([sys.executable, "-m", "vco.cli", "info", "--preset", "vco-b16", "--set",
                        f"fusion={fusion}"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    expected = count_params(build_config("vco-b16", overrides=[f"fusion={fusion}"]).model)
    assert r.stdout.strip().splitlines()[-1] == f"params={expected}"


def test_direct_add_sums_the_embeddings_before_the_shared_blocks():
    model = randomised(build_model(tiny("fusion=direct_add").model))
    x, t, y, f = batch()
    trunk_in = inputs_of(model.blocks[0])
    pixel_post, semantic_post = inputs_of(model.pixel_blocks[0]), inputs_of(model.semantic_blocks[0])
    model(x, t, y, f)
    expected = model.x_embedder(x) + model.pos_embed + model.s_embedder(f) + model.pos_embed
    assert torch.allclose(trunk_in[0], expected, atol=1e-6)
    assert torch.equal(pixel_post[0], semantic_post[0])          # both streams leave from one state


def test_channel_concat_projects_2h_to_h_and_splits_h_to_2h():
    model = randomised(build_model(tiny("fusion=channel_concat").model))
    x, t, y, f = batch()
    trunk_in, trunk_out = inputs_of(model.blocks[0]), []
    model.blocks[-1].register_forward_hook(lambda m, a, out: trunk_out.append(out))
    pixel_post, semantic_post = inputs_of(model.pixel_blocks[0]), inputs_of(model.semantic_blocks[0])
    model(x, t, y, f)
    cat = torch.cat([model.x_embedder(x) + model.pos_embed, model.s_embedder(f) + model.pos_embed], -1)
    assert torch.allclose(trunk_in[0], model.fusion.fuse_in(cat), atol=1e-6)
    split = model.fusion.fuse_out(trunk_out[0])
    assert torch.allclose(pixel_post[0], split[..., :32], atol=1e-6)
    assert torch.allclose(semantic_post[0], split[..., 32:], atol=1e-6)


def test_token_concat_runs_one_shared_sequence_at_shared_positions():
    model = randomised(build_model(tiny("fusion=token_concat").model))
    x, t, y, f = batch()
    trunk_in = inputs_of(model.blocks[0])
    model(x, t, y, f)
    expected = torch.cat([model.x_embedder(x) + model.pos_embed, model.s_embedder(f) + model.pos_embed], 1)
    assert torch.allclose(trunk_in[0], expected, atol=1e-6)      # (B, 2N, H): tokens concatenated
    cos, sin = model.fusion.rope(model.rope.tables(prefix=2))
    assert torch.equal(cos[:18], cos[18:]) and torch.equal(sin[:18], sin[18:])
    # after the in-context tokens: [ctx ; pixels ; ctx ; semantics], one copy of ctx per side
    after_ctx = inputs_of(model.blocks[1])
    model(x, t, y, f)
    assert after_ctx[0].shape == (2, 2 * (2 + 16), 32)
    assert torch.equal(after_ctx[0][:, :2], after_ctx[0][:, 18:20])


def test_none_is_the_single_stream_jit():
    model = build_model(tiny("fusion=none").model)
    assert type(model).__name__ == "JiT" and len(model.stream_shapes(1)) == 1


# ----------------------------------------------------------------------- Table 2: uncond
def test_asymmetric_and_symmetric_mask_layouts():
    drop = torch.tensor([True, False])
    asym = build_unconditional("joint_asymmetric_mask", 6).structural_mask(drop, 3).dense(5)
    sym = build_unconditional("joint_symmetric_mask", 6).structural_mask(drop, 3).dense(5)
    ref = torch.ones(2, 1, 5, 5, dtype=torch.bool)
    ref[0, 0, :3, 3:] = False                                    # pixel queries -/-> semantic keys
    assert torch.equal(asym, ref)
    ref[0, 0, 3:, :3] = False                                    # and semantic -/-> pixel
    assert torch.equal(sym, ref)
    assert build_unconditional("joint_asymmetric_mask", 6).structural_mask(~drop & drop, 3) is None
    assert build_unconditional("input_dropout_zeros", 6).structural_mask(drop, 3) is None


FLOW_CASES = [(f, u) for f in ("dual_stream", "token_concat", "direct_add", "channel_concat")
              for u in UNCONDITIONAL if not (u == "joint_symmetric_mask" and f in ("direct_add", "channel_concat"))]


@pytest.mark.parametrize("fusion,uncond", FLOW_CASES)
def test_dropped_samples_pixels_never_see_the_semantics(fusion, uncond):
    """Information flow, not just a mask: perturbing the semantic input of a dropped sample leaves
    its pixel prediction bit-identical, and changes a kept sample's. The symmetric mask also
    makes the dropped sample's semantic prediction blind to the pixels; the asymmetric one not."""
    model = randomised(build_model(tiny(f"fusion={fusion}", f"uncond={uncond}").model))
    x, t, y, f = batch()
    drop = torch.tensor([True, False])
    xa, fa = model(x, t, y, f, drop)
    xb, _ = model(x, t, y, f + torch.randn_like(f), drop)
    assert torch.equal(xa[0], xb[0])
    assert not torch.allclose(xa[1], xb[1], atol=1e-4)
    _, fc = model(x + torch.randn_like(x), t, y, f, drop)
    if uncond == "joint_symmetric_mask":
        assert torch.equal(fa[0], fc[0])
    else:
        assert not torch.allclose(fa[0], fc[0], atol=1e-4)


def test_symmetric_mask_is_refused_where_streams_are_merged_before_attention():
    with pytest.raises(ValueError, match="separate token streams"):
        build_model(tiny("fusion=direct_add", "uncond=joint_symmetric_mask").model)


@pytest.mark.parametrize("uncond", ["input_dropout_zeros", "input_dropout_learned"])
def test_input_dropout_replaces_the_semantic_input_of_exactly_the_dropped_samples(uncond):
    model = randomised(build_model(tiny(f"uncond={uncond}").model))
    x, t, y, f = batch(4)
    seen = inputs_of(model.s_embedder)
    drop = torch.tensor([True, False, True, False])
    model(x, t, y, f, drop)
    null = torch.zeros(6) if uncond == "input_dropout_zeros" else model.unconditional.null_token.detach()
    assert torch.equal(seen[0][~drop], f[~drop])
    assert torch.equal(seen[0][drop], null.expand(2, 16, 6))
    if uncond == "input_dropout_learned":
        assert "unconditional.null_token" in dict(model.named_parameters())


def test_joint_and_independent_dropout_rates():
    from vco.diffusion.randomness import SharedStream
    cfg = DiffusionConfig(label_drop_prob=0.1, semantic_drop_prob=0.2)
    g = SharedStream(torch.Generator().manual_seed(0))
    joint = build_unconditional("joint_asymmetric_mask", 6).draw(100_000, cfg, g)
    assert torch.equal(joint.label, joint.semantic)
    assert joint.label.float().mean().item() == pytest.approx(0.1, abs=0.005)
    ind = build_unconditional("independent_mask", 6).draw(100_000, cfg, g)
    assert ind.label.float().mean().item() == pytest.approx(0.1, abs=0.005)
    assert ind.semantic.float().mean().item() == pytest.approx(0.2, abs=0.005)
    # independent: both at once only ~2% of the time (why the paper prefers joint dropout)
    assert (ind.label & ind.semantic).float().mean().item() == pytest.approx(0.02, abs=0.003)


def test_semantic_loss_and_mask_follow_the_semantic_drop_not_the_label_drop():
    record = {}

    class Stub(torch.nn.Module):
        unconditional = build_unconditional("independent_mask", 6)

        def forward(self, z, t, y, f_t, drop=None):
            record.update(y=y, drop=drop)
            return torch.zeros_like(z), torch.zeros_like(f_t) + 1000.0 * drop.view(-1, 1, 1)

    f = torch.zeros(4000, 2, 6)
    cfg = DiffusionConfig(label_drop_prob=0.1, semantic_drop_prob=0.35)
    out = velocity_loss(Stub(), torch.zeros(4000, 3, 2, 2), torch.zeros(4000, dtype=torch.long),
                        cfg, 10, torch.Generator().manual_seed(0), semantic=f)
    label_dropped = record["y"] == 10
    assert (label_dropped != record["drop"]).any()               # independent draws
    # the configured rates (binomial sd ~0.0075 and ~0.0047 at n = 4000)
    assert record["drop"].float().mean().item() == pytest.approx(0.35, abs=0.03)
    assert label_dropped.float().mean().item() == pytest.approx(0.1, abs=0.02)
    assert out["sem"].item() == 0.0       # the huge error of semantics-dropped samples is ignored


# ----------------------------------------------------------------------- Table 4: calibration
def test_time_shift_endpoints_and_equal_snr():
    alpha = 0.485
    shift = ShiftedTime(alpha)
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    assert shift(torch.tensor(0.0)).item() == 0.0 and shift(torch.tensor(1.0)).item() == 1.0
    # SNR of features with RMS r at t' equals that of features scaled by alpha at t
    r = 1.7
    snr_shift = (shift(t) * r) ** 2 / (1 - shift(t)) ** 2
    snr_scaled = (t * alpha * r) ** 2 / (1 - t) ** 2
    assert torch.allclose(snr_shift, snr_scaled, rtol=1e-12)
    assert (shift(t[1:]) > shift(t[:-1])).all()                  # a clock: increasing


def test_calibrations_scale_the_features_or_the_time():
    assert build_calibration("rms", 0.5).feature_scale() == 0.5
    assert build_calibration("none", 0.5).feature_scale() == 1.0
    ts = build_calibration("time_shift", 0.5)
    assert ts.feature_scale() == 1.0 and isinstance(ts.stream_time(), ShiftedTime)
    assert set(CALIBRATIONS) == {"rms", "none", "time_shift"}


def test_time_shift_uses_t_prime_in_input_target_and_prediction():
    """A model that predicts the clean features exactly has zero semantic loss only if the
    prediction's and the target's velocities use the same t' (the official script mixes t, t')."""
    f = torch.randn(64, 4, 6)
    seen = {}

    class Exact(torch.nn.Module):
        unconditional = build_unconditional("joint_asymmetric_mask", 6)

        def forward(self, z, t, y, f_t, drop=None):
            seen.update(t=t, z_f=f_t)
            return torch.zeros_like(z), f.clone()

    shift = ShiftedTime(0.3)
    cfg = DiffusionConfig(label_drop_prob=0.0, P_mean=-0.3, P_std=1.1, noise_scale=0.7)
    g = torch.Generator().manual_seed(0)
    out = velocity_loss(Exact(), torch.zeros(64, 3, 2, 2), torch.zeros(64, dtype=torch.long),
                        cfg, 10, g, semantic=f, semantic_time=shift)
    assert out["sem"].item() == 0.0
    # and the semantic input was noised at t', not t (draws by hand: drops, t, pixel noise, semantic noise)
    g = torch.Generator().manual_seed(0)
    torch.rand(64, generator=g)
    t = torch.sigmoid(torch.randn(64, generator=g) * 1.1 - 0.3)
    torch.randn(64, 3, 2, 2, generator=g)
    eps = torch.randn(64, 4, 6, generator=g)
    tp = shift(t).view(-1, 1, 1)
    assert torch.allclose(seen["z_f"], tp * f + (1 - tp) * 0.7 * eps, atol=1e-6)


def test_sampler_integrates_a_time_shifted_stream_to_its_clean_value():
    """The shifted stream advances on its own clock t': with an oracle x-prediction every state
    lies exactly on its noising path t' f + (1 - t') eps, so it ends on f at t = 1."""
    x, f = torch.randn(2, 3, 4, 4), torch.randn(2, 5, 6)

    class Oracle(torch.nn.Module):
        def forward(self, z, t, y, f_t, drop=None):
            return x.repeat(len(z) // 2, 1, 1, 1), f.repeat(len(z) // 2, 1, 1)

    from vco.diffusion.flow import SameTime
    states = {}
    import vco.diffusion.sampler as S
    orig = S.guided_velocity

    def spy(model, zs, t, *a, **k):
        states["last"] = zs
        return orig(model, zs, t, *a, **k)

    S.guided_velocity = spy
    try:
        noise = [torch.randn(2, 3, 4, 4), torch.randn(2, 5, 6)]
        out = sample(Oracle(), torch.tensor([0, 1]), noise, SamplerConfig(steps=40, method="heun", cfg=1.0),
                     DiffusionConfig(t_eps=1e-4), null_label=10, stream_times=[SameTime(), ShiftedTime(0.4)])
    finally:
        S.guided_velocity = orig
    # last Euler step from t = 39/40: the shifted stream's state there is t' f + (1 - t') eps
    tp = ShiftedTime(0.4)(torch.tensor(39 / 40)).item()
    assert torch.allclose(states["last"][1], tp * f + (1 - tp) * noise[1], atol=1e-5)
    assert torch.allclose(out, x, atol=1e-5)


# ----------------------------------------------------------------------- Table 3: aux_loss
def test_repa_gradient_reaches_the_backbone_up_to_its_block_and_not_the_encoder():
    from vco.losses import RepaLoss
    from vco.losses.base import BuildContext
    from vco.losses.repa import RepaOptions
    from vco.semantic import build_encoder
    cfg = build_config("vco-tiny", overrides=["image_size=32", "semantic_dim=96", "hidden_size=32", "num_heads=2", "depth=6",
                                              "in_context_start=2", "in_context_len=2"])
    model = randomised(build_model(cfg.model)).train()
    encoder = build_encoder("mobilenet_v2", grid=8)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        target = encoder.patch_features(x)                        # (2, 64, 96), frozen
    repa = RepaLoss(RepaOptions(), BuildContext(cfg.model, cfg.diffusion))
    with model.tapping(repa.tap_block) as tap:
        model(x, torch.rand(2), torch.tensor([1, 2]), torch.randn(2, 64, 96))
    assert tap["hidden"].shape == (2, 64, 32)                     # in-context tokens excluded
    repa(hidden=tap["hidden"], f=target).backward()
    grads = lambda m: [p.grad for p in m.parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in grads(model.blocks[4].pixel))
    assert any(g is not None and g.abs().sum() > 0 for g in grads(model.x_embedder))
    assert all(g is None for g in grads(model.blocks[5]))          # after the tapped block: none
    assert all(g is None for g in grads(model.pixel_head))
    assert all(p.grad is None for p in encoder.parameters())
    assert all(p.grad is not None for p in repa.projector.parameters())


def test_every_aux_loss_trains_with_the_weight_its_run_records():
    """Table 3's rows are all registered (CHOICES below trains each registered name, so a row
    dropped from the registry would silently drop its training test too). For every loss the
    weight the objective multiplies it by is the one config.yaml records, by default and when set."""
    from vco.semantic import build_encoder
    assert set(AUX_LOSSES) == {"hybrid", "none", "repa", "perceptual", "drifting"}
    encoder = build_encoder("mobilenet_v2", grid=4)
    for name in AUX_LOSSES:
        cfg = tiny("depth=6", f"aux_loss={name}")                 # REPA taps block 4
        default = build_loss_terms(cfg, encoder)
        if AUX_LOSSES[name] is None:
            assert "aux" not in default
            continue
        assert default["aux"].weight == resolved_aux_loss(cfg)["weight"] > 0
        cfg = tiny("depth=6", f"aux_loss={name}", "aux_loss.weight=0.37")
        assert build_loss_terms(cfg, encoder)["aux"].weight == resolved_aux_loss(cfg)["weight"] == 0.37


# ----------------------------------------------------------------------- every choice trains
TRAIN_SMALL = ["image_size=16", "hidden_size=32", "depth=6", "num_heads=2", "bottleneck_dim=8",
               "in_context_len=2", "in_context_start=2", "stream_blocks=1", "precision=fp32",
               "data.name=synthetic", "synthetic_size=16", "batch_size=8", "classes_per_batch=2",
               "stats_images=16", "log_every=1", "warmup_steps=0", "train.steps=2"]
CHOICES = ([f"fusion={f}" for f in MODELS if f != "dual_stream"] + [f"uncond={u}" for u in UNCONDITIONAL]
           + [f"aux_loss={a}" for a in AUX_LOSSES] + [f"calibration={c}" for c in CALIBRATIONS])


@pytest.mark.parametrize("choice", CHOICES)
def test_each_choice_trains_resumes_and_samples(tmp_path, choice):
    cfg = build_config("vco-tiny", overrides=TRAIN_SMALL + [choice])
    run = tmp_path / "r"
    trainer = Trainer(cfg, run)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    result = trainer.train(progress=False)
    assert result["final_step"] == 2 and trainer.skipped == 0
    changed = [k for k, v in trainer.model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed                                               # the optimizer moved the weights
    assert Trainer(cfg, run, resume=True).step == 2              # its checkpoint loads back
    model, run_cfg, _ = load_run_model(run)
    assert run_cfg.semantic.scale is not None or choice == "fusion=none"
    from vco.sampling import generate
    images = generate(model, run_cfg, torch.tensor([0, 1]), batch_size=2, progress=False)
    assert images.shape == (2, 3, 16, 16) and images.dtype == torch.uint8


def test_repa_projector_is_checkpointed_and_resumed(tmp_path):
    cfg = build_config("vco-tiny", overrides=TRAIN_SMALL + ["aux_loss=repa"])
    trainer = Trainer(cfg, tmp_path / "r")
    trainer.train(progress=False)
    saved = load_tensors(tmp_path / "r", "aux")
    assert saved and set(saved) == set(trainer.aux_params)
    resumed = Trainer(cfg, tmp_path / "r", resume=True)
    for k, p in resumed.aux_params.items():
        assert torch.equal(p, trainer.aux_params[k])


# ----------------------------------------------------------------------- mask-free attention
def dense_attention(q, k, v, mask=None, dropout_p=0.0):
    """The reference: one SDPA call with the dense boolean mask."""
    dense = None if mask is None else mask.dense(q.shape[2])
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=dense, dropout_p=dropout_p)


@pytest.mark.parametrize("pixel_blind,semantic_blind", [(True, False), (True, True), (False, True)])
@pytest.mark.parametrize("pattern", ["scattered", "contiguous", "all", "none"])
def test_mask_free_attention_equals_the_dense_mask(pixel_blind, semantic_blind, pattern):
    from vco.nn.attention import StructuralMask, joint_attention
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(6, 2, 11, 8, generator=g) for _ in range(3))
    drop = {"scattered": [True, False, False, True, True, False], "contiguous": [False] * 3 + [True] * 3,
            "all": [True] * 6, "none": [False] * 6}[pattern]
    mask = StructuralMask(torch.tensor(drop), 4, pixel_blind, semantic_blind)
    assert torch.allclose(joint_attention(q, k, v, mask), dense_attention(q, k, v, mask), atol=1e-6)


@pytest.mark.parametrize("fusion,uncond", [(f, u) for f in ("dual_stream", "token_concat")
                                           for u in ("joint_asymmetric_mask", "joint_symmetric_mask",
                                                     "independent_mask")])
def test_models_with_mask_free_attention_equal_the_dense_mask_reference(fusion, uncond, monkeypatch):
    model = randomised(build_model(tiny(f"fusion={fusion}", f"uncond={uncond}").model))
    assert_mask_free_equals_dense(model, batch(4), torch.tensor([True, False, True, False]), monkeypatch)


def assert_mask_free_equals_dense(model, inputs, drop, monkeypatch):
    """The model's outputs with the mask-free attention equal those with the dense mask."""
    import vco.nn.attention as A
    import vco.nn.dual_stream as D
    x, t, y, f = inputs
    fast = model(x, t, y, f, drop)
    monkeypatch.setattr(A, "joint_attention", dense_attention)
    monkeypatch.setattr(D, "joint_attention", dense_attention)
    ref = model(x, t, y, f, drop)
    for a, b in zip(fast, ref):
        assert torch.allclose(a, b, atol=1e-5)


def test_training_puts_dropped_samples_last_without_changing_the_loss():
    """The reorder only changes summation order: the loss equals the one computed in the
    original order by hand (same draws: drop, t, noise)."""
    model = randomised(build_model(tiny().model)).train()
    x, y = torch.randn(8, 3, 16, 16), torch.arange(8) % 10
    f = torch.randn(8, 16, 6)
    cfg = DiffusionConfig(label_drop_prob=0.5, P_mean=0.2, P_std=1.3, t_eps=0.2)
    seen = []
    model.register_forward_hook(lambda m, args, kwargs, out: seen.append(kwargs.get("drop")), with_kwargs=True)
    out = velocity_loss(model, x, y, cfg, 10, torch.Generator().manual_seed(3), semantic=f)
    assert seen[0].tolist() == sorted(seen[0].tolist())          # kept first, dropped last
    g = torch.Generator().manual_seed(3)                          # the same draws, by hand
    drop = torch.rand(8, generator=g) < 0.5
    assert 0 < drop.sum() < 8                                     # the reorder has work to do
    t = torch.sigmoid(torch.randn(8, generator=g) * 1.3 + 0.2)
    assert (1 - t < 0.2).any()                                    # the t_eps clamp is exercised
    z = t.view(-1, 1, 1, 1) * x + (1 - t.view(-1, 1, 1, 1)) * torch.randn(8, 3, 16, 16, generator=g)
    z_f = t.view(-1, 1, 1) * f + (1 - t.view(-1, 1, 1)) * torch.randn(8, 16, 6, generator=g)
    x_pred, f_pred = model(z, t, torch.where(drop, 10, y), z_f, drop)
    den = lambda a: (1 - t).clamp(min=0.2).view(-1, *[1] * (a.dim() - 1))
    pix = (((x - x_pred) / den(x)) ** 2).mean()
    sem = (((f - f_pred) / den(f)) ** 2).mean((1, 2))[~drop].mean()
    assert out["pix"].item() == pytest.approx(pix.item(), rel=1e-5)
    assert out["sem"].item() == pytest.approx(sem.item(), rel=1e-5)

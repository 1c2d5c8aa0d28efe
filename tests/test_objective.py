"""The training objective as components: loss terms that declare their inputs and own their
options, chosen by name; configs that record every option; CLI defaults that never beat a preset."""
import dataclasses
import json
from dataclasses import dataclass

import pytest
import torch
from helpers import velocity_loss

from vco.cli import main
from vco.config import ConfigError, DiffusionConfig, build_config, load_config
from vco.losses import AUX_LOSSES, build_loss_terms
from vco.losses.base import LossTerm
from vco.models import build_model
from vco.train import Trainer

SMALL = ["image_size=16", "hidden_size=32", "depth=3", "num_heads=2", "bottleneck_dim=8",
         "in_context_len=2", "in_context_start=1", "precision=fp32", "data.name=synthetic",
         "synthetic_size=64", "stats_images=16", "classes_per_batch=2", "batch_size=8", "log_every=1",
         "warmup_steps=0", "train.steps=2", "ckpt_every=100"]


# ------------------------------------------------------------------ a new loss: its file + one line
@dataclass
class ToyOptions:
    weight: float = 0.5
    power: float = 2.0


class ToyLoss(LossTerm):
    """mean |x_pred - x|^power * t * (1 + y): needs (x_pred, x, y, t), as a new loss might."""
    inputs = ("x_pred", "x", "y", "t")
    Options = ToyOptions
    seen: list = []

    def forward(self, *, x_pred, x, y, t):
        ToyLoss.seen.append({"x_pred": x_pred, "x": x, "y": y, "t": t})
        per = (x_pred - x).abs().pow(self.options.power).flatten(1).mean(1)
        return (per * t * (1 + y.float())).mean()


def test_a_loss_registered_from_outside_trains_with_its_own_options(tmp_path, monkeypatch):
    monkeypatch.setitem(AUX_LOSSES, "toy", ToyLoss)          # the one registry line
    ToyLoss.seen.clear()
    cfg = build_config("vco-tiny", overrides=SMALL + ["aux_loss=toy", "aux_loss.power=3"])
    trainer = Trainer(cfg, tmp_path / "r")
    trainer.train(progress=False)
    assert trainer.step == 2 and len(ToyLoss.seen) == 2      # called once per step
    got = ToyLoss.seen[0]
    assert got["x_pred"].requires_grad and got["x"].shape == got["x_pred"].shape
    assert got["t"].shape == got["y"].shape == (8,) and ((0 < got["t"]) & (got["t"] < 1)).all()
    record = json.loads((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()[-1])
    # the total is L_pix + 0.1 L_sem + 0.5 L_toy, each logged under its slot
    assert record["loss"] == pytest.approx(record["pix"] + 0.1 * record["sem"] + 0.5 * record["aux"],
                                           rel=1e-4)
    saved = load_config(tmp_path / "r" / "config.yaml").semantic.aux_loss
    assert saved == {"name": "toy", "weight": 0.5, "power": 3.0}   # every option recorded


def test_terms_get_exactly_the_tensors_they_declare():
    cfg = build_config("vco-tiny", overrides=SMALL + ["aux_loss=repa", "aux_loss.tap_block=1"])
    terms = build_loss_terms(cfg)
    assert set(terms) == {"pix", "sem", "aux"}
    assert terms["aux"].inputs == ("hidden", "f") and terms["aux"].tap_block == 1
    assert terms["sem"].weight == 0.1 and terms["aux"].weight == 0.1
    jit = build_loss_terms(build_config("jit-tiny", overrides=SMALL))
    assert set(jit) == {"pix"}                                # one property: co_denoising

    class Undeclared(LossTerm):
        inputs = ("x_pred", "logits")

    with pytest.raises(TypeError, match="logits"):
        Undeclared(Undeclared.Options(), None)


def test_objective_total_is_the_weighted_sum_computed_by_hand():
    """L = L_pix + w L_sem with both v-losses by hand (a stub model that predicts zeros)."""
    from vco.models.unconditional import build_unconditional

    class Zeros(torch.nn.Module):
        unconditional = build_unconditional("joint_asymmetric_mask", 5)

        def forward(self, z, t, y, f_t, drop=None):
            return torch.zeros_like(z), torch.zeros_like(f_t)

    x, f = torch.randn(6, 3, 4, 4), torch.randn(6, 4, 5)
    out = velocity_loss(Zeros(), x, torch.zeros(6, dtype=torch.long), DiffusionConfig(label_drop_prob=0.0),
                        10, torch.Generator().manual_seed(0), semantic=f, semantic_weight=0.3)
    g = torch.Generator().manual_seed(0)
    torch.rand(6, generator=g)                                # the drops
    t = torch.sigmoid(torch.randn(6, generator=g) * 0.8 - 0.8)
    den = (1 - t).clamp(min=0.05)
    pix = ((x / den.view(-1, 1, 1, 1)) ** 2).mean()          # v - v_hat = (x - 0) / (1 - t)
    sem = ((f / den.view(-1, 1, 1)) ** 2).mean()
    assert out["pix"].item() == pytest.approx(pix.item(), rel=1e-5)
    assert out["sem"].item() == pytest.approx(sem.item(), rel=1e-5)
    assert out["loss"].item() == pytest.approx(pix.item() + 0.3 * sem.item(), rel=1e-5)


# ------------------------------------------------------------------ component options in configs
def test_component_options_are_validated_and_reset_when_the_component_changes(tmp_path):
    with pytest.raises(ConfigError, match="gate_tau, repulsion_tau"):      # names the valid ones
        Trainer(build_config("vco-tiny", overrides=SMALL + ["aux_loss.gate_ta=5"]), tmp_path / "a")
    cfg = build_config("vco-tiny", overrides=["aux_loss.gate_tau=5"])
    assert cfg.semantic.aux_loss == {"name": "hybrid", "gate_tau": 5}
    path = tmp_path / "c.yaml"
    path.write_text("semantic:\n  aux_loss: {name: hybrid, weight: 10.0, gate_tau: 5.0}\n")
    # another loss starts from its own defaults: hybrid's options do not leak into repa
    assert build_config("vco-tiny", path, ["aux_loss=repa"]).semantic.aux_loss == {"name": "repa"}
    assert build_config("vco-tiny", path, ["aux_loss.weight=3"]).semantic.aux_loss == \
        {"name": "hybrid", "weight": 3, "gate_tau": 5.0}
    with pytest.raises(ConfigError, match="must be a float"):
        build_loss_terms(build_config("vco-tiny", overrides=["aux_loss.gate_tau=warm"]))


def test_configs_written_before_components_read_as_today():
    """config.yaml of older runs: flat semantic.gate_tau / aux_weight and plain names."""
    from vco.config import from_dict, to_dict
    old = to_dict(build_config("vco-tiny"))
    old["semantic"].update(aux_loss="hybrid", calibration="time_shift", gate_tau=7.0,
                           repulsion_tau=0.2, aux_weight=None)
    sem = from_dict(old).semantic
    assert sem.aux_loss == {"name": "hybrid", "gate_tau": 7.0, "repulsion_tau": 0.2}
    assert sem.calibration == {"name": "time_shift"}


def test_time_shift_alpha_is_its_own_option():
    from vco.semantic.calibration import ShiftedTime, build_calibration
    measured = build_calibration({"name": "time_shift"}, 0.4).stream_time()
    fixed = build_calibration({"name": "time_shift", "alpha": 0.7}, 0.4).stream_time()
    assert isinstance(measured, ShiftedTime) and measured.alpha == 0.4 and fixed.alpha == 0.7
    assert build_calibration("rms", 0.4).feature_scale() == 0.4


# ------------------------------------------------------------------ DDP wraps what trains
def test_the_objective_holds_every_trainable_parameter(tmp_path):
    """REPA's projector trains inside the objective module, so DDP reduces its gradients."""
    cfg = build_config("vco-tiny", overrides=SMALL + ["aux_loss=repa", "aux_loss.tap_block=1",
                                                     "aux_loss.projector_dim=16"])
    trainer = Trainer(cfg, tmp_path / "r")
    trainable = {id(p) for p in trainer.objective.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in trainer.params.values()}
    assert any(n.startswith("aux.projector") for n in trainer.params)


# ------------------------------------------------------------------ CLI: the preset wins
def test_stats_follows_the_presets_encoder_not_a_cli_default(tmp_path, capsys, monkeypatch):
    """vco-b16's encoder is DINOv2 with 768 channels: without weights (offline) the error must
    name DINOv2; MobileNetV2 statistics with 96 channels would be wrong for that model."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))      # an empty hub cache
    code = main(["stats", "--preset", "vco-b16", "--out", str(tmp_path / "s.safetensors")])
    err = capsys.readouterr().err
    assert code == 2 and "dinov2" in err.lower() and "mobilenet" not in err.lower()
    assert not (tmp_path / "s.safetensors").exists()
    cfg = build_config("vco-b16")
    assert (cfg.semantic.encoder, cfg.model.semantic_dim) == ("dinov2", 768)


def test_encoder_path_reaches_every_encoder(tmp_path):
    """semantic.encoder_path is the weights of whichever encoder is named (it used to be passed
    to DINOv2 only, silently ignored for MobileNetV2)."""
    cfg = build_config("vco-tiny", overrides=[f"semantic.encoder_path={tmp_path / 'missing.pth'}"])
    from vco.semantic.stream import encoder_from_config
    with pytest.raises((FileNotFoundError, ValueError, OSError), match="missing.pth"):
        encoder_from_config(cfg)


def test_info_prints_the_resolved_options(capsys):
    assert main(["info", "--preset", "vco-tiny", "--set", "aux_loss=repa"]) == 0
    out = capsys.readouterr().out
    assert "tap_block: 4" in out and "projector_dim: 2048" in out and "aux_loss_params=" in out


def test_a_jit_model_ignores_the_semantic_arguments():
    model = build_model(build_config("jit-tiny", overrides=SMALL).model)
    x, t, y = torch.randn(2, 3, 16, 16), torch.rand(2), torch.tensor([0, 1])
    a, none = model(x, t, y)
    b, _ = model(x, t, y, f=torch.randn(2, 16, 4), drop=torch.tensor([True, False]))
    assert none is None and torch.equal(a, b)
    assert dataclasses.is_dataclass(build_config("jit-tiny").model) and \
        build_config("jit-tiny").model.co_denoising is False


def test_bf16_runs_hold_the_frozen_encoder_in_bf16(tmp_path):
    """The encoder is cast once (not at every call under autocast); the model stays fp32 (its
    optimizer and EMAs need the full-precision weights); the step is finite."""
    cfg = build_config("vco-tiny", overrides=SMALL + ["precision=bf16", "train.steps=1"])
    trainer = Trainer(cfg, tmp_path / "r")
    assert {p.dtype for p in trainer.semantic.encoder.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}
    trainer.train(progress=False)
    record = json.loads((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["loss"] is not None and record["skipped_steps"] == 0

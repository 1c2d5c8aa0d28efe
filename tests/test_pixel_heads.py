"""Pixel heads (model.pixel_head): the linear default keeps JiT's numbers and names; the opt-in
conv head starts at JiT's zero output and mixes across patch borders, and only by its kernel."""
import pytest
import torch

from vco.components import ConfigError
from vco.config import build_config, from_dict, to_dict
from vco.models import build_model
from vco.nn.layers import FinalLayer, unpatchify
from vco.nn.pixel_heads import ConvHeadOptions, ConvPixelHead, LinearPixelHead


def randomised(head: torch.nn.Module) -> torch.nn.Module:
    """Every weight random (the zero-initialised linears included), so outputs depend on inputs."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(0, 0.3)
    return head


def test_linear_head_is_the_final_layer_unpatchified():
    head = randomised(LinearPixelHead(hidden=8, patch=2, channels=3))
    reference = FinalLayer(8, 2 * 2 * 3)
    reference.load_state_dict(head.state_dict())        # the same parameter names as JiT's layer
    x, c = torch.randn(2, 16, 8), torch.randn(2, 8)
    torch.testing.assert_close(head(x, c), unpatchify(reference(x, c), 2, 3), rtol=0, atol=0)


@pytest.mark.parametrize("preset,head", [("jit-tiny", "final_layer"), ("vco-tiny", "pixel_head")])
def test_the_default_head_keeps_the_checkpoint_names(preset, head):
    keys = set(build_model(build_config(preset).model).state_dict())
    assert {f"{head}.linear.weight", f"{head}.linear.bias", f"{head}.norm_final.weight",
            f"{head}.adaLN_modulation.1.weight"} <= keys
    assert not any(k.startswith(f"{head}.decode") or k.startswith(f"{head}.mix") for k in keys)


def border_reach(head: torch.nn.Module, token: int, grid: int, patch: int) -> set[tuple[int, int]]:
    """Pixels (row, col) of the output that change when only token ``token``'s state changes."""
    x, c = torch.randn(1, grid * grid, 8), torch.randn(1, 8)
    moved = x.clone()
    moved[0, token] += 1.0
    with torch.no_grad():
        diff = (head(moved, c) - head(x, c)).abs().amax(dim=1)[0]     # (H, W)
    return {(int(r), int(q)) for r, q in zip(*torch.nonzero(diff > 1e-6, as_tuple=True))}


def test_only_the_conv_head_reaches_across_patch_borders_and_only_by_its_kernel():
    grid, patch, token = 4, 2, 5                      # token 5 is patch (row 1, col 1): pixels 2..3
    own = {(r, q) for r in (2, 3) for q in (2, 3)}
    linear = randomised(LinearPixelHead(8, patch, 3))
    assert border_reach(linear, token, grid, patch) == own
    conv = randomised(ConvPixelHead(8, patch, 3, ConvHeadOptions(features=4, kernel=3)))
    grown = {(r, q) for r in range(1, 5) for q in range(1, 5)}        # one pixel beyond each border
    assert border_reach(conv, token, grid, patch) == grown


def test_conv_head_starts_at_zero_and_trains_every_part():
    cfg = build_config("jit-tiny", overrides=["model.depth=2", "pixel_head=conv"]).model
    model = build_model(cfg)
    x, t, y = torch.randn(4, 3, 28, 28), torch.rand(4), torch.tensor([0, 1, 2, 3])
    out, _ = model(x, t, y)
    assert out.shape == x.shape and out.abs().max() == 0          # JiT's zero-initialised output
    ((model(x, t, y)[0] - x) ** 2).mean().backward()
    head = model.final_layer
    assert head.decode.linear.weight.grad.abs().sum() > 0          # reached through the random conv
    assert head.mix.weight.grad is not None and head.mix.bias.grad.abs().sum() > 0


def test_conv_head_on_the_co_denoising_model():
    cfg = build_config("vco-tiny", overrides=["model.depth=2", "pixel_head=conv", "pixel_head.features=8"]).model
    model = build_model(cfg)
    assert model.pixel_head.mix.in_channels == 8
    x_pred, f_pred = model(torch.randn(2, 3, 28, 28), torch.rand(2), torch.tensor([1, 2]),
                           torch.randn(2, 49, 32), torch.tensor([False, True]))
    assert x_pred.shape == (2, 3, 28, 28) and f_pred.shape == (2, 49, 32)


def test_pixel_head_config_round_trips_and_bad_options_are_named():
    cfg = build_config("jit-tiny", overrides=["pixel_head=conv", "pixel_head.kernel=5"])
    assert cfg.model.pixel_head == {"name": "conv", "kernel": 5}
    assert from_dict(to_dict(cfg)).model.pixel_head == cfg.model.pixel_head
    with pytest.raises(ConfigError, match="unknown model.pixel_head 'conv3'"):
        build_model(build_config("jit-tiny", overrides=["pixel_head=conv3"]).model)
    with pytest.raises(ConfigError, match="has no option 'width'"):
        build_model(build_config("jit-tiny", overrides=["pixel_head=conv", "pixel_head.width=3"]).model)
    with pytest.raises(ValueError, match="kernel must be odd"):
        build_model(build_config("jit-tiny", overrides=["pixel_head=conv", "pixel_head.kernel=4"]).model)

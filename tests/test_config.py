"""Configs: presets, YAML round trip, typed overrides, helpful errors."""
import pytest

from vco.config import ConfigError, build_config, load_config, save_config


def test_yaml_round_trip(tmp_path):
    cfg = build_config("jit-b16", overrides=["train.steps=7", "model.depth=3"])
    save_config(cfg, tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert again == cfg and again.train.steps == 7 and again.model.depth == 3
    assert isinstance(again.train.betas, tuple)
    via_file = build_config(config_file=tmp_path / "c.yaml", overrides=["cfg=1.5"])
    assert via_file.sampler.cfg == 1.5 and via_file.model.depth == 3


def test_unknown_preset():
    with pytest.raises(ConfigError, match="jit-b16"):
        build_config("jit-b61")


def test_presets_differ_only_in_numbers():
    tiny, b = build_config("jit-tiny"), build_config("jit-b16")
    assert (b.model.depth, b.model.hidden_size, b.model.num_heads, b.model.bottleneck_dim,
            b.model.in_context_start) == (12, 768, 12, 128, 4)
    assert tiny.model.image_size == 32 and tiny.model.patch_size == 4

"""Configs: presets, YAML round trip, typed overrides, helpful errors."""
import dataclasses
import re

import pytest
import yaml

from vco.config import (Config, ConfigError, build_config, from_dict, load_config, preset_names,
                        resolve_key, save_config, to_dict, to_yaml)


def test_yaml_round_trip(tmp_path):
    cfg = build_config("jit-b16", overrides=["train.steps=7", "model.depth=3"])
    save_config(cfg, tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert again == cfg and again.train.steps == 7 and again.model.depth == 3
    assert isinstance(again.train.betas, tuple)
    via_file = build_config(config_file=tmp_path / "c.yaml", overrides=["cfg=1.5"])
    assert via_file.sampler.cfg == 1.5 and via_file.model.depth == 3


@pytest.mark.parametrize("preset", preset_names())
def test_every_preset_survives_the_yaml_round_trip(preset, tmp_path):
    """What a run folder stores (config.yaml) reads back as the very config that was run: every
    leaf, with its type (tuples stay tuples, ints stay ints, None stays None)."""
    cfg = build_config(preset)
    assert from_dict(yaml.safe_load(to_yaml(cfg))) == cfg
    save_config(cfg, tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert again == cfg
    # and the preset named inside the file rebuilds it too (the --config path)
    assert build_config(config_file=tmp_path / "c.yaml") == cfg
    for sec in dataclasses.fields(Config):
        a, b = getattr(cfg, sec.name), getattr(again, sec.name)
        if dataclasses.is_dataclass(a):
            for f in dataclasses.fields(a):
                assert type(getattr(a, f.name)) is type(getattr(b, f.name)), f"{sec.name}.{f.name}"


def test_unknown_preset_suggests_the_nearest():
    # the message lists every preset anyway, so match the suggestion itself
    with pytest.raises(ConfigError, match=r"Did you mean jit-b16\b"):
        build_config("jit-b61")
    with pytest.raises(ConfigError, match=r"Did you mean vco-tiny\b"):
        build_config("vco-tiyn")


def _leaf_paths():
    return [f"{sec.name}.{f.name}" for sec in dataclasses.fields(Config)
            if dataclasses.is_dataclass(sec.default_factory) for f in dataclasses.fields(sec.default_factory)]


def _typos(path):
    """A deleted and a transposed character in the leaf name, as a full path and bare."""
    sec, leaf = path.split(".")
    i = len(leaf) // 2
    deleted, swapped = leaf[:i] + leaf[i + 1:], leaf[:i - 1] + leaf[i] + leaf[i - 1] + leaf[i + 1:]
    return [f"{sec}.{deleted}", f"{sec}.{swapped}", deleted]


def test_every_misspelt_key_suggests_the_key_first():
    """For every config leaf, a one-character typo (deleted or swapped, with or without its
    section) is refused and the first suggestion is the intended key, not just some key."""
    paths = _leaf_paths()
    assert len(paths) > 40                                        # the walk found the leaves
    checked = 0
    for path in paths:
        for typo in _typos(path):
            if typo in paths or typo == path.split(".")[1]:
                continue                                          # the typo is a real key
            with pytest.raises(ConfigError, match="unknown config key") as e:
                resolve_key(typo)
            suggestions = re.findall(r"'([^']+)'", str(e.value))[1:]
            assert suggestions and suggestions[0] in (path, path.split(".")[1]), (typo, suggestions)
            checked += 1
    assert checked > 100


def test_unknown_key_in_a_config_file_suggests_the_nearest(tmp_path):
    (tmp_path / "c.yaml").write_text("model:\n  hiden_size: 64\n")
    with pytest.raises(ConfigError, match=r"Did you mean 'model\.hidden_size'"):
        build_config("jit-tiny", config_file=tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("modle:\n  depth: 3\n")
    with pytest.raises(ConfigError, match=r"Did you mean 'model\.depth'"):
        load_config(tmp_path / "d.yaml")


def test_an_ambiguous_leaf_names_every_section_it_could_mean():
    with pytest.raises(ConfigError, match=r"ambiguous.*sampler\.steps.*train\.steps"):
        build_config("jit-tiny", overrides=["steps=3"])


# ----------------------------------------------------------------------------- preset families
# Presets of one family run the same recipe at another size: they may differ only in numbers.
FAMILIES = {
    "jit-imagenet": ["jit-b16", "jit-l16", "jit-h16", "jit-b16-wide"],
    "vco-imagenet": ["vco-b16", "vco-l16", "vco-h16"],
    "jit-cpu": ["jit-tiny", "jit-tiny-wide"],
    "vco-cpu": ["vco-tiny"],
}


def _leaves(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def resolved(preset):
    """Every leaf of the resolved preset, except its own name."""
    return {k: v for k, v in _leaves(to_dict(build_config(preset))) if k != "preset"}


def is_number(v):
    if isinstance(v, (list, tuple)):
        return len(v) > 0 and all(is_number(x) for x in v)
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def differences(a, b):
    """{leaf: (value in a, value in b)} of the leaves whose values differ."""
    a, b = resolved(a), resolved(b)
    assert a.keys() == b.keys()
    return {k: (a[k], b[k]) for k in a if a[k] != b[k]}


def non_numeric(diff):
    """The differences that are not number against number: strings, bools, None, ..."""
    return {k: v for k, v in diff.items() if not (is_number(v[0]) and is_number(v[1]))}


def test_families_cover_every_preset():
    """A new preset must join a family, or it would escape the test below."""
    members = [p for f in FAMILIES.values() for p in f]
    assert sorted(members) == preset_names()


@pytest.mark.parametrize("family", [f for f, m in FAMILIES.items() if len(m) > 1])
def test_presets_differ_only_in_numbers(family):
    """Within a family, every pair of presets differs in some leaf (else one is redundant) and
    only in numeric leaves (ints, floats, tuples of them): never in a fusion, uncond definition,
    encoder, aux loss, calibration, precision, dataset, a bool or a None-vs-value."""
    members = FAMILIES[family]
    for i, a in enumerate(members):
        for b in members[i + 1:]:
            diff = differences(a, b)
            assert diff, f"{a} and {b} are the same config"
            assert non_numeric(diff) == {}, f"{a} vs {b}"


def test_the_vco_recipe_is_the_same_change_at_every_size():
    """jit-X -> vco-X changes the same non-numeric leaves to the same values at B, L and H (the
    V-Co recipe does not depend on the size), and turns JiT into a co-denoising model."""
    changes = {size: non_numeric(differences(f"jit-{size}", f"vco-{size}")) for size in ("b16", "l16", "h16")}
    assert changes["b16"] == changes["l16"] == changes["h16"]
    assert changes["b16"]["model.fusion"][0] == "none" and build_config("vco-b16").model.co_denoising
    # the CPU pair makes the same architectural choice
    tiny = non_numeric(differences("jit-tiny", "vco-tiny"))
    assert tiny["model.fusion"] == changes["b16"]["model.fusion"]


@pytest.mark.parametrize("small,large", [("jit-tiny", "jit-b16"), ("vco-tiny", "vco-b16")])
def test_cpu_presets_run_the_imagenet_recipe_on_cpu_data(small, large):
    """The CPU presets change only what a CPU needs: the dataset, and for V-Co the offline
    encoder (whose path and measured scale go with it). Every other string/bool (fusion, uncond,
    aux loss, calibration, precision, sampler, ...) is the ImageNet recipe's."""
    allowed = {"data.name", "semantic.encoder", "semantic.encoder_path", "semantic.scale"}
    assert set(non_numeric(differences(small, large))) <= allowed
    assert "data.name" in non_numeric(differences(small, large))


# ---------------------------------------------------------------- value ranges
def test_every_range_names_a_real_key():
    from vco.config import _leaf_paths
    from vco.config_ranges import RANGES
    assert set(RANGES) <= set(_leaf_paths(Config()))


@pytest.mark.parametrize("override, message", [
    ("batch_size=0", "train.batch_size must be >= 1, got 0"),
    ("train.steps=0", "train.steps must be >= 1, got 0"),
    ("train.steps=-5", "train.steps must be >= 1, got -5"),
    ("ckpt_every=0", "train.ckpt_every must be >= 1, got 0"),
    ("log_every=0", "train.log_every must be >= 1, got 0"),
    ("blr=.nan", "train.blr must be a finite number, got nan"),
    ("sampler.cfg=.inf", "sampler.cfg must be a finite number, got inf"),
    ("sampler.cfg=-1", "sampler.cfg must be >= 0, got -1"),
    ("ema_decays=[0.99,1.0]", "train.ema_decays must be >= 0 and < 1, got 1.0"),
    ("label_drop_prob=1.5", "diffusion.label_drop_prob must be >= 0 and <= 1, got 1.5"),
    ("t_eps=0", "diffusion.t_eps must be > 0 and < 1, got 0"),
    ("patch_size=5", "model.image_size (28) must be a multiple of model.patch_size (5)"),
    ("num_heads=5", "model.hidden_size (192) must be a multiple of model.num_heads (5)"),
    ("interval_max=0.05", "sampler.interval_min (0.1) must be <= sampler.interval_max (0.05)"),
])
def test_out_of_range_values_name_the_key_and_the_range(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        build_config("jit-tiny", overrides=[override])


def test_a_config_file_is_checked_as_it_is_read(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"train": {"batch_size": 0}}))
    with pytest.raises(ConfigError, match="train.batch_size must be >= 1"):
        load_config(path)


@pytest.mark.parametrize("preset", preset_names())
def test_every_preset_is_within_range(preset):
    build_config(preset)   # raises if a preset's own value were out of range

"""Configs: plain dataclasses grouped by concern, named presets, YAML in/out, ``key=value`` overrides.

OmegaConf does the typed merging (YAML files and ``--set`` lists are validated against the
dataclass types); this module adds the presets and friendly error messages.
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .components import COMPONENTS, ConfigError, component_spec
from .config_ranges import check_ranges
from .files import atomic_write_text
from .presets import PAPER_DINOV2_B_SCALE, PRESETS, merge, preset_names  # noqa: F401 (re-exported)


@dataclass
class ModelConfig:
    # Table 1: none (single-stream JiT) | dual_stream (V-Co) | token_concat | channel_concat | direct_add
    fusion: str = "none"
    stream_blocks: int = 1            # shared-trunk fusions: blocks of each stream after the trunk
    # Table 2: joint_asymmetric_mask | joint_symmetric_mask | independent_mask |
    #          input_dropout_zeros | input_dropout_learned (co-denoising models only)
    uncond: str = "joint_asymmetric_mask"
    image_size: int = 32
    patch_size: int = 4
    in_channels: int = 3
    hidden_size: int = 256
    depth: int = 6
    num_heads: int = 4
    mlp_ratio: float = 4.0            # SwiGLU hidden = int(mlp_ratio * H * 2/3)
    bottleneck_dim: int = 32          # rank of the patch embedding
    in_context_len: int = 8           # number of in-context class tokens (0 disables)
    in_context_start: int = 2         # block index before which they are prepended
    num_classes: int = 10
    attn_dropout: float = 0.0         # applied to the middle half of the blocks, as JiT does
    proj_dropout: float = 0.0
    semantic_dim: int = 96            # channels of the semantic patch features (V-Co stream)
    semantic_bottleneck: int = 0      # rank of the semantic input projection; 0 = bottleneck_dim
    # A component (nn/pixel_heads.py): linear (JiT, V-Co) | conv (opt-in: a convolution across
    # patch borders after the patch decoder)
    pixel_head: Dict[str, Any] = field(default_factory=lambda: {"name": "linear"})

    @property
    def co_denoising(self) -> bool:
        """Whether the model denoises a semantic stream beside the pixels (the one place that
        answers it: every fusion but 'none' is a co-denoising model)."""
        return self.fusion != "none"


@dataclass
class DiffusionConfig:
    P_mean: float = -0.8              # t = sigmoid(N(P_mean, P_std)); t = 1 is clean
    P_std: float = 0.8
    noise_scale: float = 1.0
    t_eps: float = 0.05               # clamp of the (1 - t) denominators
    label_drop_prob: float = 0.1      # CFG training dropout (joint: label and semantics)
    semantic_drop_prob: float = 0.2   # independent uncond definitions: semantic dropout


@dataclass
class SamplerConfig:
    method: str = "heun"              # heun (last interval Euler) | euler
    steps: int = 50
    cfg: float = 1.0                  # guidance scale w of the pixel stream
    cfg_semantic: Optional[float] = None  # w of the semantic stream (V-Co); None: the same as cfg
    interval_min: float = 0.1         # guidance only for interval_min < t < interval_max
    interval_max: float = 1.0


@dataclass
class DataConfig:
    name: str = "fashion-mnist"       # fashion-mnist | fashion-mnist-test | synthetic | folder | imagenet
    path: Optional[str] = None        # root of the data (default location if None)
    hflip: bool = True
    num_workers: int = 0
    synthetic_size: int = 512         # number of images of the synthetic dataset
    classes_per_batch: int = 0        # >0: class-balanced micro-batches of this many classes
    manifest: Optional[str] = None    # folder data: a `vco data check` manifest (its readable files)
    max_image_pixels: int = 178_956_970  # folder data: larger claimed sizes are decompression bombs
                                         # (PIL's own error threshold, 2 x its warning limit)
    max_bad_images: int = 100         # folder data: unreadable files replaced (logged) before a stop


@dataclass
class SemanticConfig:
    """The semantic stream of V-Co: frozen encoder, calibration, loss weights.

    ``calibration`` and ``aux_loss`` are components chosen by name: a mapping
    ``{name: ..., option: value, ...}`` whose options belong to that component (its own dataclass,
    next to its code, declares them and their defaults). ``--set aux_loss=repa`` picks a component
    with its default options; ``--set aux_loss.tap_block=3`` sets one option.
    """
    encoder: str = "mobilenet_v2"     # mobilenet_v2 (offline stand-in) | dinov2 | dinov2_random (benchmarks)
    encoder_path: Optional[str] = None  # the encoder's weights: dinov2 a local folder or hub id;
                                        # mobilenet_v2 a torchvision-format state dict
    encoder_layer: int = 0            # mobilenet_v2: tokens from features[:layer] (its stride sets the
                                      # input size: grid x stride); 0 = its default, 14 (96 ch, stride 16)
    stats: Optional[str] = None       # `vco stats` file or RAE stat.pt; None: computed at start
    cache: Optional[str] = None       # a `vco cache` folder, or auto (built once per encoder+data)
    stats_images: int = 2048          # images used when the statistics are computed at start
    scale: Optional[float] = None     # RMS ratio s = RMS(pixels) / RMS(features); None: measured
    loss_weight: float = 0.1          # lambda_d of the semantic v-loss
    # Table 4: rms (features x s) | none | time_shift (options: alpha, default s)
    calibration: Dict[str, Any] = field(default_factory=lambda: {"name": "rms"})
    # Table 3: hybrid | none | repa | perceptual | drifting (options: weight and the loss's own)
    aux_loss: Dict[str, Any] = field(default_factory=lambda: {"name": "hybrid"})


@dataclass
class TrainConfig:
    steps: int = 2000
    batch_size: int = 64              # per rank, per micro-step (global: x grad_accum x ranks)
    grad_accum: int = 1
    blr: float = 5e-5                 # lr = blr * global_batch / 256
    warmup_steps: int = 100
    lr_schedule: str = "constant"     # after warmup: constant (JiT) | cosine | linear (vco.train.lr)
    lr_decay_steps: int = 0           # where a decay ends (0: train.steps)
    lr_final_ratio: float = 0.0       # the lr there, as a fraction of the peak
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    adamw: str = "auto"               # auto | fused | foreach | loop (auto: fused; foreach under FSDP)
    ema_decays: tuple[float, float] = (0.9999, 0.9996)
    ema_warmup: bool = True           # decay_t = min(decay, (1 + t) / (10 + t)): useful weights early
    # post-hoc EMA (vco ema / vco eval --ema-sweep): two power-function EMAs of these relative
    # widths, both saved every posthoc_ema_every steps (disk: 2 x params x 4 bytes per snapshot)
    posthoc_ema: bool = False
    posthoc_ema_widths: tuple[float, float] = (0.05, 0.10)
    posthoc_ema_every: int = 500
    precision: str = "auto"           # auto | bf16 | fp32 (auto: bf16 where the hardware has it)
    seed: int = 0
    log_every: int = 10
    # where metrics go besides metrics.jsonl: tensorboard (RUN/tb) and/or wandb (vco.train.loggers)
    loggers: tuple[str, ...] = ("tensorboard",)
    wandb_project: str = "vco"
    wandb_entity: str = ""            # a W&B team; "" = your default entity
    wandb_name: str = ""              # the W&B run name; "" = the run folder's name
    ckpt_every: int = 500
    time_limit_min: float = 0.0       # stop (and checkpoint) after this many minutes; 0 = none
    max_bad_steps: int = 20           # stop after this many consecutive non-finite steps
    device: str = "auto"              # auto | cpu | cuda (under torchrun: this rank's GPU)
    compile: bool = False             # torch.compile the model (GPU training)
    compile_backend: str = "inductor"  # torch.compile backend (aot_eager: trace only, for checks)
    parallel: str = "ddp"             # under torchrun: ddp (replicas) | fsdp (FSDP2 sharding, for L/H)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    semantic: SemanticConfig = field(default_factory=SemanticConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    preset: str = ""


def _leaf_paths(cfg: Config) -> list[str]:
    paths = []
    for sec in dataclasses.fields(cfg):
        value = getattr(cfg, sec.name)
        if dataclasses.is_dataclass(value):
            paths += [f"{sec.name}.{f.name}" for f in dataclasses.fields(value)]
        else:
            paths.append(sec.name)
    return paths


def resolve_key(key: str, cfg: Config | None = None) -> str:
    """Full dotted path for ``key``: either a path (``train.steps``) or a unique leaf (``steps``)."""
    paths = _leaf_paths(cfg or Config())
    if key in paths:
        return key
    head, _, option = key.partition(".")
    for component in COMPONENTS:               # an option of a component: aux_loss.gate_tau
        if option and key.startswith(component + "."):
            return key
        if option and component.rsplit(".", 1)[-1] == head:
            return f"{component}.{option}"
    matches = [p for p in paths if p.rsplit(".", 1)[-1] == key]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise ConfigError(f"config key '{key}' is ambiguous: write one of {', '.join(matches)}")
    leaves = sorted({p.rsplit('.', 1)[-1] for p in paths})
    close = difflib.get_close_matches(key, paths + leaves, n=3, cutoff=0.5)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise ConfigError(f"unknown config key '{key}'.{hint} Run `vco info --preset jit-tiny` to list them.")


def _flat_keys(d: dict, prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict) and f"{prefix}{k}" not in COMPONENTS:
            yield from _flat_keys(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}"


def _migrate(d: dict) -> dict:
    """Configs written before components carried their own options (flat semantic.gate_tau,
    repulsion_tau, aux_weight; plain names) read as today's."""
    sem = d.get("semantic")
    if not isinstance(sem, dict):
        return d
    sem = dict(sem)
    old = {k: sem.pop(k) for k in ("gate_tau", "repulsion_tau", "aux_weight") if k in sem}
    for key in ("aux_loss", "calibration"):
        if key in sem:
            sem[key] = component_spec(sem[key], f"semantic.{key}")
    aux = sem.get("aux_loss", {"name": "hybrid"})
    if old.get("aux_weight") is not None:
        aux.setdefault("weight", old["aux_weight"])
    if aux.get("name", "hybrid") == "hybrid":
        for k in ("gate_tau", "repulsion_tau"):
            if k in old:
                aux.setdefault(k, old[k])
    if old or "aux_loss" in sem:
        sem["aux_loss"] = aux
    return dict(d, semantic=sem)


def _is_known(key: str, paths: list[str]) -> bool:
    return key in paths or any(key.startswith(c + ".") for c in COMPONENTS)


def from_dict(d: dict) -> Config:
    d = _migrate(d)
    for key in _flat_keys(d):
        if not _is_known(key, _leaf_paths(Config())):
            resolve_key(key)  # raises with a suggestion
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.create(d))
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise ConfigError(f"invalid config value: {e.msg if hasattr(e, 'msg') else e}") from None
    check_ranges(cfg)
    return cfg


def parse_overrides(items: list[str] | None) -> dict:
    """``["steps=10", "model.depth=2"]`` -> nested dict with YAML-typed values."""
    out: dict = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key=value (e.g. --set steps=100)")
        key, raw = item.split("=", 1)
        path = resolve_key(key.strip())
        value = yaml.safe_load(raw) if raw.strip() else None
        if path in COMPONENTS:
            value = component_spec(value, path)
        node, prefix = out, ""
        *parents, leaf = path.split(".")
        for p in parents:
            prefix += p
            if prefix in COMPONENTS:           # aux_loss=repa aux_loss.tap_block=3
                node[p] = component_spec(node.get(p), prefix)
            node = node.setdefault(p, {})
            prefix += "."
        node[leaf] = value
    return out


def build_config(preset: str | None = None, config_file: str | Path | None = None,
                 overrides: list[str] | None = None) -> Config:
    """Preset, then YAML file, then ``key=value`` overrides; later ones win."""
    d: dict = {}
    if config_file is not None:
        d = load_yaml(config_file)
        preset = preset or d.get("preset") or None
    if preset:
        if preset not in PRESETS:
            close = difflib.get_close_matches(preset, PRESETS, n=3)
            hint = f" Did you mean {' or '.join(close)}?" if close else ""
            raise ConfigError(f"unknown preset '{preset}'.{hint} Presets: {', '.join(preset_names())}")
        d = merge(merge(PRESETS[preset], {"preset": preset}), d)
    d = merge(d, parse_overrides(overrides))
    return from_dict(d)


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        d = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(d, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections")
    return d


def to_dict(cfg: Config) -> dict:
    d = dataclasses.asdict(cfg)
    # YAML has no tuples; store them as lists (OmegaConf converts them back).
    for sec in d.values():
        if isinstance(sec, dict):
            for k, v in sec.items():
                if isinstance(v, tuple):
                    sec[k] = list(v)
    return d


def config_changes(before: Config, after: Config) -> list[str]:
    """``key: old -> new`` for every value that differs (components compared whole)."""
    def flat(cfg):
        return {f"{sec}.{k}": v for sec, group in to_dict(cfg).items() if isinstance(group, dict)
                for k, v in group.items()}
    a, b = flat(before), flat(after)
    return [f"{k}: {a[k]!r} -> {b[k]!r}" for k in a if a[k] != b.get(k)]


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def save_config(cfg: Config, path: str | Path) -> None:
    """Atomic: a crash never leaves a half-written config.yaml."""
    atomic_write_text(path, to_yaml(cfg))


def load_config(path: str | Path) -> Config:
    return from_dict(load_yaml(path))

"""DINOv2-with-registers (HF transformers) in the two roles the official V-Co code gives it.

* patch_features: the co-denoising target (RAE style, as the official V-Co code computes it):
  [-1, 1] -> [0, 1] -> bicubic resize to grid * patch (224 for grid 16, patch 14) -> ImageNet mean/std ->
  transformer -> final LayerNorm *without* its affine -> drop CLS + register tokens -> (B, grid^2, hidden).
* pooled_features: the official hybrid-loss feature: bilinear resize -> [0, 1] -> ImageNet mean/std ->
  transformer -> final LayerNorm *with* its affine -> CLS token, float32.
* perceptual_features: the perceptual-loss feature (`--aux_dinov2_loss`), the same pipeline as
  pooled_features but keeping the patch tokens instead of CLS: (B, grid^2, hidden), float32.

The official code keeps two copies of the network, one with the LayerNorm affine deleted. Here one model
serves both: we run the embeddings and encoder blocks ourselves to get the pre-norm hidden state, then
apply either the plain normalisation (F.layer_norm without weight/bias, eps from the config) or the
model's own `layernorm`. Same numbers, half the memory. Both official copies hold the same frozen
pretrained weights, so one `Dinov2WithRegistersModel` loaded with its `layernorm.*` serves both roles.

transformers is an optional dependency (`pip install 'vco[dinov2]'`); it is imported only when a model
is built.
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import SemanticEncoder, check_images, imagenet_normalize, resize

DEFAULT_DINOV2 = "facebook/dinov2-with-registers-base"

# transformers 4.x attention names -> 5.x names (only these differ between the two versions).
V4_TO_V5 = {
    "attention.attention.query.": "attention.q_proj.",
    "attention.attention.key.": "attention.k_proj.",
    "attention.attention.value.": "attention.v_proj.",
    "attention.output.dense.": "attention.o_proj.",
}
# The RAE copy in official checkpoints has no final LayerNorm entries (its affine was deleted).
_OPTIONAL_KEYS = ("layernorm.weight", "layernorm.bias")


def import_transformers():
    try:
        import transformers
    except ImportError as err:  # pragma: no cover - exercised only without transformers
        raise ImportError(
            "the DINOv2 encoder needs HF transformers; install it with: pip install 'vco[dinov2]' "
            "(or pip install 'transformers>=4.47'), or use the offline encoder 'mobilenet_v2'"
        ) from err
    return transformers


def dinov2_base_config():
    """`Dinov2WithRegistersConfig` of facebook/dinov2-with-registers-base, the encoder V-Co uses.

    Needed to rebuild the frozen encoders stored inside official V-Co checkpoints (their 37 x 37 position
    table comes from image_size 518 / patch 14).
    """
    return import_transformers().Dinov2WithRegistersConfig(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, mlp_ratio=4, patch_size=14,
        image_size=518, num_register_tokens=4, layer_norm_eps=1e-6,
    )


def rename_dinov2_keys(state_dict: Mapping[str, torch.Tensor], expected_keys) -> dict[str, torch.Tensor]:
    """Rename HF DINOv2 attention keys to the convention (4.x or 5.x) used by `expected_keys`.

    The convention is detected from the target model's own keys, not from the version string, so a
    future rename is caught by the strict key check of the caller rather than silently mis-mapped.
    """
    wants_v5 = any(".attention.q_proj." in k for k in expected_keys)
    mapping = V4_TO_V5 if wants_v5 else {v: k for k, v in V4_TO_V5.items()}
    renamed = {}
    for key, value in state_dict.items():
        for old, new in mapping.items():
            key = key.replace(old, new)
        renamed[key] = value
    return renamed


def dinov2_from_state_dict(state_dict: Mapping[str, torch.Tensor], config, prefix: str = ""):
    """Build a `Dinov2WithRegistersModel` from a plain state dict with HF key names (4.x or 5.x).

    prefix: only keys starting with it are used, with it stripped; e.g. official V-Co checkpoints store the
    semantic copy under 'net.x_embedder.dinov2.encoder.encoder.' and the loss copy under 'drifting_dinov2.'.
    A missing `layernorm.weight/bias` (the official semantic copy) leaves the identity affine (1, 0), which
    is exactly the no-affine normalisation; every other key must be present and match.
    """
    model = import_transformers().Dinov2WithRegistersModel(config)
    if prefix:
        state_dict = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        if not state_dict:
            raise KeyError(f"no key of the state dict starts with prefix {prefix!r}; check the prefix")
    expected = model.state_dict()
    state_dict = rename_dinov2_keys(state_dict, expected.keys())
    missing = [k for k in expected if k not in state_dict and k not in _OPTIONAL_KEYS]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        raise KeyError(
            f"state dict does not fit Dinov2WithRegistersModel(config): {len(missing)} missing "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}); "
            "check the prefix and that the config (hidden size, depth, registers) matches the weights"
        )
    with torch.no_grad():
        model.layernorm.weight.fill_(1.0)
        model.layernorm.bias.zero_()
    model.load_state_dict(state_dict, strict=False)  # strictness checked above (layernorm optional)
    return model


class DINOv2Encoder(SemanticEncoder):
    """Frozen HF `Dinov2WithRegistersModel`, run at resolution grid * patch_size (224 for grid 16)."""

    def __init__(self, model: nn.Module, grid: int, name: str = "dinov2"):
        super().__init__(grid)
        cfg = model.config
        self.model = model
        patch = cfg.patch_size if isinstance(cfg.patch_size, int) else cfg.patch_size[0]
        self.input_size = grid * patch
        self.num_prefix_tokens = 1 + cfg.num_register_tokens  # CLS, then the registers
        self.ln_eps = cfg.layer_norm_eps
        self.feature_dim = cfg.hidden_size
        self.pooled_dim = cfg.hidden_size
        self.name = name
        self._freeze()

    @classmethod
    def from_pretrained(cls, path: str = DEFAULT_DINOV2, grid: int = 16) -> "DINOv2Encoder":
        """path: a local folder saved with save_pretrained, or a hub id (needs the network or HF cache)."""
        model = import_transformers().Dinov2WithRegistersModel.from_pretrained(path)
        return cls(model, grid, name=f"dinov2[{path}]")

    @classmethod
    def from_config(cls, config, grid: int) -> "DINOv2Encoder":
        """Randomly initialised model from a `Dinov2WithRegistersConfig` (tests, shape checks)."""
        return cls(import_transformers().Dinov2WithRegistersModel(config), grid, name="dinov2[random]")

    def _prenorm_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """ImageNet-normalised pixels -> hidden state before the final LayerNorm, (B, 1 + R + grid^2, hidden)."""
        tokens = self.model.embeddings(pixels)  # HF interpolates its position table to the grid
        tokens = self.model.encoder(tokens)[0]  # [0]: last_hidden_state in transformers 4.x and 5.x
        expected = self.num_prefix_tokens + self.num_tokens
        if tokens.shape[1] != expected:
            raise RuntimeError(f"DINOv2 returned {tokens.shape[1]} tokens, expected {expected}")
        return tokens

    def patch_features(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images)
        u = images * 0.5 + 0.5
        pixels = imagenet_normalize(resize(u, self.input_size, "bicubic"))  # (B, 3, 14g, 14g)
        hidden = self._prenorm_tokens(pixels)
        normed = F.layer_norm(hidden, (self.feature_dim,), eps=self.ln_eps)  # affine removed (RAE)
        return normed[:, self.num_prefix_tokens:]  # (B, grid^2, hidden), row-major

    def _loss_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """The auxiliary losses' view: bilinear resize, ImageNet normalisation, transformer;
        all tokens before the final LayerNorm, (B, 1 + R + grid^2, hidden)."""
        check_images(images)
        return self._prenorm_tokens(imagenet_normalize(resize(images, self.input_size, "bilinear") * 0.5 + 0.5))

    def pooled_features(self, images: torch.Tensor) -> torch.Tensor:
        hidden = self._loss_tokens(images)
        return self.model.layernorm(hidden[:, 0]).float()  # (B, hidden): CLS with the affine LayerNorm

    def perceptual_features(self, images: torch.Tensor) -> torch.Tensor:
        hidden = self._loss_tokens(images)[:, self.num_prefix_tokens:]  # drop CLS + registers
        return self.model.layernorm(hidden).float()  # (B, grid^2, hidden): affine LayerNorm, row-major

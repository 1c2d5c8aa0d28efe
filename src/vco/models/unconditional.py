"""What the unconditional branch of classifier-free guidance is (V-Co Table 2). Config:
``model.uncond`` for co-denoising models; a single-stream JiT only drops its label.

A definition answers three questions:
  draw            which training samples drop their label, and which drop their semantics;
  semantic_input  what the semantic stream of a semantics-dropped sample receives;
  structural_mask which attention pathways a semantics-dropped sample loses.
At sampling the unconditional pass drops both for every sample (null label, ``drop`` all True),
so the same three answers define the unconditional prediction.

Structural masks are over a sequence whose first ``n_pixel`` tokens are the pixel side (the pixel
stream with its in-context tokens) and whose remaining tokens are the semantic side; attention
applies them without a dense mask (vco.nn.attention.joint_attention).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..config import DiffusionConfig
from ..diffusion.flow import Drops
from ..nn.attention import StructuralMask


class Unconditional(nn.Module):
    """Base: joint dropout, semantic input untouched, no mask. Subclasses change one answer."""
    joint = True              # one Bernoulli per sample drops label and semantics together
    blocks_pixel = False      # pixel queries of dropped samples cannot read semantic keys
    blocks_semantic = False   # semantic queries of dropped samples cannot read pixel keys

    def draw(self, b: int, cfg: DiffusionConfig, rng) -> Drops:
        """``rng``: a stream of vco.diffusion.randomness (anything with ``rand(n)``)."""
        label = rng.rand(b) < cfg.label_drop_prob
        if self.joint:
            return Drops(label, label)
        semantic = rng.rand(b) < cfg.semantic_drop_prob
        return Drops(label, semantic)

    def semantic_input(self, f: torch.Tensor, drop: torch.Tensor | None) -> torch.Tensor:
        return f

    def pixel_reads_semantics(self, drop: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
        """(B, 1, 1) 0/1 gate for models that fuse the streams before their blocks (direct_add,
        channel_concat): there the only semantic -> pixel pathway is the fused embedding, so
        blocking it means removing the semantic embedding of the dropped samples."""
        if not self.blocks_pixel or drop is None:
            return None
        return (~drop).to(like.dtype).view(-1, 1, 1)

    def structural_mask(self, drop: torch.Tensor | None, n_pixel: int) -> StructuralMask | None:
        # Skip all masking work when no sample is dropped (the common case at 90% of steps).
        if not (self.blocks_pixel or self.blocks_semantic) or drop is None or not bool(drop.any()):
            return None
        return StructuralMask(drop, n_pixel, self.blocks_pixel, self.blocks_semantic)


class LabelDropout(Unconditional):
    """A single-stream model's definition: the label alone is dropped (p = label_drop_prob)."""


class JointAsymmetricMask(Unconditional):
    """V-Co's final definition: one draw nulls the label and hides the semantic keys from the
    pixel queries; the semantic stream still reads the pixels."""
    blocks_pixel = True


class JointSymmetricMask(Unconditional):
    """Joint draw; the streams cannot read each other at all (a bidirectional mask)."""
    blocks_pixel = True
    blocks_semantic = True


class IndependentMask(Unconditional):
    """Label (p = label_drop_prob) and semantics (p = semantic_drop_prob) dropped independently;
    the semantic drop is the asymmetric mask. Null label AND mask happen together only rarely."""
    joint = False
    blocks_pixel = True


class InputDropoutZeros(Unconditional):
    """Independent draws; the semantic input of a dropped sample is replaced by zeros."""
    joint = False

    def semantic_input(self, f, drop):
        if drop is None:
            return f
        return torch.where(drop.view(-1, 1, 1), torch.zeros_like(f), f)


class InputDropoutLearned(Unconditional):
    """Independent draws; the semantic input of a dropped sample is a learned null token."""
    joint = False

    def __init__(self, semantic_dim: int):
        super().__init__()
        self.null_token = nn.Parameter(torch.randn(semantic_dim) * 0.02)   # (C,), every token

    def semantic_input(self, f, drop):
        if drop is None:
            return f
        return torch.where(drop.view(-1, 1, 1), self.null_token.to(f.dtype).expand_as(f), f)


UNCONDITIONAL = {
    "joint_asymmetric_mask": JointAsymmetricMask,
    "joint_symmetric_mask": JointSymmetricMask,
    "independent_mask": IndependentMask,
    "input_dropout_zeros": InputDropoutZeros,
    "input_dropout_learned": InputDropoutLearned,
}


def build_unconditional(name: str, semantic_dim: int) -> Unconditional:
    if name not in UNCONDITIONAL:
        raise ValueError(f"unknown model.uncond '{name}'; choose one of {', '.join(UNCONDITIONAL)}")
    cls = UNCONDITIONAL[name]
    return cls(semantic_dim) if cls is InputDropoutLearned else cls()

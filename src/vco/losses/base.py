"""What a loss term of the training objective is, and the tensors a training step offers it.

A term is an ``nn.Module`` that declares the step tensors it reads (``inputs``, names of
``StepTensors`` fields) and its options (a dataclass ``Options``, with its paper weight), and
returns a scalar from ``forward(**inputs)``. The objective (vco.train.objective) passes each term
exactly the tensors it declares (``optional_inputs`` as given or None), so a new loss needs no
change anywhere else: its file and one line in the registry of ``vco.losses``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Optional

import torch
import torch.nn as nn

from ..config import DiffusionConfig, ModelConfig


@dataclass
class StepTensors:
    """Every tensor of one training micro-batch a loss term may read (B = batch size)."""
    x: torch.Tensor                          # (B, C, H, W) clean images in [-1, 1]
    y: torch.Tensor                          # (B,) true labels (also of label-dropped samples)
    t: torch.Tensor                          # (B,) noise level, 1 = clean
    z: torch.Tensor                          # (B, C, H, W) noisy images
    x_pred: torch.Tensor                     # (B, C, H, W) the model's clean-image prediction
    f: Optional[torch.Tensor] = None         # (B, N, C_s) clean calibrated semantic targets
    t_f: Optional[torch.Tensor] = None       # (B,) the semantic stream's noise level
    z_f: Optional[torch.Tensor] = None       # (B, N, C_s) noisy semantic features
    f_pred: Optional[torch.Tensor] = None    # (B, N, C_s) the model's clean-feature prediction
    f_kept: Optional[torch.Tensor] = None    # (B,) bool: the sample kept its semantic pathway
    hidden: Optional[torch.Tensor] = None    # (B, N, H) pixel tokens after the tapped block
    x_pooled: Optional[torch.Tensor] = None  # (B, C') the encoder's pooled features of x, when cached

    def select(self, names: tuple[str, ...], term: str, optional: tuple[str, ...] = ()) -> dict:
        missing = [n for n in names if getattr(self, n) is None]
        if missing:
            raise ValueError(f"loss term {term} needs {', '.join(missing)}, which this model does not "
                             f"produce (a single-stream JiT has no semantic stream)")
        return {n: getattr(self, n) for n in names + optional}


STEP_TENSORS = tuple(f.name for f in dataclasses.fields(StepTensors))


@dataclass
class BuildContext:
    """What a term may need to build itself: the model's and the process's configs, and the
    frozen semantic encoder of the run (None for JiT)."""
    model: ModelConfig
    diffusion: DiffusionConfig
    encoder: Optional[nn.Module] = None


@dataclass
class WeightOnly:
    weight: float = 1.0


class LossTerm(nn.Module):
    """Base of every term: ``inputs`` it reads, ``Options`` it takes, ``weight`` in the total."""
    inputs: ClassVar[tuple[str, ...]] = ()
    optional_inputs: ClassVar[tuple[str, ...]] = ()   # passed too, None when the step lacks them
    Options: ClassVar[type] = WeightOnly
    uses_encoder: ClassVar[bool] = False     # works in the frozen semantic encoder's feature space

    def __init__(self, options, context: BuildContext):
        super().__init__()
        unknown = set(self.inputs + self.optional_inputs) - set(STEP_TENSORS)
        if unknown:
            raise TypeError(f"{type(self).__name__} declares unknown inputs {sorted(unknown)}; "
                            f"a step offers {', '.join(STEP_TENSORS)}")
        self.options = options
        self.weight = float(options.weight)

    @property
    def tap_block(self) -> int | None:
        """The backbone block whose pixel tokens this term reads as ``hidden`` (None: none)."""
        return None

    def needs_encoder(self, context: BuildContext) -> nn.Module:
        """The run's frozen encoder, for a term with ``uses_encoder``."""
        if context.encoder is None:
            raise ValueError(f"{type(self).__name__} works in a frozen encoder's feature space: it "
                             f"needs a co-denoising model with a semantic encoder")
        return context.encoder


class PooledFeatureLoss(LossTerm):
    """A term on the frozen encoder's pooled features of x_pred (with grad through the encoder) and
    of the real images x (no grad). Those of x come from the feature cache when it holds them
    (``x_pooled``: the same numbers, computed once per image and flip), else from the encoder."""
    inputs = ("x_pred", "x", "y")
    optional_inputs = ("x_pooled",)
    uses_encoder = True

    def __init__(self, options, context: BuildContext):
        super().__init__(options, context)
        self.encoder = self.needs_encoder(context)

    def pooled_pair(self, x_pred: torch.Tensor, x: torch.Tensor,
                    x_pooled: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(g (B, C') of x_pred with grad, p (B, C') of x)."""
        g = self.encoder.pooled_features(x_pred.float())
        if x_pooled is not None:
            return g, x_pooled
        with torch.no_grad():
            return g, self.encoder.pooled_features(x)

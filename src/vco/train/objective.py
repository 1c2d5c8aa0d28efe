"""The training objective as one module: noising and CFG drops -> model -> each loss term.

``Objective.forward(x, y, f, rng)`` is the whole forward half of a training step (the trainer
does the data before it and backward, optimizer and EMAs after it). It is an ``nn.Module`` holding
the model and every loss term, so DDP (or FSDP) wraps all that trains (the model and, for REPA,
the projector) and no gradient is reduced by hand.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn as nn

from ..config import Config, DiffusionConfig
from ..diffusion.flow import Drops, Noised, SameTime, noise_batch
from ..diffusion.randomness import as_stream
from ..losses import LossTerm, StepTensors, build_loss_terms


class Objective(nn.Module):
    """model + terms: forward(x, y, f, rng) -> {"loss": weighted sum, slot: each term (detached)}.

    x (B, C, H, W) clean images in [-1, 1]; y (B,) labels; f (B, N, C_s) clean calibrated
    semantic targets for a co-denoising model, else None; rng: the batch's random streams
    (vco.diffusion.randomness) or a torch.Generator; x_pooled (B, C'): the frozen encoder's pooled
    features of x from the feature cache, or None (a term that reads them then runs the encoder).
    """

    def __init__(self, model: nn.Module, terms: dict[str, LossTerm], diffusion: DiffusionConfig,
                 num_classes: int, semantic_time=SameTime()):
        super().__init__()
        self.model = model
        self.terms = nn.ModuleDict(terms)
        self.diffusion, self.num_classes, self.semantic_time = diffusion, num_classes, semantic_time
        taps = {term.tap_block for term in terms.values() if term.tap_block is not None}
        if len(taps) > 1:
            raise ValueError(f"loss terms read the hidden tokens of different blocks {sorted(taps)}")
        self.tap_block = taps.pop() if taps else None

    def forward(self, x: torch.Tensor, y: torch.Tensor, f: torch.Tensor | None, rng,
                x_pooled: torch.Tensor | None = None) -> dict:
        step = self.step_tensors(x, y, f, rng, x_pooled)
        values = {slot: term(**step.select(term.inputs, slot, term.optional_inputs))
                  for slot, term in self.terms.items()}
        loss = sum(term.weight * values[slot] for slot, term in self.terms.items())
        return {"loss": loss, **{slot: v.detach() for slot, v in values.items()}}

    def step_tensors(self, x: torch.Tensor, y: torch.Tensor, f: torch.Tensor | None, rng,
                     x_pooled: torch.Tensor | None = None) -> StepTensors:
        """Noising and CFG drops, then the model: every tensor the loss terms may read."""
        rng = as_stream(rng, x.device)            # a torch.Generator (tests) or the sample streams
        drops = self.model.unconditional.draw(x.shape[0], self.diffusion, rng)
        noised = noise_batch(x, y, f, drops, self.diffusion, self.num_classes, rng, self.semantic_time)
        if f is not None and bool(drops.semantic.any()):
            x, y, f, x_pooled, noised = dropped_last(x, y, f, x_pooled, noised)
        x_pred, f_pred, hidden = self.denoise(noised)
        return StepTensors(x=x, y=y, t=noised.t, z=noised.z, x_pred=x_pred, f=f, t_f=noised.t_f,
                           z_f=noised.z_f, f_pred=f_pred, f_kept=~noised.drops.semantic, hidden=hidden,
                           x_pooled=x_pooled)

    def denoise(self, noised: Noised):
        """The model on the noised batch -> (x_pred, f_pred or None, tapped hidden tokens or None)."""
        tapping = self.model.tapping(self.tap_block) if self.tap_block is not None else nullcontext({})
        with tapping as tapped:
            x_pred, f_pred = self.model(noised.z, noised.t, noised.y_in, noised.z_f,
                                        drop=noised.drops.semantic if noised.z_f is not None else None)
        return x_pred, f_pred, tapped.get("hidden")

    def trainable_terms(self) -> dict[str, nn.Parameter]:
        """The loss terms' own trainable parameters (REPA's projector), as ``slot.name``."""
        return {f"{slot}.{n}": p for slot, term in self.terms.items()
                for n, p in term.named_parameters() if p.requires_grad}


def dropped_last(x, y, f, x_pooled, noised: Noised):
    """The semantics-dropped samples moved to the end of the batch (x_pooled, if given, with them):
    the mask-free attention then needs two SDPA calls per block, not one per run of samples. Every
    loss term is a mean (per class for the auxiliary losses), so the order changes nothing but the
    summation order."""
    order = torch.argsort(noised.drops.semantic.to(torch.int8), stable=True)
    d = noised.drops
    return x[order], y[order], f[order], None if x_pooled is None else x_pooled[order], Noised(
        noised.t[order], noised.z[order], noised.y_in[order], Drops(d.label[order], d.semantic[order]),
        noised.t_f[order], noised.z_f[order])


def build_objective(cfg: Config, model: nn.Module, encoder=None, semantic_time=SameTime()) -> Objective:
    """The objective of ``cfg``: its loss terms (encoder: the run's frozen semantic encoder)."""
    return Objective(model, build_loss_terms(cfg, encoder), cfg.diffusion, cfg.model.num_classes,
                     semantic_time)

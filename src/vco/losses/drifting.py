"""Multi-temperature drifting loss (V-Co Table 3 "drifting only" ablation; Deng et al., arXiv 2602.04770).

On pooled encoder features (DINOv2: the affine-LayerNorm CLS token), per class c present in the local
batch with N >= 2 samples: g (N, C) features of the predicted images (grad), positives y+ (N, C) those of
the real images of class c (no grad), negatives y- = the generated g of the same class, self-pair excluded.

    targets  = [y-, y+];  d_ij = |g_i - t_j|  (L2, not squared; the pair (g_i, y-_i = g_i) is left out)
    s        = mean_ij d_ij / sqrt(C)                      detached scale: in g/s the mean distance is sqrt(C)
    l_ij     = -(d_ij / s) / (tau sqrt(C))  = -(d_ij / mean d) / tau          kernel exp(-d / tau')
    a_ij     = sqrt(softmax_j(l)_ij * softmax_i(l)_ij)     softmax over targets and over generated, geo-mean
    F_i(tau) = (sum_k a-_ik) sum_j a+_ij y+_j - (sum_j a+_ij) sum_k a-_ik y-_k     (in g/s coordinates)
    V_i      = sum_tau F_i(tau) / rms(F(tau)),  rms = sqrt(mean_i |F_i|^2 / C)  (clamped: a zero F stays 0)
    loss_c   = MSE(g/s, stopgrad(g/s + V))  ( = mean V^2, gradient -2 V / (s numel) w.r.t. g )

and the class losses are averaged (a class with a single sample has no negatives and is skipped).
F_i = (sum a-)(sum a+)(weighted mean of y+ - weighted mean of y-) points from the nearby generated samples
to the nearby real ones. It is anti-symmetric in (y+, y-), so it is 0 (up to rounding) when the negative set
equals the positive set (`drifting_field(..., negatives=positives)`). With the recipe's negatives (the
*other* generated samples) it vanishes only in distribution, for independent draws; g == positives is not
a fixed point (each sample is pulled to its own copy and pushed from its neighbours). Because each
temperature's field is normalised, the loss value hardly changes during training; only its gradient matters.

As in the official JAX `drift_loss`: the scale is the mean gen-to-target distance, the kernel works on
distances divided by it, the self-pair is masked out of both softmaxes, and the force is cross-multiplied and
RMS-normalised per temperature before the sum. Small differences: the mean skips the (zero) self-distances,
and the geometric mean is taken in log space without the official 1e-3 floor on each affinity. Everything
is float32 and no_grad except the final regression.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from .base import BuildContext, PooledFeatureLoss

DEFAULT_TEMPERATURES = (0.05, 0.125, 0.5)


def _targets_and_distances(g: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor | None):
    """-> targets (M + P, C) = [negatives, positives], distances (N, M + P), mask of the pairs used (N, M + P).

    negatives None means the generated set itself, with the self-pairs d(g_i, g_i) masked out.
    """
    g = g.detach().float()
    positives = positives.detach().float()
    self_negatives = negatives is None
    negatives = g if self_negatives else negatives.detach().float()
    if self_negatives and g.shape[0] < 2:
        raise ValueError("the drifting field needs >= 2 generated samples (the others are the negatives)")
    targets = torch.cat([negatives, positives])
    dist = torch.cdist(g, targets, compute_mode="donot_use_mm_for_euclid_dist")  # exact, (N, M + P)
    used = torch.ones_like(dist, dtype=torch.bool)
    if self_negatives:
        used[:, : g.shape[0]].fill_diagonal_(False)
    return targets, dist, used


def _mean_distance(dist: torch.Tensor, used: torch.Tensor) -> torch.Tensor:
    return dist[used].mean().clamp(min=1e-8)  # clamp: identical features give a zero field, not NaN


@torch.no_grad()
def feature_scale(g: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor | None = None) -> torch.Tensor:
    """s = mean gen-to-target distance / sqrt(C) (self-pairs skipped): in g / s that mean is sqrt(C)."""
    _, dist, used = _targets_and_distances(g, positives, negatives)
    return _mean_distance(dist, used) / g.shape[-1] ** 0.5


@torch.no_grad()
def drifting_field(g: torch.Tensor, positives: torch.Tensor,
                   temperatures: Sequence[float] = DEFAULT_TEMPERATURES,
                   negatives: torch.Tensor | None = None, per_temperature: bool = False) -> torch.Tensor:
    """V for one class, in the scaled coordinates g / feature_scale(...): g (N, C), positives (P, C) -> (N, C).

    negatives: None (the paper's recipe) uses the other generated samples; an explicit (M, C) set is used
    as given (no self-pair masking). per_temperature: return the unit-RMS field of each tau, (T, N, C),
    instead of their sum.
    """
    targets, dist, used = _targets_and_distances(g, positives, negatives)
    num_neg, dim = targets.shape[0] - positives.shape[0], g.shape[-1]
    mean_dist = _mean_distance(dist, used)
    # Scaled coordinates, centred for fp32 accuracy (F is translation-invariant: sum a-, sum a+ cancel).
    center = targets.mean(0)
    scale = mean_dist / dim ** 0.5
    y = (targets - center) / scale
    fields = []
    for tau in temperatures:
        logits = (-(dist / mean_dist) / tau).masked_fill(~used, float("-inf"))  # self-pairs: weight 0
        log_a = 0.5 * (logits.log_softmax(dim=1) + logits.log_softmax(dim=0))
        a = log_a.exp()  # (N, M + P)
        a_neg, a_pos = a[:, :num_neg], a[:, num_neg:]
        force = (a_neg.sum(1, keepdim=True) * (a_pos @ y[num_neg:])      # (N, C)
                 - a_pos.sum(1, keepdim=True) * (a_neg @ y[:num_neg]))
        rms = force.pow(2).mean().clamp(min=1e-8).sqrt()  # sqrt(mean_i |F_i|^2 / C)
        fields.append(force / rms)
    fields = torch.stack(fields)
    return fields if per_temperature else fields.sum(0)


def drifting_loss_from_features(g: torch.Tensor, p: torch.Tensor, labels: torch.Tensor,
                                temperatures: Sequence[float] = DEFAULT_TEMPERATURES) -> torch.Tensor:
    """g: (B, C) generated features (grad), p: (B, C) real features, labels (B,) -> scalar.

    Mean over the classes with >= 2 samples of MSE(g_c / s_c, stopgrad(g_c / s_c + V_c)); with no such
    class, a zero that is still connected to g.
    """
    g, p = g.float(), p.detach().float()
    losses = []
    for c in labels.unique(sorted=True):
        idx = (labels == c).nonzero(as_tuple=True)[0]
        if idx.numel() < 2:
            continue  # no negatives: the field is undefined
        gc, pc = g[idx], p[idx]
        scale = feature_scale(gc, pc)
        field = drifting_field(gc, pc, temperatures)
        scaled = gc / scale
        losses.append(F.mse_loss(scaled, (scaled + field).detach()))
    if not losses:
        return g.sum() * 0.0
    return torch.stack(losses).mean()


@dataclass
class DriftingOptions:
    weight: float = 0.01
    temperatures: tuple[float, ...] = DEFAULT_TEMPERATURES


class DriftingLoss(PooledFeatureLoss):
    """The drifting loss in a frozen encoder's pooled feature space (gradients flow through the encoder
    into x_pred; the encoder's weights stay frozen)."""
    Options = DriftingOptions

    def __init__(self, options: DriftingOptions, context: BuildContext):
        super().__init__(options, context)
        temperatures = options.temperatures
        if not temperatures or any(t <= 0 for t in temperatures):
            raise ValueError(f"temperatures must be a non-empty list of positive numbers, got {temperatures}")
        self.temperatures = tuple(float(t) for t in temperatures)

    def forward(self, *, x_pred: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                x_pooled: torch.Tensor | None = None) -> torch.Tensor:
        """x_pred (B, 3, H, W) with grad, x (B, 3, H, W) real, y (B,) true labels, x_pooled
        (B, C') x's pooled features if cached."""
        g, p = self.pooled_pair(x_pred, x, x_pooled)      # (B, C) each
        return drifting_loss_from_features(g, p, y, self.temperatures)

"""Post-hoc EMA (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion
Models", Sec. 3): train once, choose the EMA width afterwards.

A power-function EMA of exponent gamma averages the weights of the first t steps with the density
p_t(tau) = (gamma + 1) tau^gamma / t^(gamma + 1) on [0, t]; its relative width is the profile's
standard deviation over t, sigma_rel = sqrt((gamma + 1) / ((gamma + 2)^2 (gamma + 3))). Tracked
step by step with beta_k = (1 - 1/k)^(gamma + 1) at update k = 1, 2, ..., it is *exactly* that
integral of the piecewise-constant weight trajectory (theta_k held on (k - 1, k]):

    ema_k = sum_j theta_j (j^(gamma+1) - (j-1)^(gamma+1)) / k^(gamma+1).

Training keeps two such EMAs (sigma_rel 0.05 and 0.10 by default) and saves both every N steps
(``posthoc_ema/snapshot-<step>.safetensors``). Any other profile (t_r, gamma_r) is reconstructed
as the combination sum_i c_i snapshot_i whose profile is closest to p_{t_r, gamma_r} in L2 on
[0, inf): c solves the normal equations A c = b with A_ij = <p_i, p_j>, b_i = <p_i, p_r>, all in
closed form (``profile_dot``). The reconstruction error of every weight is then exactly
-sum_k R_k theta_k, with R_k the residual profile p_r - sum_i c_i p_i integrated over step k, so
at most sum_k |R_k| |theta_k| (tests/test_posthoc_ema.py checks both); ``residual_norm`` reports
the residual's L2 norm as a summary of the fit.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import save_file

from .checkpoint import CheckpointError, atomic_write
from .ema import ParameterAverage

SNAPSHOT_DIR = "posthoc_ema"
_SNAPSHOT = re.compile(r"snapshot-(\d+)\.safetensors")
MAX_SIGMA_REL = math.sqrt(1 / 12)     # gamma = 0 (a uniform average); wider profiles need gamma < 0


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    """The exponent gamma > 0 of relative width sigma_rel: the largest real root of
    sigma^2 (gamma + 2)^2 (gamma + 3) = gamma + 1, i.e. gamma^3 + 7 gamma^2 + (16 - s) gamma + (12 - s)
    with s = sigma^-2."""
    if not 0 < sigma_rel < MAX_SIGMA_REL:
        raise ValueError(f"sigma_rel must be in (0, {MAX_SIGMA_REL:.4f}), got {sigma_rel}")
    s = sigma_rel ** -2
    roots = np.roots([1.0, 7.0, 16.0 - s, 12.0 - s])
    return float(roots[np.abs(roots.imag) < 1e-9].real.max())


def gamma_to_sigma_rel(gamma: float) -> float:
    return math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


def profile_dot(t_a, gamma_a, t_b, gamma_b):
    """<p_a, p_b> = integral of p_{t_a, gamma_a} p_{t_b, gamma_b} over [0, min(t_a, t_b)]
    = (g_a + 1)(g_b + 1) / ((g_a + g_b + 1) max(t)) * (min(t) / max(t))^(gamma of the longer)."""
    t_a, gamma_a, t_b, gamma_b = (np.asarray(v, np.float64) for v in (t_a, gamma_a, t_b, gamma_b))
    shorter_first = t_a <= t_b
    t_max = np.maximum(t_a, t_b)
    ratio = np.minimum(t_a, t_b) / t_max
    gamma_long = np.where(shorter_first, gamma_b, gamma_a)
    return (gamma_a + 1) * (gamma_b + 1) / ((gamma_a + gamma_b + 1) * t_max) * ratio ** gamma_long


def normal_equations(times, gammas, t_target: float, gamma_target: float) -> tuple[np.ndarray, np.ndarray]:
    """(A, b): A_ij = <p_i, p_j> over the stored profiles, b_i = <p_i, p_target>."""
    t, g = np.asarray(times, np.float64), np.asarray(gammas, np.float64)
    return profile_dot(t[:, None], g[:, None], t[None, :], g[None, :]), profile_dot(t, g, t_target, gamma_target)


def solve_coefficients(times, gammas, t_target: float, gamma_target: float) -> np.ndarray:
    """c (n,) with sum_i c_i p_{times_i, gammas_i} closest in L2 to p_{t_target, gamma_target}."""
    gram, rhs = normal_equations(times, gammas, t_target, gamma_target)
    return np.linalg.lstsq(gram, rhs, rcond=None)[0]


def residual_norm(times, gammas, coefficients, t_target: float, gamma_target: float) -> float:
    """||p_target - sum_i c_i p_i||_2, from the same closed-form inner products."""
    gram, rhs = normal_equations(times, gammas, t_target, gamma_target)
    c = np.asarray(coefficients, np.float64)
    own = profile_dot(t_target, gamma_target, t_target, gamma_target)
    return float(math.sqrt(max(own - 2 * c @ rhs + c @ gram @ c, 0.0)))


class PowerEMA(ParameterAverage):
    """The power-function EMA of relative width ``sigma_rel`` over every trainable parameter.
    ``update(model, k)`` is update k = 1, 2, ...: the weights after optimizer step k."""

    def __init__(self, model: nn.Module, sigma_rel: float):
        super().__init__(model)
        self.sigma_rel, self.gamma = sigma_rel, sigma_rel_to_gamma(sigma_rel)

    def beta(self, k: int) -> float:
        return (1.0 - 1.0 / k) ** (self.gamma + 1)

    def update(self, model: nn.Module, k: int) -> None:
        if k < 1:
            raise ValueError(f"power-EMA updates count from 1, got {k}")
        self._lerp(model, 1.0 - self.beta(k))


def width_key(sigma_rel: float) -> str:
    return f"sigma_rel={sigma_rel:.4f}"


def snapshot_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / SNAPSHOT_DIR / f"snapshot-{step:07d}.safetensors"


def save_snapshot(run_dir: Path, step: int, emas: list[PowerEMA], full_tensor=lambda t: t,
                  write: bool = True) -> Path:
    """Every power EMA at ``step`` in one file (atomic: a crash leaves the earlier files as they
    were). ``full_tensor`` gathers a sharded tensor (FSDP: every rank calls this, the one with
    ``write`` writes)."""
    tensors = {f"{width_key(e.sigma_rel)}/{n}": full_tensor(v).detach().contiguous().cpu()
               for e in emas for n, v in e.shadow.items()}
    path = snapshot_path(run_dir, step)
    if write:
        meta = {"step": str(step), "sigma_rels": json.dumps([e.sigma_rel for e in emas]),
                "gammas": json.dumps([e.gamma for e in emas])}
        atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))
    return path


@dataclass
class Snapshot:
    path: Path
    step: int
    sigma_rels: list[float]
    gammas: list[float]


def list_snapshots(run_dir: str | Path, until: int | None = None) -> list[Snapshot]:
    """The run's snapshots in step order (those at steps <= ``until``)."""
    folder = Path(run_dir) / SNAPSHOT_DIR
    found = []
    for path in sorted(folder.glob("snapshot-*.safetensors")) if folder.is_dir() else []:
        m = _SNAPSHOT.fullmatch(path.name)
        if not m or (until is not None and int(m.group(1)) > until):
            continue
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            found.append(Snapshot(path, int(meta["step"]), json.loads(meta["sigma_rels"]),
                                  json.loads(meta["gammas"])))
        except Exception as e:
            raise CheckpointError(f"{path} is not a readable post-hoc EMA snapshot ({e}); move it away "
                                  f"and reconstruct from the others") from None
    return found


def reconstruct(run_dir: str | Path, sigma_rels: list[float], step: int | None = None
                ) -> tuple[dict[float, dict[str, torch.Tensor]], dict]:
    """The EMA weights of every requested width at ``step`` (default: the last snapshot), from the
    run's snapshots up to that step; one pass over the files (memory: one weight set per width).
    Returns ({sigma_rel: {name: fp32 tensor}}, info with the step, the snapshots used and each
    width's coefficients and residual norm)."""
    snaps = list_snapshots(run_dir, step)
    if not snaps:
        raise CheckpointError(f"{run_dir} has no post-hoc EMA snapshots"
                              + (f" at or before step {step}" if step is not None else "")
                              + ": train with --set train.posthoc_ema=true to keep them")
    target = snaps[-1].step if step is None else step
    if step is not None and snaps[-1].step != step:
        raise CheckpointError(f"{run_dir} has no snapshot at step {step} (the nearest before it is "
                              f"{snaps[-1].step}; they are saved every train.posthoc_ema_every steps)")
    times = [s.step for s in snaps for _ in s.sigma_rels]
    gammas = [g for s in snaps for g in s.gammas]
    coefficients, info = {}, {"step": target, "snapshots": [s.step for s in snaps], "widths": {}}
    for sr in sigma_rels:
        gamma = sigma_rel_to_gamma(sr)
        c = solve_coefficients(times, gammas, target, gamma)
        coefficients[sr] = c
        info["widths"][f"{sr:g}"] = {"gamma": gamma, "residual_norm": residual_norm(times, gammas, c, target, gamma),
                                     "sum_abs_coefficients": float(np.abs(c).sum())}
    out: dict[float, dict[str, torch.Tensor]] = {sr: {} for sr in sigma_rels}
    i = 0
    for snap in snaps:
        with safe_open(str(snap.path), framework="pt") as f:
            keys = list(f.keys())
            for stored in snap.sigma_rels:
                prefix = width_key(stored) + "/"
                for key in (k for k in keys if k.startswith(prefix)):
                    t = f.get_tensor(key).double()
                    name = key[len(prefix):]
                    for sr in sigma_rels:
                        acc = out[sr].get(name)
                        term = t * float(coefficients[sr][i])
                        out[sr][name] = term if acc is None else acc.add_(term)
                i += 1
    return {sr: {n: v.float() for n, v in w.items()} for sr, w in out.items()}, info


def storage_bytes(emas: list[PowerEMA], every: int, steps: int) -> int:
    """Disk taken by a run's snapshots: every power EMA's weights, every ``every`` steps."""
    per_snapshot = sum(v.numel() * v.element_size() for e in emas for v in e.shadow.values())
    return per_snapshot * (steps // every)


def write_reconstructed_run(source: str | Path, out: str | Path, sigma_rel: float,
                            weights: dict[str, torch.Tensor], info: dict) -> Path:
    """A run folder holding the reconstructed EMA as its ``ema1`` weights (with the source's
    buffers, config and class names), which ``vco sample`` / ``vco eval`` read like any run."""
    from ..files import atomic_write_text
    from .checkpoint import load_tensors, read_meta, save_checkpoint
    source, out = Path(source), Path(out)
    meta = read_meta(source)
    model = load_tensors(source, "model")
    missing = sorted(set(weights) - set(model))
    if missing:
        raise CheckpointError(f"the snapshots of {source} hold tensors its model does not ({missing[:3]})")
    tensors = {f"model/{k}": v for k, v in model.items() if k not in weights}     # buffers
    tensors.update({f"ema1/{k}": v for k, v in weights.items()})
    width = info["widths"][f"{sigma_rel:g}"]
    meta = {k: v for k, v in meta.items() if k != "format"}
    meta.update(step=info["step"], weights=["ema1"],
                posthoc_ema={"sigma_rel": sigma_rel, "source": str(source), "snapshots": info["snapshots"],
                             **width})
    save_checkpoint(out, tensors, meta)
    if (source / "config.yaml").is_file():
        atomic_write_text(out / "config.yaml", (source / "config.yaml").read_text())
    return out


@torch.no_grad()
def load_into(model: nn.Module, weights: dict[str, torch.Tensor], source: str) -> None:
    """Copy reconstructed weights into ``model``'s trainable parameters (every one, same shapes)."""
    from .checkpoint import state_mismatch
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    lines = state_mismatch(params, weights)
    if lines:
        raise CheckpointError(f"the post-hoc EMA of {source} does not fit its model:\n  " + "\n  ".join(lines))
    for n, p in params.items():
        p.copy_(weights[n])

"""Evaluate a run: class-balanced generation (split across ranks), Inception features, metrics,
results as JSON (+ a sample grid PNG); CFG sweeps with a table and a plot."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ..files import atomic_write_text
from ..sampling import generate, save_grid
from ..train.distributed import process_rank
from .inception import IS_UNAVAILABLE_REASON, InceptionFeatures
from .metrics import frechet_distance, inception_score, kid, precision_recall, stats
from .reference import ReferenceStats


def per_class_labels(num: int, num_classes: int) -> torch.Tensor:
    """Exactly num / num_classes samples of every class, class-sorted (the JiT/RAE protocol)."""
    if num < num_classes or num % num_classes:
        raise ValueError(f"--num must be a positive multiple of the {num_classes} classes "
                         f"(e.g. {num_classes * max(1, round(num / num_classes))}), got {num}")
    return torch.arange(num_classes).repeat_interleave(num // num_classes)



def rank_slice(num: int, rank: int, world: int) -> slice:
    """Contiguous share of ``num`` items for ``rank``; shares differ by at most one."""
    base, extra = divmod(num, world)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


def generate_share(model, cfg, labels: torch.Tensor, seed: int, batch_size: int, device,
                   progress: bool = True) -> tuple[slice, torch.Tensor]:
    """This rank's samples; every sample's noise depends only on (seed, its index), so the
    result does not depend on how the work is split."""
    rank, world = process_rank()
    share = rank_slice(len(labels), rank, world)
    images = generate(model, cfg, labels[share], seed=seed, batch_size=batch_size, device=device,
                      progress=progress and rank == 0, first_index=share.start)
    return share, images


def gather(array: np.ndarray) -> np.ndarray:
    """Concatenate every rank's array in rank order (identity without torch.distributed)."""
    rank, world = process_rank()
    if world == 1:
        return array
    if not dist.is_initialized():
        raise RuntimeError(f"launched as rank {rank} of {world} but torch.distributed is not "
                           f"initialised: call init_process_group before evaluating")
    parts = [None] * world
    dist.all_gather_object(parts, array)
    return np.concatenate(parts)


@dataclass
class EvalSettings:
    num: int
    cfg: float
    steps: int
    method: str
    seed: int = 0
    batch_size: int = 64
    weights: str = "ema1"
    cfg_semantic: float | None = None     # the semantic stream's w (None: the same as cfg)
    sigma_rel: float | None = None        # a post-hoc EMA width the weights were rebuilt at


def evaluate(model, cfg, meta: dict, settings: EvalSettings, ref: ReferenceStats, device,
             inception: InceptionFeatures, out_dir: Path | None = None, classifier=None,
             dinov2=None) -> dict:
    """Generate ``settings.num`` samples and score them against ``ref`` (rank 0 gets the dict).
    ``classifier`` (vco.eval.inception_score.InceptionClassifier) adds the Inception Score;
    ``dinov2`` (vco.eval.dinov2_features.DINOv2Features) adds FD-DINOv2 (``ref`` must hold its
    statistics)."""
    # both scales are set (a sweep over w guides both streams unless cfg_semantic is given)
    cfg.sampler.cfg, cfg.sampler.cfg_semantic = settings.cfg, settings.cfg_semantic
    cfg.sampler.steps, cfg.sampler.method = settings.steps, settings.method
    labels = per_class_labels(settings.num, cfg.model.num_classes)
    t0 = time.time()
    share, images = generate_share(model, cfg, labels, settings.seed, settings.batch_size, device)
    gen_s = time.time() - t0
    feats = gather(inception.extract(images, batch_size=settings.batch_size, progress=False))
    logits = None if classifier is None else gather(classifier.extract_logits(images, settings.batch_size))
    dino = None if dinov2 is None else gather(dinov2.extract(images, settings.batch_size))
    rank, _ = process_rank()
    if rank != 0:
        return {}
    mu, sigma = stats(feats)
    result = {"fid": frechet_distance(mu, sigma, ref.mu, ref.sigma)}
    if logits is not None:
        result["inception_score"], result["inception_score_std"] = inception_score(
            logits, min(10, len(logits)), from_logits=True)            # 10 splits, as ADM's suite
        result["inception_weights"] = str(classifier.path)
    else:
        result.update(inception_score=None, inception_score_note=IS_UNAVAILABLE_REASON)
    if dino is not None:
        result["fd_dinov2"] = frechet_distance(*stats(dino), *ref.dinov2)
        result["fd_dinov2_model"] = dinov2.source
    if ref.feats is not None:
        result["precision"], result["recall"] = precision_recall(ref.feats, feats, k=3)
        result["kid"], result["kid_std"] = kid(ref.feats, feats)
    result.update({"settings": vars(settings), "checkpoint_step": meta.get("step"),
                   "reference": ref.path, "num_reference": None if ref.feats is None else len(ref.feats),
                   "sampler": {"interval_min": cfg.sampler.interval_min,
                               "interval_max": cfg.sampler.interval_max},
                   "generation_seconds": round(gen_s, 1), "seconds": round(time.time() - t0, 1)})
    if out_dir is not None and share.start == 0:
        k = cfg.model.num_classes
        pick = torch.cat([torch.nonzero(labels[share] == c).flatten()[:8] for c in range(k)])
        save_grid(images[pick], labels[share][pick], meta.get("class_names", []), grid_path(out_dir, settings))
    return result


def grid_path(out_dir: Path, settings: EvalSettings) -> Path:
    """Where an evaluation's sample grid (8 per class) goes."""
    width = "" if settings.sigma_rel is None else f"_sigma_rel{settings.sigma_rel:g}"
    return Path(out_dir) / f"samples{width}_cfg{settings.cfg:g}.png"


def write_json(path: Path, obj) -> Path:
    """``obj`` as indented JSON (numpy scalars as floats), written atomically; returns ``path``."""
    atomic_write_text(path, json.dumps(obj, indent=2, default=float))
    return path


def sweep_outputs(results: list[dict], out_dir: Path, stem: str) -> tuple[Path, Path]:
    """A markdown table and a PNG (FID, precision and recall against w) of a CFG sweep."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ws = [r["settings"]["cfg"] for r in results]
    has_is, has_fd = results[0].get("inception_score") is not None, "fd_dinov2" in results[0]
    rows = ["| w | FID | precision | recall | IS |" + (" FD-DINOv2 |" if has_fd else ""),
            "|---|---|---|---|---|" + ("---|" if has_fd else "")]
    for w, r in zip(ws, results):
        is_text = f"{r['inception_score']:.2f} ± {r['inception_score_std']:.2f}" if has_is else "n/a"
        rows.append(f"| {w:g} | {r['fid']:.2f} | {r.get('precision', float('nan')):.3f} | "
                    f"{r.get('recall', float('nan')):.3f} | {is_text} |"
                    + (f" {r['fd_dinov2']:.2f} |" if has_fd else ""))
    table = out_dir / f"{stem}.md"
    note = "" if has_is else "\nIS: " + IS_UNAVAILABLE_REASON + "\n"
    atomic_write_text(table, "\n".join(rows) + "\n" + note)
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    ax.plot(ws, [r["fid"] for r in results], "o-", label="FID")
    ax.set_xlabel("guidance scale w")
    ax.set_ylabel("FID")
    if "precision" in results[0]:
        ax2 = ax.twinx()
        ax2.plot(ws, [r["precision"] for r in results], "s--", color="tab:green", label="precision")
        ax2.plot(ws, [r["recall"] for r in results], "^--", color="tab:red", label="recall")
        ax2.set_ylabel("precision / recall")
        ax2.legend(loc="upper right")
    ax.legend(loc="upper left")
    return table, _save_plot(fig, ax, out_dir / f"{stem}.png")


def ema_sweep_outputs(results: list[dict], out_dir: Path, stem: str) -> tuple[Path, Path]:
    """A markdown table (one row per post-hoc EMA width, one FID column per w) and a PNG of FID
    against sigma_rel, one line per guidance scale."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    widths = sorted({r["posthoc_ema"]["sigma_rel"] for r in results})
    ws = sorted({r["settings"]["cfg"] for r in results})
    fid = {(r["posthoc_ema"]["sigma_rel"], r["settings"]["cfg"]): r["fid"] for r in results}
    rows = ["| sigma_rel | " + " | ".join(f"FID (w = {w:g})" for w in ws) + " |",
            "|---|" + "---|" * len(ws)]
    rows += [f"| {s:g} | " + " | ".join(f"{fid[s, w]:.2f}" for w in ws) + " |" for s in widths]
    best = min(results, key=lambda r: r["fid"])
    rows += ["", f"Best: sigma_rel {best['posthoc_ema']['sigma_rel']:g}, w {best['settings']['cfg']:g}: "
                 f"FID {best['fid']:.2f} ({best['settings']['num']} samples, post-hoc EMA at step "
                 f"{best['posthoc_ema']['step']})."]
    table = out_dir / f"{stem}.md"
    atomic_write_text(table, "\n".join(rows) + "\n")
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    for w in ws:
        ax.plot(widths, [fid[s, w] for s in widths], "o-", label=f"w = {w:g}")
    ax.set_xlabel("post-hoc EMA width sigma_rel")
    ax.set_ylabel("FID")
    ax.legend()
    return table, _save_plot(fig, ax, out_dir / f"{stem}.png")


def _save_plot(fig, ax, path: Path) -> Path:
    import matplotlib.pyplot as plt
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path

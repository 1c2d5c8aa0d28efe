"""The semantic targets of a training run: frozen encoder (or feature cache) -> variance
normalisation -> calibration (Table 4) -> clean features f (B, N, C_s) for the co-denoising stream."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from ..config import Config, ConfigError
from ..data import to_model_range
from ..diffusion.flow import SameTime
from ..losses import reads_pooled_positives
from . import (FeatureCache, build_calibration, build_encoder, build_feature_cache, compute_stats,
               dataset_fingerprint, load_stats, save_stats)

STATS_NAME = "semantic_stats.safetensors"
log = logging.getLogger(__name__)


def encoder_from_config(cfg: Config):
    """The frozen encoder named by ``cfg.semantic``, on the pixel token grid of ``cfg.model``."""
    sc, mc = cfg.semantic, cfg.model
    try:
        return build_encoder(sc.encoder, mc.image_size // mc.patch_size, path=sc.encoder_path,
                             layer=sc.encoder_layer)
    except ValueError as e:           # an option the encoder does not have (e.g. a layer it lacks)
        raise ConfigError(str(e)) from None
    except OSError as e:              # missing files, or a hub that cannot be reached offline
        where = sc.encoder_path or "its default weights"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"semantic.encoder={sc.encoder}: cannot load {where} ({first}). Put the "
                          f"weights in a local folder and pass --set semantic.encoder_path=FOLDER") from None


def dataset_stats(encoder, dataset, num: int, scale: float | None, device):
    """Calibration statistics from ``num`` evenly spaced images of ``dataset``, both flips
    (as training sees them)."""
    n = min(num, len(dataset))
    idx = torch.linspace(0, len(dataset) - 1, n).long().tolist()
    batches = (to_model_range(torch.stack([dataset[i][0] for i in idx[k:k + 64]]))
               for k in range(0, n, 64))
    batches = (torch.cat([b, b.flip(-1)]) for b in batches)
    return compute_stats(encoder, batches, scale=scale, device=device)


class SemanticTargets:
    """The frozen encoder of a co-denoising run and the calibrated clean targets it gives.

    ``ratio`` is the RMS ratio s of the statistics (measured at the start when the config gives
    none); the run records it so that sampling rebuilds the same calibration. ``encoder`` is
    shared with the auxiliary losses that work in its feature space.
    """

    def __init__(self, cfg: Config, dataset, device: torch.device, run_dir: Path, world=None):
        sc, mc = cfg.semantic, cfg.model
        self.encoder = encoder_from_config(cfg).to(device)
        if self.encoder.feature_dim != mc.semantic_dim:
            raise ConfigError(f"encoder {sc.encoder} gives {self.encoder.feature_dim} channels but "
                              f"model.semantic_dim is {mc.semantic_dim}: "
                              f"--set semantic_dim={self.encoder.feature_dim}")
        # A feature cache (both flips of every image, raw fp16) replaces the encoder's forward
        # pass for the targets, and, where it holds them, for the real images' pooled features
        # that the hybrid/drifting loss reads; the loss still runs the encoder on x_pred.
        self.cache = self._cache(sc.cache, dataset, device, world, reads_pooled_positives(cfg)) if sc.cache else None
        stats = self._stats(cfg, dataset, device, Path(run_dir), world)
        stats.check_matches(self.encoder.num_tokens, self.encoder.feature_dim)
        # Table 4: the measured RMS ratio either scales the features or shifts their clock.
        self.ratio = stats.scale
        self.calibration = build_calibration(sc.calibration, stats.scale)
        self.stats = stats.with_scale(self.calibration.feature_scale()).to(device)

    @property
    def stream_time(self):
        """The semantic stream's clock as a function of the shared t."""
        return self.calibration.stream_time()

    def _cache(self, where: str, dataset, device, world=None, pooled: bool = False) -> FeatureCache:
        """A `vco cache` folder, or "auto": one cache per (encoder weights, dataset) under
        $VCO_CACHE (default ~/.cache/vco/features), built on first use and shared by later runs."""
        if where != "auto":
            path = Path(where)
        else:
            root = Path(os.environ.get("VCO_CACHE", Path.home() / ".cache" / "vco" / "features"))
            name = self.encoder.name.replace("/", "_")
            path = root / f"{name}-{self.encoder.fingerprint()}-{dataset_fingerprint(dataset)}"
        if where == "auto" and not (path / "meta.json").is_file() and (world is None or world.is_main):
            build_feature_cache(self.encoder, None, dataset, path, device=device, pooled=pooled)
        if world is not None:
            world.barrier()
        cache = FeatureCache(path, dataset, self.encoder)
        if pooled and cache.pooled is None:
            log.info("the feature cache %s holds no pooled features (built for another loss or by an "
                     "older vco): the auxiliary loss runs the encoder on the real images every step; "
                     "a cache built for this config (`vco cache`) holds them", path)
        return cache

    def _stats(self, cfg: Config, dataset, device, run_dir: Path, world=None):
        sc = cfg.semantic
        if sc.stats:
            return load_stats(sc.stats, scale=sc.scale)
        if self.cache is not None:
            stats = self.cache.stats
            return stats.with_scale(sc.scale) if sc.scale is not None else stats
        own = run_dir / STATS_NAME
        # A resumed run keeps its statistics; a new one computes them on rank 0, the others wait.
        if not own.is_file() and (world is None or world.is_main):
            stats = dataset_stats(self.encoder, dataset, sc.stats_images, sc.scale, device)
            run_dir.mkdir(parents=True, exist_ok=True)
            save_stats(stats, own)
        if world is not None:
            world.barrier()
        return load_stats(own, scale=sc.scale)

    @torch.no_grad()
    def targets(self, x: torch.Tensor, indices: list[int], flipped: torch.Tensor) -> torch.Tensor:
        """Clean calibrated semantic features (B, N, C) of the (already flipped) images x in
        [-1, 1], dataset items ``indices``; from the cache when there is one."""
        if self.cache is not None:
            raw = self.cache.get(torch.tensor(indices), flipped.cpu()).to(x.device)
        else:
            raw = self.encoder.patch_features(x).float()
        return self.stats.normalize(raw)

    def step_inputs(self, x: torch.Tensor, indices: list[int], flipped: torch.Tensor):
        """(the targets of x, (B, N, C); the encoder's pooled features of x, (B, C'), from a cache
        that holds them, else None: the auxiliary loss then computes them)."""
        cached = None if self.cache is None else self.cache.get_pooled(torch.tensor(indices), flipped.cpu())
        return self.targets(x, indices, flipped), None if cached is None else cached.to(x.device)


def stream_times(cfg: Config, num_streams: int) -> list:
    """Each stream's noise level as a function of the sampler's t, for sampling from a run of
    ``cfg`` (pixels: t; semantic: t, or t' under the time-shift calibration)."""
    if num_streams == 1:
        return [SameTime()]
    sc = cfg.semantic
    calibration = build_calibration(sc.calibration, sc.scale if sc.scale is not None else 1.0)
    if sc.scale is None and calibration.clock_needs_ratio():
        raise ConfigError(f"this run's semantic.calibration={sc.calibration['name']} needs the RMS "
                          f"ratio, but its config has no semantic.scale: pass --set semantic.scale=<ratio>")
    return [SameTime(), calibration.stream_time()]

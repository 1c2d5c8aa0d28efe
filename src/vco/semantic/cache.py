"""A disk cache of the frozen encoder's view of every real image, so training does not rerun the
encoder on them every step.

The encoder is frozen and the only data augmentation is a horizontal flip, so every target the semantic
stream can ever see is one of two feature maps per image. We compute both once and memory-map them.
The same holds for the pooled features of the real images that the hybrid and drifting losses
compare x_pred's with (their positives): with ``pooled=True`` they are cached too, in fp32 (768
numbers an image for DINOv2-B), so a step of the final recipe runs the encoder only on x_pred.

Folder layout (`path` is a directory):
    features.npy       float16, (len(dataset), 2, N, C); [:, 0] = original image, [:, 1] = flipped
    pooled.npy         float32, (len(dataset), 2, C'): encoder.pooled_features, the same order (optional)
    stats.safetensors  the FeatureStats used with this cache (given, or computed in the same pass)
    meta.json          encoder + dataset description; written last, so its presence means complete

Features are stored raw (before variance normalisation and RMS scaling): the calibration can change
(e.g. another scale) without rebuilding the cache.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..data.pixels import to_model_range
from ..files import atomic_write, atomic_write_text
from .calibration import FeatureStats, StatsAccumulator, load_stats, save_stats

FEATURES_FILE = "features.npy"
POOLED_FILE = "pooled.npy"
STATS_FILE = "stats.safetensors"
META_FILE = "meta.json"
CACHE_VERSION = 1


def dataset_fingerprint(dataset, num_probes: int = 8) -> str:
    """Length + hash of a few evenly spaced items (pixels and labels): cheap, and catches another
    dataset, another split, another resolution or another ordering."""
    n = len(dataset)
    h = hashlib.sha1(f"len={n}".encode())
    for i in sorted({round(k * (n - 1) / max(num_probes - 1, 1)) for k in range(num_probes)} if n else ()):
        image, label = dataset[i]
        image = torch.as_tensor(image)
        h.update(f"{i}:{int(label)}:{tuple(image.shape)}:{image.dtype}".encode())
        h.update(image.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _describe(encoder, dataset, pooled: bool) -> dict:
    return {
        "version": CACHE_VERSION,
        "encoder": encoder.name,
        "encoder_fingerprint": encoder.fingerprint(),
        "grid": encoder.grid,
        "num_tokens": encoder.num_tokens,
        "feature_dim": encoder.feature_dim,
        "dataset_len": len(dataset),
        "dataset_fingerprint": dataset_fingerprint(dataset),
        "pooled_dim": encoder.pooled_dim if pooled else None,    # None: no pooled.npy
    }


@torch.no_grad()
def build_feature_cache(encoder, stats: FeatureStats | None, dataset, path: str | os.PathLike,
                        batch_size: int = 64, device: torch.device | str = "cpu",
                        pooled: bool = False) -> "FeatureCache":
    """Compute raw patch features of every item, unflipped and flipped, into `path` (a directory).

    dataset: len(dataset) and dataset[i] -> (uint8 tensor (3, H, W), int label).
    stats: stored with the cache; None computes them in the same pass, over both flips (the images
    training sees), with the RMS scale measured on the same images.
    pooled: also cache ``encoder.pooled_features`` of both flips (one more encoder pass per view),
    the positives of the hybrid and drifting losses.
    The encoder is moved to `device`.
    """
    if len(dataset) == 0:
        raise ValueError("cannot cache features of an empty dataset")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / META_FILE).unlink(missing_ok=True)  # an interrupted rebuild must not look complete
    encoder.to(device)
    meta = _describe(encoder, dataset, pooled)
    if stats is not None:
        stats.check_matches(encoder.num_tokens, encoder.feature_dim)
    acc = StatsAccumulator() if stats is None else None

    def fill(tmp: Path, pooled_tmp: Path | None = None) -> None:
        _encode_dataset(encoder, dataset, batch_size, device, acc, tmp, pooled_tmp)

    # errors of the dataset or the encoder keep their type; I/O errors become a WriteError.
    # pooled.npy is renamed into place first; meta.json, written last, marks the folder complete.
    if pooled:
        atomic_write(path / FEATURES_FILE, lambda tmp: atomic_write(
            path / POOLED_FILE, lambda pooled_tmp: fill(tmp, pooled_tmp), passthrough=(Exception,)),
            passthrough=(Exception,))
    else:
        (path / POOLED_FILE).unlink(missing_ok=True)    # not left over from an earlier build
        atomic_write(path / FEATURES_FILE, fill, passthrough=(Exception,))

    if stats is None:
        stats = acc.finalize(encoder=encoder.name)
    save_stats(stats, path / STATS_FILE)
    atomic_write_text(path / META_FILE, json.dumps(meta, indent=2))
    return FeatureCache(path)


def _encode_dataset(encoder, dataset, batch_size: int, device, acc: StatsAccumulator | None,
                    features_path: Path, pooled_path: Path | None) -> None:
    """One pass over the data, both flips of each image: raw patch features (fp16) into a new .npy
    at ``features_path``, the pooled ones (fp32) at ``pooled_path`` if given; ``acc`` (if given)
    sees every view's patch features."""
    out = np.lib.format.open_memmap(features_path, mode="w+", dtype=np.float16,
                                    shape=(len(dataset), 2, encoder.num_tokens, encoder.feature_dim))
    pooled_out = None if pooled_path is None else np.lib.format.open_memmap(
        pooled_path, mode="w+", dtype=np.float32, shape=(len(dataset), 2, encoder.pooled_dim))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    start = 0
    for images, _ in tqdm(loader, desc=f"caching {encoder.name} features", unit="batch"):
        x = to_model_range(images, device)  # (B, 3, H, W)
        for flip, view in enumerate((x, torch.flip(x, dims=[-1]))):
            feats = encoder.patch_features(view)  # (B, N, C)
            out[start:start + len(x), flip] = feats.float().cpu().numpy().astype(np.float16)
            if acc is not None:
                acc.update(feats, view)
            if pooled_out is not None:
                pooled_out[start:start + len(x), flip] = encoder.pooled_features(view).float().cpu().numpy()
        start += len(x)
    for array in (out, pooled_out):
        if array is not None:
            array.flush()


class FeatureCache:
    """Read-only, memory-mapped view of a cache written by build_feature_cache.

    Pass `dataset` and/or `encoder` to refuse a cache built for something else.
    """

    def __init__(self, path: str | os.PathLike, dataset=None, encoder=None):
        self.path = Path(path)
        meta_path = self.path / META_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(
                f"no complete feature cache at {self.path} ({META_FILE} missing); build it with build_feature_cache"
            )
        self.meta = json.loads(meta_path.read_text())
        self.features = np.load(self.path / FEATURES_FILE, mmap_mode="r")  # (len, 2, N, C) float16
        expected = (self.meta["dataset_len"], 2, self.meta["num_tokens"], self.meta["feature_dim"])
        self._check_shape(FEATURES_FILE, self.features, expected)
        # (len, 2, C') float32, the pooled features of the real images; None in a cache without them
        self.pooled = None
        if self.meta.get("pooled_dim"):
            self.pooled = np.load(self.path / POOLED_FILE, mmap_mode="r")
            self._check_shape(POOLED_FILE, self.pooled, (self.meta["dataset_len"], 2, self.meta["pooled_dim"]))
        if dataset is not None or encoder is not None:
            self.check(dataset=dataset, encoder=encoder)

    def _check_shape(self, name: str, array: np.ndarray, expected: tuple) -> None:
        if array.shape != expected:
            raise ValueError(
                f"{self.path / name} has shape {array.shape}, but {META_FILE} says {expected}; "
                "the cache is corrupt: delete the folder and rebuild it"
            )

    def __len__(self) -> int:
        return self.features.shape[0]

    @property
    def num_tokens(self) -> int:
        return self.features.shape[2]

    @property
    def feature_dim(self) -> int:
        return self.features.shape[3]

    @property
    def stats(self) -> FeatureStats:
        """The statistics stored with the cache."""
        return load_stats(self.path / STATS_FILE)

    def check(self, dataset=None, encoder=None) -> None:
        """Raise ValueError naming every field that differs from the given dataset/encoder."""
        want = {}
        if dataset is not None:
            want["dataset_len"] = len(dataset)
            want["dataset_fingerprint"] = dataset_fingerprint(dataset)
        if encoder is not None:
            want.update(encoder=encoder.name, encoder_fingerprint=encoder.fingerprint(), grid=encoder.grid,
                        num_tokens=encoder.num_tokens, feature_dim=encoder.feature_dim)
            if self.pooled is not None:
                want["pooled_dim"] = encoder.pooled_dim
        diffs = [f"{k}: cache {self.meta.get(k)!r} vs given {v!r}" for k, v in want.items() if self.meta.get(k) != v]
        if diffs:
            raise ValueError(
                f"feature cache at {self.path} was built for another dataset/encoder ({'; '.join(diffs)}); "
                "rebuild it with build_feature_cache or point to the matching cache"
            )

    def get(self, indices: torch.Tensor, flipped: torch.Tensor) -> torch.Tensor:
        """indices (B,) long, flipped (B,) bool -> raw features (B, N, C) float32 (on CPU)."""
        return self._rows(self.features, indices, flipped)                           # (B, N, C)

    def get_pooled(self, indices: torch.Tensor, flipped: torch.Tensor) -> torch.Tensor | None:
        """The same items' pooled features (B, C') float32 on CPU; None if the cache has none."""
        return None if self.pooled is None else self._rows(self.pooled, indices, flipped)

    def _rows(self, array: np.ndarray, indices: torch.Tensor, flipped: torch.Tensor) -> torch.Tensor:
        idx = torch.as_tensor(indices).long().cpu().numpy()
        flip = torch.as_tensor(flipped).bool().cpu().numpy().astype(np.int64)
        if idx.shape != flip.shape or idx.ndim != 1:
            raise ValueError(f"indices {idx.shape} and flipped {flip.shape} must be 1-D and of equal length")
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"cache index out of range [0, {len(self)}): min {idx.min()}, max {idx.max()}")
        return torch.from_numpy(np.asarray(array[idx, flip], dtype=np.float32))

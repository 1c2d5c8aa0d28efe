"""Reference statistics and image sources for FID.

Reference ``.npz`` files understood by :func:`load_reference`:

* ours (:func:`save_reference`): ``mu (D,)``, ``sigma (D, D)``, optional ``feats (N, D)``
  (kept for precision/recall and KID).
* ADM's reference batches (e.g. ``VIRTUAL_imagenet256_labeled.npz``): ``mu``, ``sigma``
  (pool_3 stats, stored directly), ``mu_s``/``sigma_s`` (sFID spatial stats, kept in
  ``extras``) and ``arr_0`` (uint8 images ``(N, H, W, 3)``, loaded only on request).
* JiT's ``jit_in256_stats.npz``: ``mu``, ``sigma``.
* a features-only file (``feats`` or ``features``): stats are computed from the features.
* optionally (``vco eval ref --fd-dinov2 MODEL``): ``dinov2_mu``, ``dinov2_sigma`` and
  ``dinov2_model`` (which weights), the FD-DINOv2 reference beside Inception's.

:func:`load_images_source` reads an image folder or an ``.npz`` of uint8 images into one
uint8 ``(N, 3, H, W)`` array (held in memory: 10k 256x256 images are ~2 GB).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data import IMAGE_EXTENSIONS
from .metrics import stats

_FEATS_KEYS = ("feats", "features")
_IMAGE_KEYS = ("arr_0", "images")
_EXTRA_KEYS = ("mu_s", "sigma_s")


@dataclass
class ReferenceStats:
    """FID reference: ``mu (D,)``, ``sigma (D, D)``, optional ``feats (N, D)`` and images.

    ``images`` is uint8 ``(N, 3, H, W)`` when requested and present; ``extras`` holds other
    known arrays (ADM's sFID ``mu_s``/``sigma_s``).
    """

    mu: np.ndarray
    sigma: np.ndarray
    feats: np.ndarray | None = None
    images: np.ndarray | None = None
    path: str | None = None
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    dinov2: tuple[np.ndarray, np.ndarray] | None = None    # FD-DINOv2 (mu, sigma)
    dinov2_model: str | None = None                         # the DINOv2 weights they came from


def save_reference(path: str | os.PathLike, mu, sigma, feats=None, dinov2=None, dinov2_model=None) -> Path:
    """Write ``mu``, ``sigma`` (and ``feats`` if given; and ``dinov2`` = (mu, sigma) of the
    FD-DINOv2 features of ``dinov2_model``) as float64 to an ``.npz``; returns its path."""
    mu, sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
    d = mu.shape[0]
    if mu.ndim != 1 or sigma.shape != (d, d):
        raise ValueError(f"expected mu (D,) and sigma (D, D), got {mu.shape} and {sigma.shape}")
    arrays = {"mu": mu, "sigma": sigma}
    if feats is not None:
        feats = np.asarray(feats, np.float64)
        if feats.ndim != 2 or feats.shape[1] != d:
            raise ValueError(f"expected feats (N, {d}), got {feats.shape}")
        arrays["feats"] = feats
    if dinov2 is not None:
        arrays["dinov2_mu"], arrays["dinov2_sigma"] = (np.asarray(a, np.float64) for a in dinov2)
        arrays["dinov2_model"] = np.array(str(dinov2_model))
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    path.parent.mkdir(parents=True, exist_ok=True)
    from ..files import atomic_write
    atomic_write(path, lambda tmp: _savez(tmp, arrays))      # a crash never leaves half a reference
    return path


def _savez(tmp: Path, arrays: dict) -> None:
    with open(tmp, "wb") as f:             # a file object: np.savez would append ".npz" to the name
        np.savez(f, **arrays)


def _first_key(keys, candidates) -> str | None:
    return next((k for k in candidates if k in keys), None)


def load_reference(path: str | os.PathLike, load_images: bool = False) -> ReferenceStats:
    """Load reference stats from our / ADM's / JiT's ``.npz`` (see module docstring).

    ``mu``/``sigma`` are taken as stored; if absent but features are present they are
    computed from the features. ``load_images=True`` also decodes an ``arr_0``/``images``
    array into uint8 ``(N, 3, H, W)``. Raises ValueError naming the file and its keys if no
    stats or features are inside.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference statistics file not found: {path}")
    with np.load(path, allow_pickle=False) as data:
        keys = list(data.files)
        feats_key = _first_key(keys, _FEATS_KEYS)
        image_key = _first_key(keys, _IMAGE_KEYS)
        feats = np.asarray(data[feats_key], np.float64) if feats_key else None
        if "mu" in keys and "sigma" in keys:
            mu, sigma = np.asarray(data["mu"], np.float64), np.asarray(data["sigma"], np.float64)
        elif feats is not None:
            mu, sigma = stats(feats)
        else:
            hint = f"; it holds images under {image_key!r}: compute features first" if image_key else ""
            raise ValueError(
                f"{path}: no usable reference statistics (need 'mu' and 'sigma', or 'feats'); "
                f"keys found: {keys}{hint}"
            )
        images = None
        if load_images and image_key:
            images = _to_nchw_uint8(data[image_key], f"{path}[{image_key}]")
        extras = {k: np.asarray(data[k], np.float64) for k in _EXTRA_KEYS if k in keys}
        dinov2 = (np.asarray(data["dinov2_mu"], np.float64), np.asarray(data["dinov2_sigma"], np.float64)) \
            if "dinov2_mu" in keys and "dinov2_sigma" in keys else None
        dinov2_model = str(data["dinov2_model"]) if "dinov2_model" in keys else None
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"{path}: expected mu (D,) and sigma (D, D), got {mu.shape} and {sigma.shape}")
    return ReferenceStats(mu=mu, sigma=sigma, feats=feats, images=images, path=str(path), extras=extras,
                          dinov2=dinov2, dinov2_model=dinov2_model)


# ------------------------------------------------------------------------------------------------
# Image sources


def _to_nchw_uint8(arr: np.ndarray, where: str) -> np.ndarray:
    """uint8 ``(N, H, W, C)`` / ``(N, C, H, W)`` / ``(N, H, W)`` with C in {1, 3} -> ``(N, 3, H, W)``.

    Channels-last is assumed when the last axis is 1 or 3 (ADM's ``arr_0`` layout).
    """
    arr = np.asarray(arr)
    if arr.dtype != np.uint8:
        raise ValueError(f"{where}: expected uint8 images, got dtype {arr.dtype}")
    if arr.ndim == 3:
        arr = arr[:, None]
    elif arr.ndim != 4:
        raise ValueError(f"{where}: expected images (N, H, W, 3) or (N, 3, H, W), got shape {arr.shape}")
    elif arr.shape[-1] in (1, 3):
        arr = arr.transpose(0, 3, 1, 2)
    elif arr.shape[1] not in (1, 3):
        raise ValueError(f"{where}: cannot find a 1- or 3-channel axis in shape {arr.shape}")
    if arr.shape[1] == 1:
        arr = np.repeat(arr, 3, axis=1)
    return np.ascontiguousarray(arr)


def list_image_files(folder: str | os.PathLike) -> list[Path]:
    """Image files (vco.data.IMAGE_EXTENSIONS, any case) under ``folder``, recursively, sorted."""
    folder = Path(folder)
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _load_folder(folder: Path) -> np.ndarray:
    """Decode every image in ``folder`` to RGB; all must share one size (no resizing is done)."""
    from PIL import Image

    files = list_image_files(folder)
    if not files:
        raise ValueError(f"{folder}: no images found (looked recursively for {', '.join(IMAGE_EXTENSIONS)})")
    images: list[np.ndarray] = []
    for f in files:
        with Image.open(f) as im:
            rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
        if images and rgb.shape != images[0].shape:
            (h0, w0), (h, w) = images[0].shape[:2], rgb.shape[:2]
            raise ValueError(
                f"{folder}: images must all have the same size; {files[0]} is {w0}x{h0} but {f} is "
                f"{w}x{h} (resize them beforehand)"
            )
        images.append(rgb)
    return np.stack(images).transpose(0, 3, 1, 2).copy()


def _load_npz_images(path: Path) -> np.ndarray:
    with np.load(path, allow_pickle=False) as data:
        key = _first_key(data.files, _IMAGE_KEYS)
        if key is None:
            raise ValueError(
                f"{path}: no image array found (need one of {list(_IMAGE_KEYS)}); keys found: {data.files}"
            )
        return _to_nchw_uint8(data[key], f"{path}[{key}]")


def load_images_source(path: str | os.PathLike) -> np.ndarray:
    """Images from a folder (recursive, vco.data.IMAGE_EXTENSIONS, one common size) or an ``.npz``
    (uint8 under ``arr_0`` or ``images``, NHWC or NCHW) -> uint8 ``(N, 3, H, W)``."""
    path = Path(path)
    if path.is_dir():
        return _load_folder(path)
    if path.is_file() and path.suffix.lower() == ".npz":
        return _load_npz_images(path)
    if not path.exists():
        raise FileNotFoundError(f"image source not found: {path}")
    raise ValueError(f"{path}: unsupported image source (expected a folder of images or an .npz)")


__all__ = [
    "IMAGE_EXTENSIONS",
    "ReferenceStats",
    "list_image_files",
    "load_images_source",
    "load_reference",
    "save_reference",
]

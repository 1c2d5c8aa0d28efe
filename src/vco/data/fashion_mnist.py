"""Fashion-MNIST from its IDX files (Debian package ``dataset-fashion-mnist``): 28x28 grey, resized on request, served as RGB."""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .base import DataError, TensorImageDataset

CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
HOW_TO_GET = ("install it with `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or "
              "download the four *-ubyte.gz files from github.com/zalandoresearch/fashion-mnist "
              "and pass their folder with --set data.path=DIR or VCO_FASHION_MNIST=DIR")


def fashion_mnist_dir(path: str | None = None) -> Path:
    return Path(path or os.environ.get("VCO_FASHION_MNIST") or DEFAULT_DIR)


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (optionally gzipped): magic (0, 0, dtype 0x08, ndim), dims, uint8 data."""
    if not path.is_file():
        raise DataError(f"Fashion-MNIST file not found: {path}; {HOW_TO_GET}")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read {path} ({e}); the file is corrupt: reinstall it") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    dims = np.frombuffer(data, dtype=">u4", count=ndim, offset=4).astype(int)
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataError(f"{path} is truncated: expected {int(np.prod(dims))} bytes of data, "
                        f"found {body.size}; reinstall it")
    return body.reshape(dims)


def load_fashion_mnist(split: str = "train", image_size: int = 32, path: str | None = None):
    """split 'train' (60k) or 'test' (10k); images bicubically resized 28 -> image_size."""
    root = fashion_mnist_dir(path)
    if not root.is_dir():
        raise DataError(f"Fashion-MNIST folder not found: {root}; {HOW_TO_GET}")
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(root / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(root / f"{prefix}-labels-idx1-ubyte.gz")
    x = torch.from_numpy(images.copy()).unsqueeze(1)                    # (N, 1, 28, 28) uint8
    if image_size != x.shape[-1]:
        x = F.interpolate(x.float(), size=(image_size, image_size), mode="bicubic",
                          align_corners=False).round().clamp(0, 255).to(torch.uint8)
    return TensorImageDataset(x, torch.from_numpy(labels.astype(np.int64)), CLASS_NAMES)

"""Class-per-folder image datasets (ImageNet's train/ layout) with JiT's ADM centre crop."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from .base import DataError

log = logging.getLogger("vco.data")

# The image files read from a folder, lower case, by training data and by FID reference folders.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def center_crop_arr(img: Image.Image, image_size: int) -> Image.Image:
    """ADM crop: halve with a box filter while the short side is >= 2x the target, then bicubic
    resize so the short side equals the target, then a centre crop."""
    while min(img.size) >= 2 * image_size:
        img = img.resize(tuple(x // 2 for x in img.size), resample=Image.BOX)
    scale = image_size / min(img.size)
    img = img.resize(tuple(round(x * scale) for x in img.size), resample=Image.BICUBIC)
    arr = np.asarray(img)
    top, left = (arr.shape[0] - image_size) // 2, (arr.shape[1] - image_size) // 2
    return Image.fromarray(arr[top:top + image_size, left:left + image_size])


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB: alpha is composited on white, 16-bit and CMYK are converted."""
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, img).convert("RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if arr.max() > 255 else 255.0
        return Image.fromarray((arr / peak * 255).round().astype(np.uint8)).convert("RGB")
    return img.convert("RGB")


class ImageFolderDataset(Dataset):
    """root/<class>/<image>; classes sorted by folder name; files that are not images are skipped."""

    def __init__(self, root: str | Path, image_size: int):
        self.root, self.image_size = Path(root), image_size
        if not self.root.is_dir():
            raise DataError(f"data folder not found: {self.root}")
        classes = sorted(d.name for d in self.root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not classes:
            raise DataError(f"{self.root} has no class sub-folders; expected root/<class>/<image files>")
        self.samples: list[tuple[Path, int]] = []
        for k, name in enumerate(classes):
            files = sorted(p for p in (self.root / name).rglob("*")
                           if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            self.samples += [(p, k) for p in files]
        if not self.samples:
            raise DataError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) under {self.root}")
        counts = torch.bincount(torch.tensor([k for _, k in self.samples]), minlength=len(classes))
        self.empty_classes = [classes[k] for k in range(len(classes)) if counts[k] == 0]
        if self.empty_classes:
            # Kept, so that label indices match the folder list (as ImageNet's 1000 folders);
            # they are never drawn, and a class-balanced batch skips them.
            log.warning("%d class folder(s) hold no images and are never drawn: %s",
                        len(self.empty_classes), ", ".join(self.empty_classes[:5]))
        self.class_names = classes
        self.labels = torch.tensor([k for _, k in self.samples])

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        try:
            with Image.open(path) as img:
                img.load()
                img = center_crop_arr(to_rgb(img), self.image_size)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise DataError(f"cannot decode image {path}: {e}. Remove or replace the file.") from None
        arr = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)  # (3, H, W) uint8
        return arr, label

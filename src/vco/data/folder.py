"""Class-per-folder image datasets (ImageNet's train/ layout) with JiT's ADM centre crop."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from ..config import DataConfig
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


DEFAULT_MAX_IMAGE_PIXELS = DataConfig.max_image_pixels
# Our own limit (decode_image) replaces PIL's global one, so that the error names the file and the setting.
Image.MAX_IMAGE_PIXELS = None
_DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def decode_image(path: Path, image_size: int | None = None,
                 max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Open and fully decode ``path`` (RGB, ADM-cropped to ``image_size`` if given); a file that
    cannot be decoded, or whose header claims more than ``max_pixels`` (a decompression bomb),
    raises DataError naming the file."""
    try:
        with Image.open(path) as img:
            if img.width * img.height > max_pixels:
                raise DataError(f"image {path} claims {img.width}x{img.height} pixels, over "
                                f"data.max_image_pixels={max_pixels} (a decompression bomb?): remove it, "
                                f"or raise the limit with --set data.max_image_pixels=N")
            img.load()
            img = to_rgb(img)
    except DataError:
        raise
    except _DECODE_ERRORS as e:
        raise DataError(f"cannot decode image {path}: {e}. Remove or replace the file.") from None
    return center_crop_arr(img, image_size) if image_size else img


def class_files(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """(class names: the sub-folders, sorted; every file under each, sorted, with its label)."""
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"{root} has no class sub-folders; expected root/<class>/<image files>")
    return classes, [(p, k) for k, name in enumerate(classes)
                     for p in sorted(q for q in (root / name).rglob("*") if q.is_file())]


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def image_files(root: Path, manifest: str | Path | None = None) -> tuple[list[str], list[tuple[Path, int]]]:
    """(class names, (file, label) pairs) of root/<class>/<image>: from a directory walk, or
    from a `vco data check` manifest (its list of readable files, no walk)."""
    if manifest is not None:
        from .check import read_manifest
        return read_manifest(manifest, root)
    classes, files = class_files(root)
    return classes, [(p, k) for p, k in files if is_image_file(p)]


class ImageFolderDataset(Dataset):
    """root/<class>/<image>; classes sorted by folder name; files that are not images are skipped.

    A file that fails to decode mid-run is logged with its path and replaced by the next readable
    file of its class (indices i + 1, i + 2, ... mod N), so the label stays true: a function of i
    alone, so every rank and every resume draws the same replacement and exact resume holds. After ``max_bad_images`` distinct bad files (counted per data-loading process)
    the run stops with their list; 0 stops at the first.
    """

    def __init__(self, root: str | Path, image_size: int, manifest: str | Path | None = None,
                 max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, max_bad_images: int = 0):
        self.root, self.image_size = Path(root), image_size
        self.max_pixels, self.max_bad = max_image_pixels, max_bad_images
        self.bad: dict[Path, str] = {}
        classes, self.samples = image_files(self.root, manifest)
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
        label = self.samples[i][1]
        for j in range(len(self.samples)):       # the next readable image of the same class
            path, k = self.samples[(i + j) % len(self.samples)]
            if k != label:
                continue
            try:
                img = decode_image(path, self.image_size, self.max_pixels)
            except DataError as e:
                self._bad_file(path, str(e))
                continue
            return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1), label  # (3, H, W) uint8
        raise DataError(f"no image of class {self.class_names[label]!r} under {self.root} can be decoded")

    def _bad_file(self, path: Path, why: str) -> None:
        if path not in self.bad:
            self.bad[path] = why
            log.warning("skipping an unreadable image (%d so far): %s", len(self.bad), why)
        if len(self.bad) > self.max_bad:
            listing = "\n  ".join(self.bad.values())
            raise DataError(f"{len(self.bad)} unreadable image(s), over data.max_bad_images={self.max_bad}:\n  "
                            f"{listing}\nRun `vco data check {self.root}` to list them all, then remove them "
                            f"or train from its manifest (--set data.manifest=FILE)")

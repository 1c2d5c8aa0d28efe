"""Datasets: image folders (ADM crop), Fashion-MNIST, synthetic shapes; deterministic batching."""
from __future__ import annotations

from ..config import DataConfig
from .base import DataError, TensorImageDataset
from .fashion_mnist import load_fashion_mnist
from .folder import IMAGE_EXTENSIONS, ImageFolderDataset
from .pixels import to_model_range, to_uint8
from .schedule import BatchSchedule, ClassBalancedSchedule, StepBatchSampler
from .synthetic import make_synthetic


def build_dataset(cfg: DataConfig, image_size: int, num_classes: int):
    """``cfg.name``: fashion-mnist | fashion-mnist-test | synthetic | folder | imagenet (folder needs path)."""
    if cfg.name in ("fashion-mnist", "fashion-mnist-test"):
        split = "test" if cfg.name.endswith("test") else "train"
        return load_fashion_mnist(split, image_size, cfg.path)
    if cfg.name == "synthetic":
        return make_synthetic(cfg.synthetic_size, image_size, num_classes)
    if cfg.name in ("folder", "imagenet"):
        if not cfg.path:
            raise DataError(f"data '{cfg.name}' needs a folder: --data /path/to/train "
                            "(one sub-folder per class)")
        return ImageFolderDataset(cfg.path, image_size, cfg.manifest, cfg.max_image_pixels, cfg.max_bad_images)
    raise DataError(f"unknown data '{cfg.name}': use fashion-mnist, fashion-mnist-test, synthetic, "
                    "or a class-per-folder directory")

__all__ = ["DataError", "TensorImageDataset", "ImageFolderDataset", "IMAGE_EXTENSIONS", "BatchSchedule",
           "ClassBalancedSchedule", "StepBatchSampler", "build_dataset", "load_fashion_mnist", "make_synthetic",
           "to_model_range", "to_uint8"]

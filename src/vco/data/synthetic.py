"""A procedural dataset for tests: class-dependent shapes and colours on a dark background."""
from __future__ import annotations

import numpy as np
import torch

from .base import TensorImageDataset

SHAPES = ["disc", "square", "ring", "cross", "triangle", "hbar", "vbar", "diamond"]
COLOURS = [(230, 60, 60), (60, 200, 80), (70, 110, 240), (240, 200, 40), (200, 80, 220),
           (60, 210, 220), (250, 140, 40), (235, 235, 235)]
COLOUR_NAMES = ["red", "green", "blue", "yellow", "magenta", "cyan", "orange", "white"]


def _mask(shape: str, yy, xx, cy, cx, r):
    dy, dx = yy - cy, xx - cx
    return {
        "disc": dy ** 2 + dx ** 2 <= r ** 2,
        "square": (abs(dy) <= r * 0.8) & (abs(dx) <= r * 0.8),
        "ring": (dy ** 2 + dx ** 2 <= r ** 2) & (dy ** 2 + dx ** 2 >= (0.55 * r) ** 2),
        "cross": ((abs(dy) <= r * 0.3) | (abs(dx) <= r * 0.3)) & (abs(dy) <= r) & (abs(dx) <= r),
        "triangle": (dy <= r * 0.8) & (dy >= -r) & (abs(dx) <= (dy + r) * 0.55),
        "hbar": (abs(dy) <= r * 0.35) & (abs(dx) <= r),
        "vbar": (abs(dx) <= r * 0.35) & (abs(dy) <= r),
        "diamond": abs(dy) + abs(dx) <= r,
    }[shape]


def make_synthetic(num: int = 512, image_size: int = 32, num_classes: int = 10, seed: int = 0):
    """Class k: colour k % 8 and shape (k + k // 8) % 8, distinct for up to 64 classes (beyond
    that the pairs repeat: benchmarks of a 1000-class model need labels, not distinct images);
    random centre, radius and brightness per image."""
    if num_classes < 1:
        raise ValueError(f"synthetic data needs at least one class, got {num_classes}")
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:image_size, 0:image_size].astype(np.float32)
    images = np.zeros((num, 3, image_size, image_size), np.uint8)
    labels = np.arange(num) % num_classes
    for i, k in enumerate(labels):
        r = image_size * rng.uniform(0.22, 0.32)
        cy, cx = rng.uniform(r, image_size - r, size=2)
        m = _mask(SHAPES[(k + k // 8) % 8], yy, xx, cy, cx, r)
        colour = np.array(COLOURS[k % 8], np.float32) * rng.uniform(0.75, 1.0)
        images[i] = 20 + (m[None] * (colour[:, None, None] - 20)).astype(np.uint8)
    names = [f"{COLOUR_NAMES[k % 8]} {SHAPES[(k + k // 8) % 8]}" + (f" {k}" if num_classes > 64 else "")
             for k in range(num_classes)]
    return TensorImageDataset(torch.from_numpy(images), torch.from_numpy(labels), names)


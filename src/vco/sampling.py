"""Generate images from a trained model and lay them out as a class-labelled grid PNG."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from tqdm.auto import tqdm

from .config import Config
from .data.pixels import to_uint8
from .device import autocast, resolve_precision
from .diffusion import initial_noise, sample
from .diffusion.randomness import noise_seed
from .semantic.stream import stream_times


def class_labels(num: int, num_classes: int) -> torch.Tensor:
    """Class-sorted labels with (as nearly as possible) equal counts: 0,0,..,1,1,.."""
    per = math.ceil(num / num_classes)
    return torch.arange(num_classes).repeat_interleave(per)[:num]


def sample_noise(model, indices: range, seed: int, device) -> list[torch.Tensor]:
    """Initial noise of every stream for samples ``indices``: sample i's noise comes from its own
    generator seeded by noise_seed(seed, i), so results do not depend on batching or on the rank
    split."""
    per_stream = [[] for _ in model.stream_shapes(1)]
    for i in indices:
        g = torch.Generator(device).manual_seed(noise_seed(seed, i))
        for parts, n in zip(per_stream, initial_noise(model.stream_shapes(1), g, device)):
            parts.append(n)
    return [torch.cat(parts) for parts in per_stream]


@torch.no_grad()
def generate(model, cfg: Config, labels: torch.Tensor, seed: int = 0, batch_size: int = 64,
             device="cpu", progress: bool = True, first_index: int = 0) -> torch.Tensor:
    """uint8 images (N, C, H, W) for ``labels``; sample k uses the noise of index first_index + k."""
    m = cfg.model
    device = torch.device(device)
    precision = resolve_precision(cfg.train.precision, device)
    times = stream_times(cfg, len(model.stream_shapes(1)))
    starts = range(0, len(labels), batch_size)
    out = []
    # one bar over every sampler step of every batch: it moves from the first step on
    with tqdm(total=len(starts) * cfg.sampler.steps, desc=f"sample {len(labels)} images", unit="step",
              disable=not progress, leave=False) as bar:
        for start in starts:
            y = labels[start:start + batch_size].to(device)
            noise = sample_noise(model, range(first_index + start, first_index + start + len(y)), seed, device)
            with autocast(precision, device):
                x = sample(model, y, noise, cfg.sampler, cfg.diffusion, m.num_classes,
                           on_step=bar.update, stream_times=times)
            out.append(to_uint8(x).cpu())
    return torch.cat(out)


def save_grid(images: torch.Tensor, labels: torch.Tensor, class_names: list[str], path: str | Path,
              min_cell: int = 64) -> Path:
    """One row per class present, its name on the left; small images are upscaled (nearest)."""
    images = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
    h = images.shape[-1]
    zoom = max(1, math.ceil(min_cell / h))
    cell = h * zoom
    classes = labels.unique(sorted=True).tolist()
    rows = [images[labels == k] for k in classes]
    ncol = max(len(r) for r in rows)
    font = ImageFont.load_default()
    names = [class_names[k] if k < len(class_names) else str(k) for k in classes]
    margin = max(int(font.getlength(n)) for n in names) + 12
    pad = 2
    canvas = Image.new("RGB", (margin + ncol * (cell + pad), len(rows) * (cell + pad)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (name, row) in enumerate(zip(names, rows)):
        top = r * (cell + pad)
        draw.text((4, top + cell // 2 - 6), name, fill="black", font=font)
        for c, img in enumerate(row):
            arr = img.permute(1, 2, 0).numpy()
            tile = Image.fromarray(np.ascontiguousarray(arr)).resize((cell, cell), Image.NEAREST)
            canvas.paste(tile, (margin + c * (cell + pad), top))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path

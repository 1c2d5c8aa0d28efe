"""How visible a patch model's grid is in its images: the patch-seam ratio.

A transformer that decodes each p x p patch on its own can leave a step at every patch border.
The ratio compares the mean absolute difference of neighbouring pixels across patch borders with
that of neighbours inside a patch, over both directions. Natural images have no preferred grid,
so theirs is near 1 (the data's own value is the reference); a visible grid reads above it.
"""
from __future__ import annotations

import torch


def seam_differences(images: torch.Tensor, patch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """|neighbour differences| of ``images`` (N, C, H, W), split into (across patch borders,
    inside patches), each flattened; both directions together."""
    if images.ndim != 4:
        raise ValueError(f"expected images of shape (N, C, H, W), got {tuple(images.shape)}")
    if patch < 2 or images.shape[-1] % patch or images.shape[-2] % patch:
        raise ValueError(f"patch {patch} must be >= 2 and divide the image size {tuple(images.shape[-2:])}")
    x = images.double()
    across, inside = [], []
    for dim in (-1, -2):
        d = (x.narrow(dim, 1, x.shape[dim] - 1) - x.narrow(dim, 0, x.shape[dim] - 1)).abs()
        border = (torch.arange(1, x.shape[dim]) % patch == 0)       # pair (j-1, j) straddles a border
        across.append(d.index_select(dim, border.nonzero()[:, 0]).flatten())
        inside.append(d.index_select(dim, (~border).nonzero()[:, 0]).flatten())
    return torch.cat(across), torch.cat(inside)


def patch_seam_ratio(images: torch.Tensor, patch: int) -> float:
    """mean |difference| across patch borders / mean |difference| inside patches (1: no seams)."""
    across, inside = seam_differences(images, patch)
    if inside.mean() == 0:
        raise ValueError("the images are constant inside every patch: the seam ratio is undefined")
    return float(across.mean() / inside.mean())

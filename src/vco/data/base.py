"""What every dataset provides: uint8 images (3, H, W), int labels, class names."""
from __future__ import annotations

import torch
from torch.utils.data import Dataset


class DataError(ValueError):
    """Unusable data: the message names the path or file and what to do."""


class TensorImageDataset(Dataset):
    """Images held in memory as one uint8 tensor (N, C, H, W); C = 1 is replicated to RGB."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, class_names: list[str]):
        assert images.dtype == torch.uint8 and images.dim() == 4
        self.images, self.labels, self.class_names = images, labels.long(), list(class_names)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int):
        return self.images[i].expand(3, -1, -1), int(self.labels[i])

    def __getitems__(self, idx: list[int]):
        # Batched fetch (used by DataLoader): one gather instead of len(idx) small ones.
        index = torch.as_tensor(idx)
        imgs = self.images[index].expand(-1, 3, -1, -1).contiguous()
        return list(zip(imgs, self.labels[index].tolist()))

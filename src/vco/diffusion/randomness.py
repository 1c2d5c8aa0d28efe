"""Where the training step's random numbers come from.

``SampleStreams`` gives every training sample its own generator, seeded by (seed, step, the
sample's position in the step's global batch). A sample's flip, dropout draws, t and noise are then
the same whether the global batch runs on one process or is split over ranks and micro-batches,
so an 8-GPU run equals a 1-GPU run with gradient accumulation, and resuming needs no RNG state.
``noise_seed(seed, index)`` seeds the initial noise of generated sample ``index`` with the same mixing.
``SharedStream`` draws a whole batch from one torch.Generator (tests, simple uses).
Both offer ``rand(n)`` (uniform, (n,)) and ``randn(shape)`` (normal, leading dim = batch).
"""
from __future__ import annotations

import torch

_MIX = (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F)


class SharedStream:
    def __init__(self, generator: torch.Generator | None = None, device="cpu"):
        self.generator, self.device = generator, device

    def rand(self, n: int) -> torch.Tensor:
        return torch.rand(n, generator=self.generator, device=self.device)

    def randn(self, shape, dtype=torch.float32) -> torch.Tensor:
        return torch.randn(shape, generator=self.generator, device=self.device, dtype=dtype)


class SampleStreams:
    def __init__(self, seed: int, step: int, positions: list[int], device="cpu"):
        self.device = torch.device(device)
        self.generators = [torch.Generator(self.device).manual_seed(sample_seed(seed, step, p))
                           for p in positions]

    def __len__(self) -> int:
        return len(self.generators)

    def rand(self, n: int) -> torch.Tensor:
        self._check(n)
        return torch.cat([torch.rand(1, generator=g, device=self.device) for g in self.generators])

    def randn(self, shape, dtype=torch.float32) -> torch.Tensor:
        self._check(shape[0])
        return torch.stack([torch.randn(tuple(shape[1:]), generator=g, device=self.device, dtype=dtype)
                            for g in self.generators])

    def _check(self, n: int) -> None:
        if n != len(self.generators):
            raise ValueError(f"asked for {n} draws from the streams of {len(self.generators)} samples")


def sample_seed(seed: int, step: int, position: int) -> int:
    """The generator seed of one training sample (``position`` in the global batch of ``step``)."""
    return (seed * _MIX[0] + step * _MIX[1] + position) % (2 ** 63 - 1)


# Training steps count from 0, so this step value never names a training draw.
NOISE_STEP = -1


def noise_seed(seed: int, index: int) -> int:
    """The generator seed of the initial noise of generated sample ``index`` (vco.sampling)."""
    return sample_seed(seed, NOISE_STEP, index)


def as_stream(rng, device="cpu"):
    """A torch.Generator (or None) becomes a SharedStream; streams pass through."""
    return rng if isinstance(rng, (SharedStream, SampleStreams)) else SharedStream(rng, device)

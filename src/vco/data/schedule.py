"""Deterministic batch order: the indices of any step are a pure function of (seed, step).

Each epoch is a fresh permutation seeded by (seed, epoch); the incomplete last batch is dropped.
Resuming at step k therefore replays exactly the data an uninterrupted run would see, and under
DDP every rank takes its own slice of the global batch.
"""
from __future__ import annotations

import torch
from torch.utils.data import Sampler

from .base import DataError


class BatchSchedule:
    def __init__(self, num_items: int, global_batch: int, seed: int = 0):
        if num_items < global_batch:
            raise DataError(f"the dataset has {num_items} images, fewer than one global batch "
                            f"({global_batch}); lower train.batch_size or add data")
        self.num_items, self.global_batch, self.seed = num_items, global_batch, seed
        self.batches_per_epoch = num_items // global_batch
        self._perm_epoch, self._perm = -1, None

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm, self._perm_epoch = torch.randperm(self.num_items, generator=g), epoch
        return self._perm

    def global_indices(self, step: int) -> torch.Tensor:
        epoch, k = divmod(step, self.batches_per_epoch)
        return self._permutation(epoch)[k * self.global_batch:(k + 1) * self.global_batch]

    def micro_batch(self, step: int, micro: int, accum: int, rank: int, world: int) -> list[int]:
        """Indices of micro-batch ``micro`` (of ``accum``) of ``rank`` (of ``world``) at ``step``."""
        per = self.global_batch // (accum * world)
        chunk = micro * world + rank
        return self.global_indices(step)[chunk * per:(chunk + 1) * per].tolist()


class StepBatchSampler(Sampler):
    """DataLoader batch sampler yielding this rank's micro-batches from ``start_step`` on."""

    def __init__(self, schedule: BatchSchedule, start_step: int, end_step: int,
                 accum: int = 1, rank: int = 0, world: int = 1):
        self.schedule, self.start, self.end = schedule, start_step, end_step
        self.accum, self.rank, self.world = accum, rank, world

    def __len__(self) -> int:
        return max(0, self.end - self.start) * self.accum

    def __iter__(self):
        for step in range(self.start, self.end):
            for micro in range(self.accum):
                yield self.schedule.micro_batch(step, micro, self.accum, self.rank, self.world)


class ClassBalancedSchedule(BatchSchedule):
    """Each micro-batch of each rank holds ``classes_per_batch`` classes x m samples, so that a
    loss comparing same-class samples (V-Co's hybrid loss) sees several of each class locally.

    Classes and members are drawn afresh per step from a generator seeded by (seed, step):
    still a pure function of the step, so resuming is exact.
    """

    def __init__(self, labels: torch.Tensor, global_batch: int, chunks: int, classes_per_batch: int,
                 seed: int = 0):
        super().__init__(len(labels), global_batch, seed)
        per_chunk = global_batch // chunks
        if per_chunk % classes_per_batch:
            raise DataError(f"a micro-batch of {per_chunk} images cannot hold {classes_per_batch} "
                            f"classes equally: make train.batch_size a multiple of data.classes_per_batch")
        self.members = [torch.nonzero(labels == k).flatten() for k in range(int(labels.max()) + 1)]
        self.present = torch.tensor([k for k, m in enumerate(self.members) if len(m)])
        if classes_per_batch > len(self.present):
            raise DataError(f"data.classes_per_batch={classes_per_batch} but the data has only "
                            f"{len(self.present)} non-empty classes")
        self.chunks, self.k, self.m = chunks, classes_per_batch, per_chunk // classes_per_batch

    def global_indices(self, step: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        out = []
        for _ in range(self.chunks):
            for c in self.present[torch.randperm(len(self.present), generator=g)[:self.k]].tolist():
                members = self.members[c]
                if len(members) >= self.m:
                    pick = torch.randperm(len(members), generator=g)[:self.m]
                else:  # a small class is drawn with replacement
                    pick = torch.randint(len(members), (self.m,), generator=g)
                out.append(members[pick])
        return torch.cat(out)

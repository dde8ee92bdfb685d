"""A fast, resumable tabular loader: each batch is one tensor-indexing call.

A per-row ``Dataset`` costs a Python call per row (10 s per epoch on 1M rows, against
1.6 s this way; see NOTES.md). Here the sampler yields whole index tensors and the
dataset answers each with one ``x[idx]``. The shuffle of epoch N is a function of
(seed, N) only, so an epoch replayed after a resume sees the same batches.

Under distributed data parallel (``shard=True`` and a process group of W ranks), every
rank draws the same global batches and takes its W-th of each: the global batch stays
``batch_size`` rows whatever the number of ranks, so DDP's mean of the ranks' gradients
is the gradient of the whole batch (exactly when W divides its rows; shards differ by at
most one row otherwise), as in one process. A last batch of fewer than W rows is dropped
there, as every rank needs a row. Lightning's own distributed sampler is turned off
(``use_distributed_sampler=False``) for this.
"""

from __future__ import annotations

import hashlib

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit seed that depends only on (seed, epoch)."""
    digest = hashlib.sha256(f"lab-shuffle:{seed}:{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


class BatchIndices(Sampler):
    """Yields one index tensor per batch; shuffled per epoch when ``shuffle``.

    Lightning calls ``set_epoch`` before each epoch (also after a resume), which is
    all the state this sampler has.
    """

    def __init__(self, n_rows: int, batch_size: int, *, seed: int = 0, shuffle: bool = True, shard: bool = False):
        self.n_rows = n_rows
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.shard = shard  # under DDP, yield this rank's part of each global batch
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        batches = (self.n_rows + self.batch_size - 1) // self.batch_size
        world, _ = self._rank()
        tail = self.n_rows % self.batch_size
        return batches - (1 if world > 1 and 0 < tail < world else 0)

    def _rank(self) -> tuple[int, int]:
        """(world size, rank) of the process group when sharding under one, else (1, 0)."""
        dist = torch.distributed
        if self.shard and dist.is_available() and dist.is_initialized():
            return dist.get_world_size(), dist.get_rank()
        return 1, 0

    def __iter__(self):
        if self.shuffle:
            generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
            order = torch.randperm(self.n_rows, generator=generator)
        else:
            order = torch.arange(self.n_rows)
        world, rank = self._rank()
        if world == 1:
            yield from torch.split(order, self.batch_size)
            return
        for batch in torch.split(order, self.batch_size):
            if batch.numel() >= world:
                yield torch.tensor_split(batch, world)[rank]


class TensorRows(Dataset):
    """Feature and label tensors indexed a whole batch at a time."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x = x
        self.y = y

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[index], self.y[index]


def tabular_loader(x: torch.Tensor, y: torch.Tensor, batch_size: int, *, seed: int, shuffle: bool,
                   shard: bool = False) -> DataLoader:
    """A single-process DataLoader over ``(x, y)`` with one indexing call per batch;
    ``shard``: under DDP each rank gets its part of every global batch (see above)."""
    return DataLoader(
        TensorRows(x, y),
        sampler=BatchIndices(x.shape[0], batch_size, seed=seed, shuffle=shuffle, shard=shard),
        batch_size=None,  # the sampler already yields whole batches
        num_workers=0,
        # The loader draws a base seed per epoch; its own generator keeps that draw off
        # the global torch RNG, whose state the checkpoints restore.
        generator=torch.Generator().manual_seed(seed),
    )

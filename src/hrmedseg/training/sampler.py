"""Deterministic, resumable batch order that does not depend on the number of processes.

Each epoch draws one global permutation from (seed, epoch); global batch b is
``perm[b*G:(b+1)*G]`` and rank r takes its contiguous share of it. So a run resumed at
(epoch, step) sees exactly the batches it would have seen, with any world size, and every
sample index travels with its epoch, so augmentation can be seeded per (seed, epoch, index).
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Dataset

from ..data.augment import item_seed
from .config import TrainingSetupError


class EpochBatchSampler:
    def __init__(self, num_samples: int, global_batch: int, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True, seed: int = 0, drop_last: bool = True) -> None:
        if global_batch % world_size:
            raise TrainingSetupError(f"batch size {global_batch} is not divisible by {world_size} processes")
        if drop_last and num_samples < global_batch:
            raise TrainingSetupError(f"{num_samples} training samples are fewer than one batch of {global_batch}")
        self.n, self.g, self.rank, self.world = num_samples, global_batch, rank, world_size
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def batches_per_epoch(self) -> int:
        return self.n // self.g if self.drop_last else -(-self.n // self.g)

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch() - self.start_batch)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            perm = torch.randperm(self.n, generator=gen).tolist()
        else:
            perm = list(range(self.n))
        per_rank = self.g // self.world
        for b in range(self.start_batch, self.batches_per_epoch()):
            glob = perm[b * self.g:(b + 1) * self.g]
            local = glob[self.rank * per_rank:(self.rank + 1) * per_rank]
            if local:
                yield [(i, self.epoch) for i in local]


class SeededDataset(Dataset):
    """Wraps a dataset whose items are indexed by (index, epoch): seeds the augmentation from
    :func:`~hrmedseg.data.augment.item_seed` (seed, epoch, index) before each item, so results do
    not depend on workers or resumption.

    ``carry_seed=True`` (augmentation on the training device): an item the workers left
    unaugmented (a uint8 item, ``normalized=False``; its transform only resized it) carries its
    seed as ``aug_seed``, from which the device draws the very parameters the per-item path draws.
    """

    def __init__(self, dataset: Dataset, seed: int, carry_seed: bool = False) -> None:
        self.dataset, self.seed, self.carry_seed = dataset, seed, carry_seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int] | int):
        import random

        import numpy as np
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        seed = item_seed(self.seed, epoch, index)
        # Seed every generator an augmentation library may use, and put the global ones back
        # afterwards so that loading data in the main process (workers=0) does not disturb the
        # model's own randomness (dropout, stochastic depth).
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            random.seed(seed)
            np.random.seed(seed)
            # The CPU generator only: fork_rng(devices=[]) restores only it, and torch.manual_seed
            # would also reseed (and, before CUDA starts, queue with a formatted stack) every
            # accelerator's generator, per item.
            torch.random.default_generator.manual_seed(seed)
            tf = getattr(self.dataset, "transform", None)
            if tf is not None and hasattr(tf, "set_random_seed"):  # a transform with its own generator
                tf.set_random_seed(seed)
            try:
                item = self.dataset[index]
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)
        if self.carry_seed and isinstance(item, dict) and item.get("normalized", True) is False:
            item = {**item, "aug_seed": seed}
        return item

"""Data loaders of a run: shuffles that depend only on (seed, epoch), so a resumed run sees
the order of an uninterrupted one."""

from __future__ import annotations


import numpy as np
import torch
from torch.utils.data import DataLoader

from ..data import MultiViewData, MultiViewDataset, collate_views
from .config import Config

__all__ = ['EpochShuffleSampler', 'make_loader']


class EpochShuffleSampler(torch.utils.data.Sampler):
    """Shuffles with a permutation that depends only on ``(seed, epoch)``; Lightning calls
    :meth:`set_epoch` each epoch, so a resumed run sees the same order as an uninterrupted one."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self):
        return self.n


def make_loader(data: MultiViewData, cfg: Config, shuffle: bool, known: np.ndarray | None = None) -> DataLoader:
    sampler = EpochShuffleSampler(data.n, cfg.train.seed) if shuffle else None
    return DataLoader(MultiViewDataset(data, known), batch_size=cfg.train.batch_size, sampler=sampler,
                      collate_fn=collate_views, num_workers=cfg.train.num_workers,
                      drop_last=shuffle and data.n > cfg.train.batch_size,
                      persistent_workers=cfg.train.num_workers > 0)

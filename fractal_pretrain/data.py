"""Fractal images rendered on the fly, as a torch Dataset.

Only the IFS parameters exist on disk; every image is rendered inside the DataLoader worker from a
generator seeded by (seed, stream, class, index, epoch). The same key always renders the same
bytes, whatever the worker count, batch size or process, and each epoch sees fresh renders.

The epoch travels inside the index: ``EpochSampler`` yields ``epoch * len(dataset) + i``, so
persistent workers need no shared state to know which epoch they are rendering.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from fractal_pretrain.ifs import SystemBank
from fractal_pretrain.render import RenderConfig, render

TRAIN, VAL, PREVIEW = 0, 1, 2  # independent random streams over the same systems


class FractalImages(Dataset):
    """``renders_per_system`` images per stored system, labelled by the system's class."""

    def __init__(self, bank: SystemBank, render_cfg: RenderConfig, seed: int,
                 renders_per_system: int, stream: int = TRAIN,
                 mean: float | tuple = 0.2, std: float | tuple = 0.5):
        if renders_per_system < 1:
            raise ValueError(f"renders_per_system must be >= 1, got {renders_per_system}")
        self.bank, self.render_cfg, self.seed = bank, render_cfg, seed
        self.renders_per_system, self.stream = renders_per_system, stream
        self.mean = torch.tensor(mean, dtype=torch.float32).expand(3).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).expand(3).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.bank) * self.renders_per_system

    def render_uint8(self, key: int) -> tuple[np.ndarray, int]:
        epoch, i = divmod(int(key), len(self))
        system = i // self.renders_per_system
        label = int(self.bank.labels[system])
        rng = np.random.default_rng([self.seed, self.stream, label, i, epoch])
        return render(*self.bank.system(system), rng, self.render_cfg), label

    def __getitem__(self, key: int) -> tuple[torch.Tensor, int]:
        img, label = self.render_uint8(key)
        x = torch.from_numpy(img).float().div_(255.0)
        # grey renders are repeated to 3 channels: detectors feed the backbone RGB images
        x = x.permute(2, 0, 1) if x.ndim == 3 else x.expand(3, -1, -1)
        return (x - self.mean) / self.std, label


class EpochSampler(Sampler[int]):
    """Shuffles per (seed, epoch) and shards across ranks; yields epoch-tagged dataset keys.

    Lightning calls ``set_epoch`` before each epoch (also after a resume), so the order and the
    renders of epoch e are the same however training got there.
    """

    def __init__(self, size: int, seed: int, shuffle: bool = True, rank: int = 0, world: int = 1):
        self.size, self.seed, self.shuffle, self.rank, self.world = size, seed, shuffle, rank, world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.size / self.world)

    def __iter__(self):
        order = (np.random.default_rng([self.seed, self.epoch]).permutation(self.size)
                 if self.shuffle else np.arange(self.size))
        # pad so every rank gets the same number of samples (DDP needs equal step counts)
        order = np.resize(order, len(self) * self.world)[self.rank::self.world]
        return iter((order + self.epoch * self.size).tolist())


def preview_grid(bank: SystemBank, render_cfg: RenderConfig, seed: int, per_class: int = 8,
                 max_classes: int = 16) -> np.ndarray:
    """One row per class, ``per_class`` renders of that class's systems: an RGB uint8 mosaic."""
    rows = []
    for c in range(min(bank.num_classes, max_classes)):
        systems = np.flatnonzero(bank.labels == c)
        tiles = []
        for j in range(per_class):
            s = systems[j % len(systems)]
            img = render(*bank.system(s), np.random.default_rng([seed, PREVIEW, c, j]), render_cfg)
            tiles.append(np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img)
        rows.append(np.concatenate(tiles, axis=1))
    return np.concatenate(rows, axis=0)

"""The pre-training DataModule: training and validation renders, each epoch's order from
``EpochSampler`` (seed, epoch, rank), batches shaped on the device (GPU rendering, crops)."""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import torch
from lightning.pytorch.accelerators import CUDAAccelerator
from torch.utils.data import DataLoader, Dataset, Sampler

from fractal_pretrain.datasets import GpuBatchRenderer, RenderKeys


class EpochSampler(Sampler[int]):
    """Shuffles per (seed, epoch) and shards across ranks; yields epoch-tagged dataset keys.

    Lightning calls ``set_epoch`` before each epoch (also after a resume), so the order and the
    renders of epoch e are the same however training got there.

    Why not torch's ``DistributedSampler``: its shuffling and padding are the same idea, but it yields
    plain indices, and renders need the epoch inside the index (persistent workers share no state);
    a subclass adding it would also change every training order (torch ``randperm`` instead of this
    numpy permutation), and with it the published seeds' results, for six saved lines.
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


def random_crop(x: torch.Tensor, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """An independent random ``size`` x ``size`` crop of every image of a batch (on its device)."""
    n, _, h, w = x.shape
    if size >= min(h, w):
        return x
    top = torch.randint(0, h - size + 1, (n,), generator=generator).tolist()
    left = torch.randint(0, w - size + 1, (n,), generator=generator).tolist()
    return torch.stack([x[i, :, t:t + size, l:l + size] for i, (t, l) in enumerate(zip(top, left))])


def centre_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """The centre ``size`` x ``size`` of every image; the images as they are when they are not larger
    (as ``random_crop``: a recipe's crop on renders shrunk by ``+debug=tiny`` crops nothing)."""
    if size >= min(x.shape[-2:]):
        return x
    top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
    return x[..., top:top + size, left:left + size]


class FractalDataModule(L.LightningDataModule):
    """Training and held-out validation renders (``make_dataset`` streams TRAIN and VAL of one IFS
    bank), sharded by the trainer's rank.

    Batch-level input shaping happens on the device after transfer, drawing from the seeded
    main-process generator (so it does not depend on the number of loader workers): rendering whole
    batches on the GPU with ``fractal.renderer=torch``, and the random crop (the study renders
    512 px and crops 224; validation is centre-cropped to the same size).
    """

    def __init__(self, train_set: Dataset, val_set: Dataset, seed: int, per_device_batch: int,
                 num_workers: int = 0, crop_size: int | None = None):
        super().__init__()
        self.train_set, self.val_set = train_set, val_set
        self.seed, self.batch_size, self.workers = seed, per_device_batch, num_workers
        self.crop_size = crop_size
        self.gpu_render = {id(d): GpuBatchRenderer(d.images) for d in (self.train_set, self.val_set)
                           if isinstance(d, RenderKeys)}

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if self.gpu_render:
            dataset = self.train_set if self.trainer.training else self.val_set
            batch = self.gpu_render[id(dataset)](batch, self.trainer.strategy.root_device)
        x, y = batch
        if self.crop_size:
            crop = ((lambda v: random_crop(v, self.crop_size)) if self.trainer.training
                    else (lambda v: centre_crop(v, self.crop_size)))
            x = [crop(v) for v in x] if isinstance(x, list | tuple) else crop(x)  # each view of a pair
        return x, y

    def _loader(self, dataset, shuffle: bool) -> DataLoader:
        sampler = EpochSampler(len(dataset), self.seed, shuffle=shuffle,
                               rank=self.trainer.global_rank, world=self.trainer.world_size)
        return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, drop_last=shuffle,
                          num_workers=self.workers, persistent_workers=self.workers > 0,
                          pin_memory=isinstance(self.trainer.accelerator, CUDAAccelerator))

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

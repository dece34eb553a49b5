"""Fractal images rendered on the fly, as torch Datasets (the thin layer over render/families).

Only the IFS parameters exist on disk; every image is rendered inside the DataLoader worker from a
64-bit key derived from (seed, stream, class, index, epoch). The same key always renders the same
bytes, whatever the worker count, batch size or process, and each epoch sees fresh renders.

The epoch travels inside the index: ``EpochSampler`` (fractal_pretrain.datamodule) yields ``epoch * len(dataset) + i``, so
persistent workers need no shared state to know which epoch they are rendering.

Every family has ``len(bank) * renders_per_system`` items per epoch; item i belongs to system
``i // renders_per_system`` and carries that system's class, so class balance and the sampler are
the same for all families. ``make_dataset`` picks the class from the family's name.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch.utils.data import Dataset

from console.errors import ConfigError
from fractal_pretrain.fractals.families import (
    FAMILIES,
    MultiFormulaConfig,
    multi_instance_layout,
    ofdb_image,
    render_multi_formula,
    render_tiles,
)
from fractal_pretrain.fractals.ifs import SystemBank
from fractal_pretrain.fractals.render import RenderConfig, derive_key, render_key

TRAIN, VAL, PREVIEW = 0, 1, 2  # independent random streams over the same systems


class UnitImages(Dataset):
    """Common part of every pre-training source's images: ``renders_per_system`` items per unit of
    ``bank`` (an IFS system, a procedural class, an image file), indexing, keys, uint8 -> normalised
    float tensor. ``bank`` needs ``labels`` (the class of each unit), ``len`` and ``class_systems``."""

    def __init__(self, bank, size: int, seed: int, renders_per_system: int, stream: int = TRAIN,
                 mean: float | tuple = 0.2, std: float | tuple = 0.5):
        if renders_per_system < 1:
            raise ConfigError(f"pretrain.renders_per_system must be >= 1, got {renders_per_system}")
        if len(bank) == 0:
            raise ValueError("the source has no units (IFS systems, classes or images)")
        self.bank, self.size, self.seed = bank, size, seed
        self.renders_per_system, self.stream = renders_per_system, stream
        self.mean = torch.tensor(mean, dtype=torch.float32).expand(3).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).expand(3).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.bank) * self.renders_per_system

    def key(self, label: int, i: int, epoch: int) -> int:
        return derive_key(self.seed, self.stream, label, i, epoch)

    def render_index(self, i: int, epoch: int) -> tuple[np.ndarray, int]:
        raise NotImplementedError

    def render_uint8(self, key: int) -> tuple[np.ndarray, int]:
        """Image (uint8, (H, W, 3) or (H, W)) and label of an epoch-tagged dataset key."""
        epoch, i = divmod(int(key), len(self))
        return self.render_index(i, epoch)

    def index_of(self, label: int, j: int) -> int:
        """The j-th item of class ``label`` (for previews): cycles over the class's systems."""
        systems = self.bank.class_systems(label)
        s = int(systems[j % len(systems)])
        return s * self.renders_per_system + (j // len(systems)) % self.renders_per_system

    def to_tensor(self, img: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(img).float().div_(255.0)
        # grey renders are repeated to 3 channels: detectors feed the backbone RGB images
        x = x.permute(2, 0, 1) if x.ndim == 3 else x.expand(3, -1, -1)
        return (x - self.mean) / self.std

    def __getitem__(self, key: int) -> tuple[torch.Tensor, int]:
        img, label = self.render_uint8(key)
        return self.to_tensor(img), label


class RenderedImages(UnitImages):
    """Images rendered from the IFS systems of ``bank`` by ``render_cfg``."""

    def __init__(self, bank: SystemBank, render_cfg: RenderConfig, seed: int, renders_per_system: int,
                 stream: int = TRAIN, mean: float | tuple = 0.2, std: float | tuple = 0.5):
        super().__init__(bank, render_cfg.size, seed, renders_per_system, stream, mean, std)
        self.render_cfg = render_cfg


class FractalImages(RenderedImages):
    """``renders_per_system`` single-fractal images per stored system, labelled by its class."""

    def render_index(self, i: int, epoch: int) -> tuple[np.ndarray, int]:
        system = i // self.renders_per_system
        label = int(self.bank.labels[system])
        return render_key(*self.bank.system(system), self.key(label, i, epoch), self.render_cfg), label


class MultiFormulaImages(RenderedImages):
    """Multi-Formula canvases (Ugwu et al.): item i pastes fractals of the class of system
    ``i // renders_per_system`` (any of that class's systems)."""

    def __init__(self, *args, multi_formula: MultiFormulaConfig = MultiFormulaConfig(), **kwargs):
        super().__init__(*args, **kwargs)
        self.multi_formula = multi_formula

    def render_index(self, i: int, epoch: int) -> tuple[np.ndarray, int]:
        label = int(self.bank.labels[i // self.renders_per_system])
        return render_multi_formula(self.bank, label, self.key(label, i, epoch), self.render_cfg,
                                    self.multi_formula), label


class MultiInstanceImages(RenderedImages):
    """Anderson & Farrell's multi-instance images (the ``multilabel`` objective): item i pastes
    fractals of several classes, the first of the class of system ``i // renders_per_system``; the
    target is one binary value per class, 1 for each class present."""

    def __init__(self, *args, layout: MultiFormulaConfig = MultiFormulaConfig(2, 4, 0.3, 0.7), **kwargs):
        super().__init__(*args, **kwargs)
        self.layout = layout

    def placements(self, i: int, epoch: int) -> tuple[list, int]:
        label = int(self.bank.labels[i // self.renders_per_system])
        key = self.key(label, i, epoch)
        return multi_instance_layout(self.bank, label, key, self.render_cfg.size, self.layout), key

    def render_index(self, i: int, epoch: int) -> tuple[np.ndarray, int]:
        placements, key = self.placements(i, epoch)
        return render_tiles(self.bank, placements, key, self.render_cfg), int(self.bank.labels[placements[0].system])

    def __getitem__(self, key: int) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, i = divmod(int(key), len(self))
        placements, k = self.placements(i, epoch)
        target = torch.zeros(self.bank.num_classes)
        target[[int(self.bank.labels[p.system]) for p in placements]] = 1.0
        return self.to_tensor(render_tiles(self.bank, placements, k, self.render_cfg)), target


class TwoViews(Dataset):
    """Self-supervised pairs (SimCLR): item k is ((view 1, view 2), label), two independent
    augmentations of the k-th image of ``images``: random resized crop (``crop_scale`` of the area),
    horizontal flip and, with ``color_jitter`` s > 0, SimCLR's colour jitter of strength s on 80% of
    the views. Each view runs under a torch generator forked and seeded from (seed, item, view), so
    the pairs are reproducible whatever the loader workers."""

    def __init__(self, images: UnitImages, crop_scale: tuple[float, float] = (0.3, 1.0),
                 color_jitter: float = 0.0):
        from torchvision.transforms import v2

        self.images = images
        s = color_jitter
        self.augment = v2.Compose([
            v2.RandomResizedCrop(images.size, scale=tuple(crop_scale), antialias=True),
            v2.RandomHorizontalFlip(),
            *([v2.RandomApply([v2.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)], p=0.8)] if s > 0 else []),
        ])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: int):
        img, label = self.images.render_uint8(key)
        x = torch.from_numpy(img.reshape(img.shape[0], img.shape[1], -1)).permute(2, 0, 1).float().div_(255.0)
        x = x if x.shape[0] == 3 else x.expand(3, -1, -1)
        views = []
        for view in (0, 1):
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(derive_key(self.images.seed, 0x551, int(key), view) >> 1)
                views.append((self.augment(x) - self.images.mean) / self.images.std)
        return tuple(views), label


class OneImagePerClass(RenderedImages):
    """One fixed image per class (OFDB style), ``renders_per_system`` augmented copies per epoch.

    The augmentation is the per-sample part of the follow-up's recipe (random resized crop,
    horizontal flip, AutoAugment, RandomErasing); CutMix/MixUp act on batches and belong to the
    training step. torchvision draws from torch's global generator, so each sample runs under a
    generator forked and seeded from its key: reproducible, and no state leaks to the caller.
    """

    def __init__(self, *args, augment: Mapping | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if np.bincount(self.bank.labels).max() != 1:
            raise ConfigError("the ofdb family needs exactly one system per class "
                             "(fractal.systems_per_class=1)")
        self.augment_cfg = dict(augment or {})
        self._transform = None  # built lazily: torchvision import only where it is used

    def transform(self):
        if self._transform is None:
            from torchvision.transforms import v2

            a = {"crop_scale": (0.08, 1.0), "auto_augment": True, "random_erasing": 0.25, **self.augment_cfg}
            steps = [v2.RandomResizedCrop(self.render_cfg.size, scale=tuple(a["crop_scale"]),
                                          antialias=True),
                     v2.RandomHorizontalFlip()]
            if a["auto_augment"]:
                steps.append(v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET))
            steps.append(v2.ToDtype(torch.float32, scale=True))
            if a["random_erasing"] > 0:
                steps.append(v2.RandomErasing(p=a["random_erasing"], value=0))
            self._transform = v2.Compose(steps)
        return self._transform

    def base_image(self, label: int) -> np.ndarray:
        return ofdb_image(self.bank, label, self.seed, self.render_cfg)

    def render_index(self, i: int, epoch: int) -> tuple[np.ndarray, int]:
        """The un-normalised augmented image as uint8 (previews and tests)."""
        x, label = self.augmented(i, epoch)
        img = (x * 255.0 + 0.5).clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
        return (img if self.render_cfg.color else img[..., 0]), label

    def augmented(self, i: int, epoch: int) -> tuple[torch.Tensor, int]:
        label = int(self.bank.labels[i // self.renders_per_system])
        img = self.base_image(label)
        x = torch.from_numpy(img.reshape(img.shape[0], img.shape[1], -1)).permute(2, 0, 1)
        if not self.augment_cfg.get("enabled", True):
            return x.float().div_(255.0), label
        with torch.random.fork_rng(devices=[]):
            # the CPU generator only: torch.manual_seed would also queue CUDA seeding (slow, and
            # the transforms run on CPU); seeds must be < 2**63
            torch.default_generator.manual_seed(self.key(label, i, epoch) >> 1)
            x = self.transform()(x)
        return x, label

    def __getitem__(self, key: int) -> tuple[torch.Tensor, int]:
        epoch, i = divmod(int(key), len(self))
        x, label = self.augmented(i, epoch)
        x = x if x.shape[0] == 3 else x.expand(3, -1, -1)
        return (x - self.mean) / self.std, label


class RenderKeys(Dataset):
    """For ``fractal.renderer: torch``: items are (system, key, label) only, so DataLoader workers
    do no rendering; ``GpuBatchRenderer`` turns a batch of them into images on the GPU. Keys are
    the same as the CPU path's, so both renderers agree on every per-render choice."""

    def __init__(self, images: FractalImages):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: int) -> tuple[int, int, int]:
        epoch, i = divmod(int(key), len(self.images))
        system = i // self.images.renders_per_system
        label = int(self.images.bank.labels[system])
        k = self.images.key(label, i, epoch)
        return system, k - (1 << 64) if k >= 1 << 63 else k, label  # int64 for the default collate


class GpuBatchRenderer:
    """Renders a collated ``RenderKeys`` batch on ``device``: returns normalised (B, 3, H, W)
    float images and the labels. Call it in the training step (e.g. Lightning's
    ``on_after_batch_transfer``)."""

    def __init__(self, images: FractalImages, walkers: int = 1024):
        self.images, self.walkers = images, walkers

    def __call__(self, batch, device) -> tuple[torch.Tensor, torch.Tensor]:
        from fractal_pretrain.fractals.render_torch import render_batch

        systems, keys, labels = batch
        bank = self.images.bank
        x = render_batch([bank.system(int(s)) for s in systems], [int(k) for k in keys],
                         self.images.render_cfg, device=device, walkers=self.walkers)
        x = x.float().div_(255.0)
        x = x if x.shape[1] == 3 else x.expand(-1, 3, -1, -1)
        mean, std = self.images.mean.to(device), self.images.std.to(device)
        return (x - mean) / std, labels.to(device)


RENDERERS = ("cpu", "torch")


def check_family(family: str, renderer: str = "cpu") -> None:
    """The one check of a family and renderer name (the pipeline calls it before anything starts)."""
    if family not in FAMILIES:
        raise ConfigError(f"unknown fractal family {family!r} (fractal.family); choose from {FAMILIES}")
    if renderer not in RENDERERS:
        raise ConfigError(f"unknown renderer {renderer!r} (fractal.renderer); choose from {RENDERERS}")
    if renderer == "torch" and family != "fractals":
        raise ConfigError(f"the torch renderer renders the 'fractals' family only, not {family!r}")


def make_dataset(bank: SystemBank, render_cfg: RenderConfig, seed: int, renders_per_system: int,
                 stream: int = TRAIN, mean: float | tuple = 0.2, std: float | tuple = 0.5, *,
                 family: str = "fractals", renderer: str = "cpu",
                 multi_formula: MultiFormulaConfig | None = None, augment: Mapping | None = None):
    """The Dataset of ``family`` over ``bank``: ``FractalImages``, ``MultiFormulaImages`` (laid out
    by ``multi_formula``) or ``OneImagePerClass`` (augmented by ``augment``); with
    ``renderer="torch"`` a ``RenderKeys`` for ``GpuBatchRenderer`` (single fractals only)."""
    check_family(family, renderer)
    if bank.family is not None and bank.family != family:
        raise ConfigError(f"the IFS bank was generated for family {bank.family!r}, the config asks "
                          f"for {family!r}; rerun the generate stage")
    args = (bank, render_cfg, seed, renders_per_system, stream, mean, std)
    if family == "multi_formula":
        return MultiFormulaImages(*args, multi_formula=multi_formula or MultiFormulaConfig())
    if family == "ofdb":
        return OneImagePerClass(*args, augment=augment)
    return RenderKeys(FractalImages(*args)) if renderer == "torch" else FractalImages(*args)


def preview_grid(bank: SystemBank, render_cfg: RenderConfig, seed: int, per_class: int = 8,
                 max_classes: int = 16, **family) -> np.ndarray:
    """One row per class, ``per_class`` images of that class: an RGB uint8 mosaic, from the preview
    stream (never training images). ``family``: ``make_dataset``'s family keywords (default:
    single fractals)."""
    data = make_dataset(bank, render_cfg, seed, per_class, PREVIEW, **family)
    if isinstance(data, RenderKeys):  # GPU renderer: preview its CPU twin (same per-render draws)
        data = data.images
    return class_grid(data, bank.num_classes, per_class, max_classes)


def class_grid(data: UnitImages, num_classes: int, per_class: int = 8, max_classes: int = 16) -> np.ndarray:
    """One row per class (the first ``max_classes``), ``per_class`` of its images: an RGB uint8 mosaic."""
    rows = []
    for c in range(min(num_classes, max_classes)):
        tiles = []
        for j in range(per_class):
            img, _ = data.render_index(data.index_of(c, j), 0)
            tiles.append(np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img)
        rows.append(np.concatenate(tiles, axis=1))
    return np.concatenate(rows, axis=0)

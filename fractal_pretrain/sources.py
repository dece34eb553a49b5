"""Pre-training sources: what a backbone learns from, each as a set of *units* with a class each.

- ``FractalSource``: IFS systems (the study's), rendered by the ``fractal`` group's family.
- ``ProceduralSource``: dead leaves or spectral noise (fractal_pretrain.procedural); a unit is a
  class, one draw of the generator's parameters from the seed; images rendered on the fly.
- ``FolderSource``: an image folder (renders made elsewhere, or real images); a unit is a file, its
  class its sub-folder (``labels: folders``) or none (``labels: none``, for the SimCLR objective).
  A seeded share of each class is held out as the validation images.

Every source answers the same four things: ``num_classes``, ``images(seed, renders_per_unit,
stream, mean, std)`` (the Dataset the objectives train on: ``renders_per_unit`` items per unit and
epoch, each from a key of (seed, stream, class, item, epoch), so bit-exact whatever the workers),
``preview(seed)`` (a grid, one row per class) and ``save(folder)`` (what defines it, for the record).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from console.errors import ConfigError
from fractal_pretrain.datasets import PREVIEW, TRAIN, VAL, UnitImages, class_grid, make_dataset, preview_grid
from fractal_pretrain.fractals.ifs import SystemBank
from fractal_pretrain.fractals.render import derive_key
from fractal_pretrain.procedural import GENERATORS

SOURCES = ("fractal", *GENERATORS, "image_folder")
SOURCE_STREAM = 0x50C  # the class-parameter draws of procedural sources; no image key has this arity
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class Units:
    """A source's units and the class of each (duck-types ``SystemBank`` for ``UnitImages``)."""
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def class_systems(self, c: int) -> np.ndarray:
        return np.flatnonzero(self.labels == c)


class FractalSource:
    """The study's source: the IFS systems of ``bank`` rendered as ``family`` (make_dataset's keywords)."""
    name = "fractal"

    def __init__(self, bank: SystemBank, family: dict):
        self.bank, self.family = bank, family

    @property
    def num_classes(self) -> int:
        return self.bank.num_classes

    def images(self, seed: int, renders_per_unit: int, stream: int = TRAIN, mean=0.2, std=0.5):
        return make_dataset(self.bank, seed=seed, renders_per_system=renders_per_unit, stream=stream,
                            mean=mean, std=std, **self.family)

    def preview(self, seed: int) -> np.ndarray:
        return preview_grid(self.bank, seed=seed, **self.family)

    def save(self, folder: Path) -> Path:
        return self.bank.save(Path(folder) / "systems.npz")


class ProceduralImages(UnitImages):
    """``renders_per_system`` fresh images of each procedural class per epoch."""

    def __init__(self, source: ProceduralSource, *args, **kwargs):
        super().__init__(Units(np.arange(len(source.classes))), source.size, *args, **kwargs)
        self.render = GENERATORS[source.name][1]
        self.classes = source.classes

    def render_index(self, i: int, epoch: int) -> tuple[np.ndarray, int]:
        label = i // self.renders_per_system
        return self.render(self.classes[label], self.key(label, i, epoch), self.size), label


@dataclass(frozen=True)
class ProceduralSource:
    """``len(classes)`` classes of the ``name`` generator, each a parameter draw (``draw``)."""
    name: str
    size: int
    classes: tuple[dict, ...]

    @classmethod
    def draw(cls, name: str, num_classes: int, size: int, seed: int) -> ProceduralSource:
        if name not in GENERATORS:
            raise ConfigError(f"unknown procedural source {name!r}; choose from {tuple(GENERATORS)}")
        if num_classes < 2 or size < 8:
            raise ConfigError(f"pretrain.source: num_classes must be >= 2 and size >= 8 px, got "
                              f"{num_classes} and {size}")
        draw_class = GENERATORS[name][0]
        return cls(name, size, tuple(draw_class(derive_key(seed, SOURCE_STREAM, c)) for c in range(num_classes)))

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def images(self, seed: int, renders_per_unit: int, stream: int = TRAIN, mean=0.2, std=0.5):
        return ProceduralImages(self, seed, renders_per_unit, stream, mean, std)

    def preview(self, seed: int) -> np.ndarray:
        return class_grid(self.images(seed, 8, PREVIEW), self.num_classes)

    def save(self, folder: Path) -> Path:
        path = Path(folder) / "classes.json"
        path.write_text(json.dumps({"source": self.name, "size": self.size, "classes": list(self.classes)}, indent=1))
        return path


class FolderImages(UnitImages):
    """The files of a ``FolderSource`` split: ``renders_per_system`` random resized crops (and flips)
    of each file per epoch, each drawn under a torch generator seeded from its key; or, with
    ``augment=False`` (validation), the file's centre view, resized."""

    def __init__(self, source: FolderSource, files: np.ndarray, augment: bool, *args, **kwargs):
        super().__init__(Units(source.labels[files]), source.size, *args, **kwargs)
        self.paths = [source.root / source.files[f] for f in files]
        self.augment, self.crop_scale = augment, source.crop_scale
        self._transform = None

    def transform(self):
        if self._transform is None:
            from torchvision.transforms import v2

            self._transform = v2.Compose(
                [v2.RandomResizedCrop(self.size, scale=self.crop_scale, antialias=True), v2.RandomHorizontalFlip()]
                if self.augment else [v2.Resize(self.size, antialias=True), v2.CenterCrop(self.size)])
        return self._transform

    def render_index(self, i: int, epoch: int) -> tuple[np.ndarray, int]:
        from PIL import Image

        unit = i // self.renders_per_system
        label = int(self.bank.labels[unit])
        with Image.open(self.paths[unit]) as img:
            x = torch.from_numpy(np.asarray(img.convert("RGB")).copy()).permute(2, 0, 1)
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(self.key(label, i, epoch) >> 1)
            x = self.transform()(x)
        return x.permute(1, 2, 0).numpy(), label


@dataclass(frozen=True)
class FolderSource:
    """The image files under ``root`` (relative paths, sorted), their classes and the held-out split."""
    root: Path
    files: tuple[str, ...]
    labels: np.ndarray
    classes: tuple[str, ...]
    val: np.ndarray  # bool per file: held out for validation
    size: int
    crop_scale: tuple[float, float] = (0.35, 1.0)
    name: str = field(default="image_folder", init=False)

    @classmethod
    def scan(cls, root: str | Path, labels: str, size: int, val_fraction: float, seed: int,
             crop_scale: tuple[float, float] = (0.35, 1.0)) -> FolderSource:
        """Index ``root``; every file is opened once (a broken image fails here, named, not mid-training)."""
        from PIL import Image, UnidentifiedImageError

        root = Path(root).expanduser()
        fix = ("point pretrain.source.root at a folder of images: one sub-folder per class "
               "(labels: folders), or any layout with labels: none and pretrain/objective=simclr")
        if not root.is_dir():
            raise ConfigError(f"pretrain.source.root={root} is not a folder; {fix}")
        if labels not in ("folders", "none"):
            raise ConfigError(f"pretrain.source.labels must be folders or none, got {labels!r}")
        if not 0.0 < val_fraction < 1.0:
            raise ConfigError(f"pretrain.source.val_fraction must be in (0, 1), got {val_fraction}")
        files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                       if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if labels == "folders":
            loose = [f for f in files if "/" not in f]
            if loose:
                raise ConfigError(f"{len(loose)} images lie directly in {root} (e.g. {loose[0]}) but labels: folders "
                                  f"takes the class from the sub-folder; move them into class folders, or use "
                                  f"pretrain.source.labels=none with pretrain/objective=simclr")
        if not files:
            raise ConfigError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {root}; {fix}")
        for f in files:
            try:
                with Image.open(root / f) as img:
                    img.verify()
            except (OSError, UnidentifiedImageError) as err:
                raise ConfigError(f"{root / f} is not a readable image ({err}); remove or replace it") from err
        classes = sorted({f.split("/")[0] for f in files}) if labels == "folders" else ["all"]
        label_of = {c: i for i, c in enumerate(classes)}
        y = np.array([label_of[f.split("/")[0]] if labels == "folders" else 0 for f in files], dtype=np.int64)
        if labels == "folders" and len(classes) < 2:
            raise ConfigError(f"{root} has one class folder ({classes[0]}); classification needs two or more, or "
                              f"use pretrain.source.labels=none with pretrain/objective=simclr")
        val = np.zeros(len(files), dtype=bool)
        rng = np.random.default_rng([seed, SOURCE_STREAM])
        for c in range(len(classes)):
            members = np.flatnonzero(y == c)
            if len(members) >= 2:  # a class of one image keeps it for training
                val[rng.permutation(members)[:max(1, round(val_fraction * len(members)))]] = True
        if not val.any():
            raise ConfigError(f"{root}: no class has two images, so none can be held out for validation; "
                              f"add images")
        return cls(root, tuple(files), y, tuple(classes), val, size, tuple(crop_scale))

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def images(self, seed: int, renders_per_unit: int, stream: int = TRAIN, mean=0.2, std=0.5):
        if stream == VAL:  # the held-out files, each once, as they are
            return FolderImages(self, np.flatnonzero(self.val), False, seed, 1, stream, mean, std)
        return FolderImages(self, np.flatnonzero(~self.val), True, seed, renders_per_unit, stream, mean, std)

    def preview(self, seed: int) -> np.ndarray:
        return class_grid(self.images(seed, 1, PREVIEW), self.num_classes)

    def save(self, folder: Path) -> Path:
        listing = [{"file": f, "class": self.classes[c], "split": "val" if v else "train"}
                   for f, c, v in zip(self.files, self.labels.tolist(), self.val.tolist())]
        digest = hashlib.sha256(json.dumps(listing).encode()).hexdigest()
        path = Path(folder) / "images.json"
        path.write_text(json.dumps({"source": self.name, "root": str(self.root), "size": self.size,
                                    "classes": list(self.classes), "listing_sha256": digest, "files": listing}, indent=1))
        return path

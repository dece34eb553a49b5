"""Generate stage: the pre-training source, made and stored with a preview grid.

The fractal source (``pretrain.source.name=fractal``): the ``fractal`` group and ``seed`` -> a
``GenerateSpec`` (checked once) -> the IFS systems, stored (``systems.npz``, format-versioned, no
pickle). The family, sampler and the whole ``fractal`` group travel in the bank's metadata, so the
pretrain stage can check it renders what was generated. Other sources (``SourceSpec``): the
procedural classes drawn from the seed (``classes.json``) or the image folder indexed and split
(``images.json``). The record hands the pretrain stage the source (fractal_pretrain.sources).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from console.errors import ConfigError
from fractal_pretrain.datasets import check_family
from fractal_pretrain.fractals.families import MultiFormulaConfig
from fractal_pretrain.fractals.ifs import SAMPLERS, fill_ratio, sample_bank
from fractal_pretrain.fractals.render import RenderConfig
from fractal_pretrain.procedural import GENERATORS
from fractal_pretrain.sources import SOURCES, FolderSource, FractalSource, ProceduralSource
from pipeline.config import seed_stage

FILL_SAMPLE = 64  # systems whose fill ratio is measured and logged (a sanity figure, not a filter)


@dataclass(frozen=True)
class GenerateSpec:
    """What the generate stage makes: ``num_classes x systems_per_class`` systems drawn by
    ``sampler`` from ``seed``, rendered as ``family`` (``make_dataset``'s family keywords)."""
    seed: int
    num_classes: int
    systems_per_class: int
    sampler: str
    sampler_args: dict[str, Any]
    family: dict[str, Any]  # render_cfg, family, renderer, multi_formula, augment
    meta: dict[str, Any] = field(default_factory=dict)  # stored with the bank: the whole fractal group


@dataclass(frozen=True)
class SourceSpec:
    """A source other than fractals: ``name`` and its settings (conf/pretrain/source/<name>.yaml)."""
    seed: int
    name: str
    settings: dict[str, Any]


@dataclass
class GenerateRecord:
    source: Any  # fractal_pretrain.sources: FractalSource, ProceduralSource or FolderSource
    bank_path: Path  # what defines the source: systems.npz, classes.json or images.json
    preview_path: Path
    metrics: dict[str, float]


def generate_spec(cfg: DictConfig) -> GenerateSpec | SourceSpec:
    """The source's settings and ``seed`` as the stage's spec, checked: ranges and combinations here
    (types were checked at composition, by the structured configs)."""
    name = cfg.pretrain.source.name
    if name not in SOURCES:
        raise ConfigError(f"unknown pre-training source {name!r}; choose pretrain/source= one of {SOURCES}")
    if name != "fractal":
        if cfg.fractal.renderer != "cpu":
            raise ConfigError(f"the {name} source renders on the CPU; set fractal.renderer=cpu")
        settings = OmegaConf.to_container(cfg.pretrain.source, resolve=True)
        if name == "image_folder" and OmegaConf.is_missing(cfg.pretrain.source, "root"):
            raise ConfigError("pretrain/source=image_folder needs its folder: pretrain.source.root=/path/to/images "
                              "(one sub-folder per class, or pretrain.source.labels=none)")
        return SourceSpec(cfg.seed, name, settings)
    f = cfg.fractal
    if f.num_classes < 2:
        raise ConfigError(f"fractal.num_classes must be >= 2 for a classification task, got {f.num_classes}")
    if f.systems_per_class < 1:
        raise ConfigError(f"fractal.systems_per_class must be >= 1, got {f.systems_per_class}")
    check_family(f.family, f.renderer)
    if f.family == "ofdb" and f.systems_per_class != 1:
        raise ConfigError("fractal.family=ofdb is one image per class: set fractal.systems_per_class=1")
    if f.sampler not in SAMPLERS:
        raise ConfigError(f"unknown fractal.sampler {f.sampler!r}; choose from {SAMPLERS}")
    try:  # the renderer's dataclasses check their own ranges in __post_init__
        family = {"render_cfg": RenderConfig(**f.render), "family": f.family, "renderer": f.renderer,
                  "multi_formula": MultiFormulaConfig(**f.multi_formula) if "multi_formula" in f else None,
                  "augment": OmegaConf.to_container(f.augment) if "augment" in f else None}
    except ValueError as err:
        raise ConfigError(f"fractal.render / fractal.multi_formula: {err}") from err
    sampler_args = dict(f.fractaldb) if f.sampler == "fractaldb" else {}
    if "maps" in sampler_args:
        sampler_args["maps"] = tuple(sampler_args["maps"])
    return GenerateSpec(cfg.seed, f.num_classes, f.systems_per_class, f.sampler, sampler_args, family,
                        {"family": f.family, "fractal": OmegaConf.to_container(f, resolve=True)})


def make_source(spec: GenerateSpec | SourceSpec):
    """The source of ``spec``: a pure function of it, so every DDP rank makes the same source (samples
    the same bank) itself instead of waiting for rank 0's file."""
    if isinstance(spec, GenerateSpec):
        return FractalSource(sample_bank(spec.num_classes, spec.systems_per_class, seed=spec.seed, sampler=spec.sampler,
                                         meta=spec.meta, **spec.sampler_args), spec.family)
    s = spec.settings
    if spec.name in GENERATORS:
        return ProceduralSource.draw(spec.name, s["num_classes"], s["size"], spec.seed)
    return FolderSource.scan(s["root"], s["labels"], s["size"], s["val_fraction"], spec.seed, s["crop_scale"])


def generate(spec: GenerateSpec | SourceSpec, out_dir: str | Path) -> GenerateRecord:
    """Make the source, store what defines it in ``out_dir`` with a preview grid; for fractals,
    measure the systems' fill."""
    seed_stage(spec.seed)  # IFS sampling draws from its own seeded generator; the preview too
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    source = make_source(spec)
    sample_s = time.perf_counter() - start
    bank_path = source.save(out_dir)

    start = time.perf_counter()
    grid = source.preview(spec.seed)
    preview_s = time.perf_counter() - start
    preview_path = out_dir / "preview.png"
    Image.fromarray(grid).save(preview_path)
    metrics = {"num_classes": source.num_classes, "sample_seconds": sample_s, "preview_seconds": preview_s}
    if isinstance(source, FractalSource):
        bank = source.bank
        fills = [fill_ratio(*bank.system(i), size=512, n_points=100_000, seed=i)
                 for i in range(min(len(bank), FILL_SAMPLE))]
        metrics.update(num_systems=len(bank), fill_ratio_median=float(np.median(fills)))
    if isinstance(source, FolderSource):
        metrics.update(num_images=len(source.files), num_val_images=int(source.val.sum()))
    return GenerateRecord(source, bank_path, preview_path, metrics)

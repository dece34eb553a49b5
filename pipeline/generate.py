"""Generate stage: the ``fractal`` group and ``seed`` -> a ``GenerateSpec`` (checked once) -> the IFS
systems, stored (``systems.npz``, format-versioned, no pickle) with a preview grid.

The family, sampler and the whole ``fractal`` group travel in the bank's metadata, so the pretrain
stage can check it renders what was generated; the record hands the pretrain stage the bank and the
family keywords it renders with (``GenerateRecord.family``).
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
from fractal_pretrain.datasets import check_family, preview_grid
from fractal_pretrain.fractals.families import MultiFormulaConfig
from fractal_pretrain.fractals.ifs import SAMPLERS, SystemBank, fill_ratio, sample_bank
from fractal_pretrain.fractals.render import RenderConfig
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


@dataclass
class GenerateRecord:
    bank: SystemBank
    bank_path: Path
    preview_path: Path
    family: dict[str, Any]
    metrics: dict[str, float]


def generate_spec(cfg: DictConfig) -> GenerateSpec:
    """The ``fractal`` group and ``seed`` as the stage's spec, checked: ranges and combinations here
    (types were checked at composition, by the structured configs)."""
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


def sample_systems(spec: GenerateSpec) -> SystemBank:
    """The IFS systems of ``spec``: a pure function of it, so every DDP rank samples the same bank
    itself instead of waiting for rank 0's file."""
    return sample_bank(spec.num_classes, spec.systems_per_class, seed=spec.seed, sampler=spec.sampler,
                       meta=spec.meta, **spec.sampler_args)


def generate(spec: GenerateSpec, out_dir: str | Path) -> GenerateRecord:
    """Sample the systems, store them in ``out_dir`` with a preview grid, measure their fill."""
    seed_stage(spec.seed)  # IFS sampling draws from its own seeded generator; the preview too
    out_dir = Path(out_dir)
    start = time.perf_counter()
    bank = sample_systems(spec)
    sample_s = time.perf_counter() - start
    bank_path = bank.save(out_dir / "systems.npz")

    start = time.perf_counter()
    grid = preview_grid(bank, seed=spec.seed, **spec.family)
    preview_s = time.perf_counter() - start
    preview_path = out_dir / "preview.png"
    Image.fromarray(grid).save(preview_path)
    fills = [fill_ratio(*bank.system(i), size=512, n_points=100_000, seed=i) for i in range(min(len(bank), FILL_SAMPLE))]
    metrics = {"num_systems": len(bank), "num_classes": bank.num_classes, "sample_seconds": sample_s,
               "preview_seconds": preview_s, "fill_ratio_median": float(np.median(fills))}
    return GenerateRecord(bank, bank_path, preview_path, spec.family, metrics)

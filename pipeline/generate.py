"""Generate stage: sample the IFS systems, store their parameters, render a preview grid.

Only parameters are written (``systems.npz``, format-versioned, no pickle); the family, sampler and
the whole ``fractal`` config group travel in the bank's metadata so the pretrain stage can check it
renders what was generated.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from console.errors import ConfigError
from fractal_pretrain.datasets import check_family, preview_grid
from fractal_pretrain.fractals.families import MultiFormulaConfig
from fractal_pretrain.fractals.ifs import SAMPLERS, SystemBank, fill_ratio, sample_bank
from fractal_pretrain.fractals.render import RenderConfig

FILL_SAMPLE = 64  # systems whose fill ratio is measured and logged (a sanity figure, not a filter)


@dataclass
class GenerateRecord:
    bank: SystemBank
    bank_path: Path
    preview_path: Path
    num_classes: int
    num_systems: int


def dataset_args(f: DictConfig) -> dict:
    """``make_dataset``'s family keywords from the ``fractal`` group: the renderer's dataclasses, built
    (and range-checked by their own ``__post_init__``) from their structured configs."""
    return {"render_cfg": RenderConfig(**f.render), "family": f.family, "renderer": f.renderer,
            "multi_formula": MultiFormulaConfig(**f.multi_formula) if "multi_formula" in f else None,
            "augment": OmegaConf.to_container(f.augment) if "augment" in f else None}


def check_fractal_config(f: DictConfig) -> None:
    """What composition cannot check (types are checked there, by the structured configs): ranges and
    the combinations of settings."""
    if f.num_classes < 2:
        raise ConfigError(f"fractal.num_classes must be >= 2 for a classification task, got {f.num_classes}")
    if f.systems_per_class < 1:
        raise ConfigError(f"fractal.systems_per_class must be >= 1, got {f.systems_per_class}")
    check_family(f.family, f.renderer)
    if f.family == "ofdb" and f.systems_per_class != 1:
        raise ConfigError("fractal.family=ofdb is one image per class: set fractal.systems_per_class=1")
    if f.sampler not in SAMPLERS:
        raise ConfigError(f"unknown fractal.sampler {f.sampler!r}; choose from {SAMPLERS}")
    try:
        dataset_args(f)
    except ValueError as err:  # RenderConfig / MultiFormulaConfig range checks
        raise ConfigError(f"fractal.render / fractal.multi_formula: {err}") from err


def sample_configured_bank(cfg: DictConfig) -> SystemBank:
    """The IFS systems of the ``fractal`` group and ``seed``: a pure function of both, so every DDP
    rank samples the same bank itself instead of waiting for rank 0's file."""
    f = cfg.fractal
    check_fractal_config(f)
    sampler_args = dict(f.fractaldb) if f.sampler == "fractaldb" else {}
    if "maps" in sampler_args:
        sampler_args["maps"] = tuple(sampler_args["maps"])
    meta = {"family": f.family, "fractal": OmegaConf.to_container(f, resolve=True)}
    return sample_bank(f.num_classes, f.systems_per_class, seed=cfg.seed, sampler=f.sampler, meta=meta,
                       **sampler_args)


def generate(cfg: DictConfig, out_dir: str | Path) -> GenerateRecord:
    """Sample ``fractal.num_classes x fractal.systems_per_class`` systems, store them in ``out_dir``
    (an artifact: the pretrain stage takes the bank from the record) with a preview grid."""
    f = cfg.fractal
    out_dir = Path(out_dir)
    start = time.perf_counter()
    bank = sample_configured_bank(cfg)
    sample_s = time.perf_counter() - start
    bank_path = bank.save(out_dir / "systems.npz")

    start = time.perf_counter()
    grid = preview_grid(bank, seed=cfg.seed, **dataset_args(f))
    preview_s = time.perf_counter() - start
    preview_path = out_dir / "preview.png"
    Image.fromarray(grid).save(preview_path)

    if mlflow.active_run():
        fills = [fill_ratio(*bank.system(i), size=512, n_points=100_000, seed=i)
                 for i in range(min(len(bank), FILL_SAMPLE))]
        mlflow.log_metrics({"num_systems": len(bank), "num_classes": bank.num_classes,
                            "sample_seconds": sample_s, "preview_seconds": preview_s,
                            "fill_ratio_median": float(np.median(fills))})
        mlflow.log_artifact(str(bank_path), "fractals")
        mlflow.log_artifact(str(preview_path), "fractals")
    return GenerateRecord(bank, bank_path, preview_path, bank.num_classes, len(bank))

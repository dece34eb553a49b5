"""Generate stage: sample the IFS systems, store their parameters, render a preview grid."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mlflow
from omegaconf import DictConfig
from PIL import Image

from fractal_pretrain.data import preview_grid
from fractal_pretrain.ifs import SystemBank, sample_bank
from fractal_pretrain.render import RenderConfig


@dataclass
class GenerateRecord:
    bank_path: Path
    preview_path: Path
    num_classes: int
    num_systems: int


def render_config(fractal: DictConfig) -> RenderConfig:
    return RenderConfig(**fractal.render)


def generate(cfg: DictConfig, out_dir: str | Path) -> GenerateRecord:
    """Sample ``fractal.num_classes x fractal.systems_per_class`` systems into ``out_dir``."""
    f = cfg.fractal
    if f.num_classes < 2:
        raise ValueError(f"fractal.num_classes must be >= 2 for a classification task, got {f.num_classes}")
    if f.systems_per_class < 1:
        raise ValueError(f"fractal.systems_per_class must be >= 1, got {f.systems_per_class}")
    out_dir = Path(out_dir)
    bank = sample_bank(f.num_classes, f.systems_per_class, seed=cfg.seed)
    bank_path = bank.save(out_dir / "systems.npz")

    grid = preview_grid(bank, render_config(f), seed=cfg.seed)
    preview_path = out_dir / "preview.png"
    Image.fromarray(grid).save(preview_path)

    if mlflow.active_run():
        mlflow.log_metrics({"num_systems": len(bank), "num_classes": bank.num_classes})
        mlflow.log_artifact(str(bank_path), "fractals")
        mlflow.log_artifact(str(preview_path), "fractals")
    return GenerateRecord(bank_path, preview_path, bank.num_classes, len(bank))


def load_bank(path: str | Path) -> SystemBank:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IFS bank {path} does not exist; run the generate stage first "
                                f"(stages=[generate,pretrain]).")
    return SystemBank.load(path)

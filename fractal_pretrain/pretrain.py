"""Pretrain stage: train a timm backbone on fractals rendered on the fly, export it in timm format.

The export is a ``timm.models.save_for_hf`` folder: ``timm.create_model("local-dir:<dir>",
pretrained=True)`` and anomalib's ``backbone="local-dir:<dir>"`` load it with no patching. Its
``config.json`` carries the normalisation used in pre-training (mean/std), so the detect stage
normalises inputs exactly as the backbone saw them; ``fractal.json`` beside it records the data.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import hydra
import lightning as L
import mlflow
import timm
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from fractal_pretrain.data import TRAIN, VAL, EpochSampler, FractalImages
from fractal_pretrain.generate import load_bank, render_config
from fractal_pretrain.model import FractalClassifier


@dataclass
class PretrainRecord:
    export_dir: Path
    metrics: dict[str, float]


class MlflowMetrics(L.Callback):
    """Sends Lightning's logged metrics to the active MLflow run (rank zero only)."""

    def __init__(self, every_n_steps: int = 25):
        self.every_n_steps = every_n_steps

    @staticmethod
    def _send(trainer: L.Trainer, suffix_filter: str | None = None) -> None:
        if trainer.global_rank != 0 or not mlflow.active_run():
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()
                   if v.numel() == 1 and (suffix_filter is None or k.endswith(suffix_filter))}
        metrics["lr"] = trainer.optimizers[0].param_groups[0]["lr"]
        mlflow.log_metrics(metrics, step=trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step % self.every_n_steps == 0:
            self._send(trainer, suffix_filter="_step")

    def on_train_epoch_end(self, trainer, pl_module):
        self._send(trainer)


def check_pretrain_config(p: DictConfig) -> None:
    for key in ("batch_size", "max_steps", "renders_per_system", "val_renders_per_system"):
        if p[key] < 1:
            raise ValueError(f"pretrain.{key} must be a positive integer, got {p[key]}")
    if p.num_workers < 0:
        raise ValueError(f"pretrain.num_workers must be >= 0, got {p.num_workers}")


def export_backbone(model, export_dir: Path, mean, std, fractal_cfg: dict) -> Path:
    """Write the timm export under a temporary name and rename it: never a half-written export."""
    export_dir = Path(export_dir)
    tmp = export_dir.with_name(export_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    timm.models.save_for_hf(model, str(tmp), safe_serialization=True,
                            model_config={"pretrained_cfg": {"mean": list(mean), "std": list(std)}})
    (tmp / "fractal.json").write_text(json.dumps(fractal_cfg, indent=2))
    if export_dir.exists():
        shutil.rmtree(export_dir)
    tmp.rename(export_dir)
    return export_dir


def pretrain(cfg: DictConfig, bank_path: str | Path, out_dir: str | Path) -> PretrainRecord:
    p = cfg.pretrain
    check_pretrain_config(p)
    out_dir = Path(out_dir)
    bank = load_bank(bank_path)
    rcfg = render_config(cfg.fractal)
    mean, std = [float(v) for v in p.mean], [float(v) for v in p.std]
    train_set = FractalImages(bank, rcfg, cfg.seed, p.renders_per_system, TRAIN, mean, std)
    val_set = FractalImages(bank, rcfg, cfg.seed, p.val_renders_per_system, VAL, mean, std)

    loader_args = dict(batch_size=p.batch_size, num_workers=p.num_workers,
                       persistent_workers=p.num_workers > 0)
    trainer = L.Trainer(**cfg.trainer, max_steps=p.max_steps, default_root_dir=out_dir,
                        logger=False, enable_checkpointing=False, use_distributed_sampler=False,
                        check_val_every_n_epoch=p.val_every_n_epochs, log_every_n_steps=10,
                        callbacks=[MlflowMetrics()])
    train_loader = DataLoader(train_set, drop_last=True, **loader_args, sampler=EpochSampler(
        len(train_set), cfg.seed, shuffle=True, rank=trainer.global_rank, world=trainer.world_size))
    val_loader = DataLoader(val_set, **loader_args, sampler=EpochSampler(
        len(val_set), cfg.seed, shuffle=False, rank=trainer.global_rank, world=trainer.world_size))
    if len(train_loader) == 0:
        raise ValueError(f"pretrain.batch_size={p.batch_size} exceeds the {len(train_set)} training "
                         f"images per epoch; lower it or raise pretrain.renders_per_system.")

    module = FractalClassifier(cfg.backbone.arch, bank.num_classes,
                               optimizer=hydra.utils.instantiate(p.optimizer, _partial_=True),
                               lr_milestones=list(p.lr_milestones), lr_gamma=p.lr_gamma)
    start = time.perf_counter()
    trainer.fit(module, train_loader, val_loader)
    seconds = time.perf_counter() - start

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    metrics["train_seconds"] = seconds
    metrics["train_img_per_s"] = trainer.global_step * p.batch_size / seconds
    export_dir = out_dir / "backbone"
    if trainer.global_rank == 0:
        export_backbone(module.model, export_dir, mean, std, {
            "seed": cfg.seed, "bank": str(bank_path), "fractal": OmegaConf.to_container(cfg.fractal, resolve=True),
            "pretrain": OmegaConf.to_container(p, resolve=True), "arch": cfg.backbone.arch})
        if mlflow.active_run():
            mlflow.log_metrics(metrics, step=trainer.global_step)
            if p.log_export:
                mlflow.log_artifacts(str(export_dir), "backbone")
    print(f"pretrain: {trainer.global_step} steps in {seconds:.0f} s "
          f"({metrics['train_img_per_s']:.0f} img/s), exported to {export_dir}")
    return PretrainRecord(export_dir, metrics)

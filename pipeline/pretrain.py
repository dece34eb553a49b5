"""Pretrain stage: train a timm backbone on fractals rendered on the fly, export it in timm format.

The export is a ``timm.models.save_for_hf`` folder: ``timm.create_model("local-dir:<dir>",
pretrained=True)`` and anomalib's ``backbone="local-dir:<dir>"`` load it with no patching. Its
``config.json`` carries the normalisation used in pre-training (mean/std), so the detect stage
normalises inputs exactly as the backbone saw them; ``fractal.json`` beside it records the data.

Multi-GPU: ``pretrain.batch_size`` is the GLOBAL batch. Each of the ``devices x num_nodes``
processes loads ``batch_size / (devices x num_nodes)`` images, so the optimisation (and the
learning rate that goes with it) is the same on 1 GPU or 8. The sampler shards by rank itself.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import hydra
import lightning as L
import mlflow
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import MLFlowLogger
from omegaconf import DictConfig, OmegaConf

from console.errors import ConfigError
from console.logs import log
from console.progress import StepProgress
from fractal_pretrain.callbacks import FirstBatchAndDataWait, RngState
from fractal_pretrain.datamodule import FractalDataModule
from fractal_pretrain.datasets import TRAIN, VAL, MultiInstanceImages, TwoViews, make_dataset
from fractal_pretrain.export import write_export
from fractal_pretrain.fractals.families import MultiFormulaConfig
from fractal_pretrain.fractals.ifs import SystemBank
from fractal_pretrain.model import FractalClassifier, FractalSimCLR
from pipeline.config import pretrain_hash
from pipeline.generate import dataset_args
from pipeline.provenance import code_version, log_backbone_model


@dataclass
class PretrainRecord:
    export_dir: Path
    metrics: dict[str, float]


def check_pretrain_config(p: DictConfig, world: int) -> int:
    """Validate the recipe; return the per-device batch size."""
    for key in ("batch_size", "max_steps", "renders_per_system", "val_renders_per_system",
                "val_every_n_epochs", "checkpoint_every_n_steps"):
        if p[key] < 1:
            raise ConfigError(f"pretrain.{key} must be a positive integer, got {p[key]}")
    if p.get("memory_format", "contiguous") not in ("contiguous", "channels_last"):
        raise ConfigError(f"pretrain.memory_format must be contiguous or channels_last, got {p.memory_format!r}")
    if p.num_workers < 0:
        raise ConfigError(f"pretrain.num_workers must be >= 0, got {p.num_workers}")
    if p.batch_size % world:
        raise ConfigError(f"pretrain.batch_size={p.batch_size} is the global batch and must divide evenly "
                          f"over {world} processes (trainer.devices x trainer.num_nodes)")
    return p.batch_size // world


OBJECTIVES = ("classification", "multilabel", "simclr")


def check_objective_config(cfg: DictConfig) -> None:
    """``pretrain.objective`` and the fractal data it needs."""
    name, f = cfg.pretrain.objective.name, cfg.fractal
    if name not in OBJECTIVES:
        raise ConfigError(f"unknown pretrain objective {name!r}; choose pretrain/objective= one of {OBJECTIVES}")
    if name == "multilabel" and f.family != "fractals":
        raise ConfigError(f"the multilabel objective pastes single fractals of several classes; it needs "
                          f"fractal.family=fractals, not {f.family!r}")
    if name != "classification" and f.renderer != "cpu":
        raise ConfigError(f"the {name} objective renders on the CPU; set fractal.renderer=cpu")


def objective_dataset(cfg: DictConfig, bank: SystemBank, renders_per_system: int, stream: int, mean, std):
    """The images the objective trains on: the family's (classification), multi-instance images
    (multilabel), or two augmented views of each of the family's images (simclr)."""
    objective, family = cfg.pretrain.objective, dataset_args(cfg.fractal)

    def images(stream: int):
        if objective.name == "multilabel":
            return MultiInstanceImages(bank, family["render_cfg"], cfg.seed, renders_per_system, stream, mean, std,
                                       layout=MultiFormulaConfig(**objective.layout))
        return make_dataset(bank, seed=cfg.seed, renders_per_system=renders_per_system, stream=stream,
                            mean=mean, std=std, **family)

    return TwoViews(images(stream), tuple(objective.crop_scale), objective.color_jitter) if objective.name == "simclr" else images(stream)


def objective_module(cfg: DictConfig, num_classes: int) -> L.LightningModule:
    """The LightningModule of ``pretrain.objective`` on ``backbone.arch``, with the ``optim`` group."""
    objective = cfg.pretrain.objective
    optim = {"optimizer": hydra.utils.instantiate(cfg.optim.optimizer),
             "schedule": hydra.utils.instantiate(cfg.optim.schedule)}
    if objective.name == "simclr":
        return FractalSimCLR(cfg.backbone.arch, **optim, projection_dim=objective.projection_dim,
                             temperature=objective.temperature)
    return FractalClassifier(cfg.backbone.arch, num_classes, **optim, mixup=OmegaConf.to_container(cfg.pretrain.mixup),
                             multilabel=objective.name == "multilabel")


def resume_checkpoint(p: DictConfig, ckpt_dir: Path) -> str | None:
    if not p.resume:
        return None
    path = ckpt_dir / "last.ckpt" if p.resume == "auto" else Path(p.resume)
    if path.is_file():
        log.info(f"pretrain: resuming from {path}")
        return str(path)
    if p.resume == "auto":
        return None  # nothing to resume: a fresh start
    raise ConfigError(f"pretrain.resume={p.resume} does not exist; give a Lightning checkpoint "
                      f"(<job>/pretrain/checkpoints/last.ckpt) or 'auto'.")


def pretrain(cfg: DictConfig, bank: SystemBank, out_dir: str | Path, bank_path: str | Path | None = None) -> PretrainRecord:
    """Train ``backbone.arch`` from scratch on renders of ``bank`` (``bank_path``: where the generate
    stage stored it, recorded in the export) and export it under ``out_dir/backbone``."""
    p, t = cfg.pretrain, cfg.trainer
    devices = t.devices if isinstance(t.devices, int) else len(t.devices)
    per_device = check_pretrain_config(p, max(devices, 1) * t.get("num_nodes", 1))
    out_dir = Path(out_dir)
    mean, std = [float(v) for v in p.mean], [float(v) for v in p.std]
    data = FractalDataModule(objective_dataset(cfg, bank, p.renders_per_system, TRAIN, mean, std),
                             objective_dataset(cfg, bank, p.val_renders_per_system, VAL, mean, std),
                             cfg.seed, per_device, p.num_workers, p.crop_size)
    if len(data.train_set) < p.batch_size:
        raise ConfigError(f"pretrain.batch_size={p.batch_size} exceeds the {len(data.train_set)} training "
                          f"images per epoch; lower it or raise pretrain.renders_per_system.")

    ckpt_dir = out_dir / "checkpoints"
    monitor = FirstBatchAndDataWait(out_dir / "train_batch.png", mean, std)
    # Lightning's own MLflow logger writes into this stage's run (rank zero only; ranks started by
    # DDP have no active run and log nothing); the learning rate under the name "lr"
    active = mlflow.active_run()
    logger = MLFlowLogger(tracking_uri=mlflow.get_tracking_uri(), run_id=active.info.run_id) if active else False
    trainer = L.Trainer(**t, max_steps=p.max_steps, default_root_dir=out_dir, logger=logger,
                        use_distributed_sampler=False, check_val_every_n_epoch=p.val_every_n_epochs,
                        log_every_n_steps=min(25, p.max_steps), enable_model_summary=cfg.get("verbose", False),
                        callbacks=[monitor, RngState(), StepProgress("pretrain", unit="step"), ModelCheckpoint(
                            dirpath=ckpt_dir, every_n_train_steps=p.checkpoint_every_n_steps,
                            save_last=True, save_top_k=0),
                                   *([LearningRateMonitor(logging_interval="step")] if logger else [])])
    module = objective_module(cfg, bank.num_classes)
    channels_last = p.get("memory_format", "contiguous") == "channels_last"
    if channels_last:
        # oneDNN's (CPU) and cuDNN's fastest convolutions take NHWC: on 2 CPU cores the main job's
        # bare loop ran 156 img/s vs 129 contiguous, the stage 147 vs 115 (scripts/bench_pretrain.py,
        # README "Speed on a CPU"). The kernels round differently, so the weights are not those of
        # a contiguous run (conf/pretrain/default.yaml)
        module = module.to(memory_format=torch.channels_last)
    start, cpu = time.perf_counter(), time.process_time()
    trainer.fit(module, datamodule=data, ckpt_path=resume_checkpoint(p, ckpt_dir))
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    if channels_last:
        module = module.to(memory_format=torch.contiguous_format)  # the export stores plain tensors

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    # train_cpu_seconds: this process's user + sys time (all threads), the figure that holds on a
    # shared machine where wall time does not
    metrics.update(train_seconds=seconds, train_img_per_s=trainer.global_step * p.batch_size / seconds,
                   train_cpu_seconds=cpu_seconds,
                   data_wait_fraction=monitor.data_wait / seconds, global_step=trainer.global_step)
    export_dir = out_dir / "backbone"
    if trainer.global_rank == 0:
        write_export(module.model, export_dir, mean, std, {"fractal.json": {
            "seed": cfg.seed, "arch": cfg.backbone.arch, "global_step": trainer.global_step,
            "bank": str(bank_path) if bank_path else None, "fractal": OmegaConf.to_container(cfg.fractal, resolve=True),
            "pretrain": OmegaConf.to_container(p, resolve=True),
            "optim": OmegaConf.to_container(cfg.optim, resolve=True)}})
        if active:
            mlflow.log_metrics(metrics, step=trainer.global_step)
            if monitor.grid_path:
                mlflow.log_artifact(str(monitor.grid_path), "samples")
            if p.log_export:
                mlflow.log_artifacts(str(export_dir), "backbone")
            # the Models view lists the backbone, linked to this run, with the detect metrics it reached
            log_backbone_model(active.info.run_id, cfg.backbone.arch, {
                "pretrain_hash": pretrain_hash(cfg), "code_version": code_version(), "seed": str(cfg.seed)},
                logged_export=bool(p.log_export))
        log.info(f"pretrain: {trainer.global_step} steps in {seconds:.0f} s: training "
              f"{metrics['train_img_per_s']:.0f} img/s, waiting for data {100 * metrics['data_wait_fraction']:.0f}% "
              f"of the time; export {export_dir}")
    return PretrainRecord(export_dir, metrics)

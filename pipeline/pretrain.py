"""Pretrain stage: train a timm backbone on its source's images (fractals by default, rendered on the
fly; fractal_pretrain.sources), export it in timm format.

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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from console.errors import ConfigError
from console.logs import log
from console.progress import StepProgress
from fractal_pretrain.callbacks import FirstBatchAndDataWait, RngState
from fractal_pretrain.datamodule import FractalDataModule
from fractal_pretrain.datasets import TRAIN, VAL, MultiInstanceImages, TwoViews
from fractal_pretrain.export import write_export
from fractal_pretrain.fractals.families import MultiFormulaConfig
from fractal_pretrain.model import FractalClassifier, FractalSimCLR
from pipeline.config import seed_stage


@dataclass(frozen=True)
class PretrainSpec:
    """The pretrain stage's settings, from the ``pretrain``, ``optim``, ``backbone``, ``trainer`` groups
    and ``seed``, checked once (``pretrain_spec``)."""
    seed: int
    arch: str
    objective: dict[str, Any]  # name and its own settings (conf/pretrain/objective/)
    batch_size: int  # global
    per_device_batch: int
    max_steps: int
    renders_per_system: int
    val_renders_per_system: int
    val_every_n_epochs: int
    checkpoint_every_n_steps: int
    num_workers: int
    crop_size: int | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    channels_last: bool
    resume: str | None
    mixup: dict[str, float]
    optimizer: Callable  # partials, completed by the LightningModule
    schedule: Callable
    trainer: dict[str, Any]  # Lightning Trainer keywords
    verbose: bool
    recipe: dict[str, Any]  # the fractal, pretrain and optim groups as run: the export's fractal.json


@dataclass
class PretrainRecord:
    export_dir: Path
    metrics: dict[str, float]
    global_step: int
    sample_grid: Path | None  # the first training batch, drawn
    is_global_zero: bool  # this process wrote the export (DDP: rank 0 alone)


OBJECTIVES = ("classification", "multilabel", "simclr")


def pretrain_spec(cfg: DictConfig) -> PretrainSpec:
    """The stage's spec, checked: ranges, the objective and the fractal data it needs, the global
    batch over the processes."""
    p, t, name = cfg.pretrain, cfg.trainer, cfg.pretrain.objective.name
    for key in ("batch_size", "max_steps", "renders_per_system", "val_renders_per_system",
                "val_every_n_epochs", "checkpoint_every_n_steps"):
        if p[key] < 1:
            raise ConfigError(f"pretrain.{key} must be a positive integer, got {p[key]}")
    if p.get("memory_format", "contiguous") not in ("contiguous", "channels_last"):
        raise ConfigError(f"pretrain.memory_format must be contiguous or channels_last, got {p.memory_format!r}")
    if p.num_workers < 0:
        raise ConfigError(f"pretrain.num_workers must be >= 0, got {p.num_workers}")
    world = max(t.devices if isinstance(t.devices, int) else len(t.devices), 1) * t.get("num_nodes", 1)
    if p.batch_size % world:
        raise ConfigError(f"pretrain.batch_size={p.batch_size} is the global batch and must divide evenly "
                          f"over {world} processes (trainer.devices x trainer.num_nodes)")
    if name not in OBJECTIVES:
        raise ConfigError(f"unknown pretrain objective {name!r}; choose pretrain/objective= one of {OBJECTIVES}")
    source = cfg.pretrain.source.name
    if name == "multilabel" and (source != "fractal" or cfg.fractal.family != "fractals"):
        raise ConfigError(f"the multilabel objective pastes single fractals of several classes; it needs "
                          f"pretrain/source=fractal and fractal.family=fractals, not {source} / {cfg.fractal.family!r}")
    if source == "image_folder" and cfg.pretrain.source.labels == "none" and name != "simclr":
        raise ConfigError(f"pretrain.source.labels=none gives the {name} objective no classes to learn; "
                          f"use pretrain/objective=simclr, or labels: folders with one sub-folder per class")
    if name != "classification" and cfg.fractal.renderer != "cpu":
        raise ConfigError(f"the {name} objective renders on the CPU; set fractal.renderer=cpu")
    resolved = OmegaConf.to_container(cfg, resolve=True)
    return PretrainSpec(
        cfg.seed, cfg.backbone.arch, resolved["pretrain"]["objective"], p.batch_size, p.batch_size // world,
        p.max_steps, p.renders_per_system, p.val_renders_per_system, p.val_every_n_epochs,
        p.checkpoint_every_n_steps, p.num_workers, p.crop_size, tuple(float(v) for v in p.mean),
        tuple(float(v) for v in p.std), p.get("memory_format", "contiguous") == "channels_last", p.resume,
        resolved["pretrain"]["mixup"], hydra.utils.instantiate(cfg.optim.optimizer),
        hydra.utils.instantiate(cfg.optim.schedule), resolved["trainer"], bool(cfg.get("verbose", False)),
        {key: resolved[key] for key in ("fractal", "pretrain", "optim")})


def objective_dataset(spec: PretrainSpec, source, renders_per_system: int, stream: int):
    """The images the objective trains on: the source's (classification), multi-instance images of
    fractals (multilabel), or two augmented views of each of the source's images (simclr)."""
    objective, mean, std = spec.objective, list(spec.mean), list(spec.std)
    if objective["name"] == "multilabel":
        images = MultiInstanceImages(source.bank, source.family["render_cfg"], spec.seed, renders_per_system, stream,
                                     mean, std, layout=MultiFormulaConfig(**objective["layout"]))
    else:
        images = source.images(spec.seed, renders_per_system, stream, mean, std)
    if objective["name"] == "simclr":
        return TwoViews(images, tuple(objective["crop_scale"]), objective["color_jitter"])
    return images


def objective_module(spec: PretrainSpec, num_classes: int) -> L.LightningModule:
    """The LightningModule of the objective on ``spec.arch``, with the optimiser and schedule."""
    objective = spec.objective
    if objective["name"] == "simclr":
        return FractalSimCLR(spec.arch, optimizer=spec.optimizer, schedule=spec.schedule, projection_dim=objective["projection_dim"],
                             temperature=objective["temperature"])
    return FractalClassifier(spec.arch, num_classes, optimizer=spec.optimizer, schedule=spec.schedule, mixup=spec.mixup,
                             multilabel=objective["name"] == "multilabel")


def resume_checkpoint(resume: str | None, ckpt_dir: Path) -> str | None:
    if not resume:
        return None
    path = ckpt_dir / "last.ckpt" if resume == "auto" else Path(resume)
    if path.is_file():
        log.info(f"pretrain: resuming from {path}")
        return str(path)
    if resume == "auto":
        return None  # nothing to resume: a fresh start
    raise ConfigError(f"pretrain.resume={resume} does not exist; give a Lightning checkpoint "
                      f"(<job>/pretrain/checkpoints/last.ckpt) or 'auto'.")


def pretrain(spec: PretrainSpec, source, out_dir: str | Path, bank_path: str | Path | None = None,
             logger=False) -> PretrainRecord:
    """Train ``spec.arch`` from scratch on the images of ``source`` (the generate record's;
    ``bank_path``: where that stage stored what defines it, recorded in the export) and export it
    under ``out_dir/backbone``. ``logger``: a Lightning logger for the curves (the tracker's)."""
    seed_stage(spec.seed)  # model init, data order, crops, MixUp
    out_dir = Path(out_dir)
    data = FractalDataModule(objective_dataset(spec, source, spec.renders_per_system, TRAIN),
                             objective_dataset(spec, source, spec.val_renders_per_system, VAL),
                             spec.seed, spec.per_device_batch, spec.num_workers, spec.crop_size)
    if len(data.train_set) < spec.batch_size:
        raise ConfigError(f"pretrain.batch_size={spec.batch_size} exceeds the {len(data.train_set)} training "
                          f"images per epoch; lower it or raise pretrain.renders_per_system.")

    ckpt_dir = out_dir / "checkpoints"
    monitor = FirstBatchAndDataWait(out_dir / "train_batch.png", list(spec.mean), list(spec.std))
    trainer = L.Trainer(**spec.trainer, max_steps=spec.max_steps, default_root_dir=out_dir, logger=logger,
                        use_distributed_sampler=False, check_val_every_n_epoch=spec.val_every_n_epochs,
                        log_every_n_steps=min(25, spec.max_steps), enable_model_summary=spec.verbose,
                        callbacks=[monitor, RngState(), StepProgress("pretrain", unit="step"), ModelCheckpoint(
                            dirpath=ckpt_dir, every_n_train_steps=spec.checkpoint_every_n_steps,
                            save_last=True, save_top_k=0),
                                   *([LearningRateMonitor(logging_interval="step")] if logger else [])])
    module = objective_module(spec, source.num_classes)
    if spec.channels_last:
        # oneDNN's (CPU) and cuDNN's fastest convolutions take NHWC: on 2 CPU cores the main job's
        # bare loop ran 156 img/s vs 129 contiguous, the stage 147 vs 115 (scripts/bench_pretrain.py,
        # docs/speed.md). The kernels round differently, so the weights are not those of a
        # contiguous run (conf/pretrain/default.yaml)
        module = module.to(memory_format=torch.channels_last)
    start, cpu = time.perf_counter(), time.process_time()
    trainer.fit(module, datamodule=data, ckpt_path=resume_checkpoint(spec.resume, ckpt_dir))
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    if spec.channels_last:
        module = module.to(memory_format=torch.contiguous_format)  # the export stores plain tensors

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    # train_cpu_seconds: this process's user + sys time (all threads), the figure that holds on a
    # shared machine where wall time does not
    metrics.update(train_seconds=seconds, train_img_per_s=trainer.global_step * spec.batch_size / seconds,
                   train_cpu_seconds=cpu_seconds,
                   data_wait_fraction=monitor.data_wait / seconds, global_step=trainer.global_step)
    export_dir = out_dir / "backbone"
    if trainer.is_global_zero:
        write_export(module.model, export_dir, list(spec.mean), list(spec.std), {"fractal.json": {
            "seed": spec.seed, "arch": spec.arch, "global_step": trainer.global_step,
            "bank": str(bank_path) if bank_path else None, **spec.recipe}})
        log.info(f"pretrain: {trainer.global_step} steps in {seconds:.0f} s: training "
                 f"{metrics['train_img_per_s']:.0f} img/s, waiting for data {100 * metrics['data_wait_fraction']:.0f}% "
                 f"of the time; export {export_dir}")
    return PretrainRecord(export_dir, metrics, trainer.global_step, monitor.grid_path, trainer.is_global_zero)

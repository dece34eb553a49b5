"""Detect stage: an anomalib detector on a frozen backbone, fitted and tested on one category."""

from __future__ import annotations

import csv
import os
import re
import resource
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import hydra
import lightning as L
import mlflow
import numpy as np
from omegaconf import DictConfig

from console.errors import ConfigError
from console.progress import StepProgress
from detectors.backbone import Backbone
from detectors.models import build_detector
from evaluation.builtin import make_builtin_dataset
from evaluation.datasets import dataset_has_masks, validate_dataset
from evaluation.metrics import RawScorePostProcessor, study_evaluator
from evaluation.plots import NormalisedVisualizer, RocCollector, plot_roc


@dataclass
class DetectRecord:
    metrics: dict[str, float]
    metrics_csv: Path
    predictions_csv: Path
    images: list[Path] = field(default_factory=list)


def pick_images(folder: Path, n: int) -> list[Path]:
    """Up to ``n`` visualisations, taken in turn from each defect type so every kind is shown."""
    by_kind = defaultdict(list)
    for path in sorted(folder.rglob("*.png")):
        by_kind[path.parent.name].append(path)
    picked, kinds = [], sorted(by_kind, key=lambda k: (k == "good", k))
    while len(picked) < n and any(by_kind.values()):
        for kind in kinds:
            if by_kind[kind] and len(picked) < n:
                picked.append(by_kind[kind].pop(0))
    return picked


def write_csv(path: Path, row: dict) -> Path:
    tmp = path.with_suffix(".csv.partial")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        writer.writeheader()
        writer.writerow(row)
    tmp.replace(path)
    return path


def write_predictions(path: Path, roc: RocCollector, dataset_root: str | Path) -> Path:
    """One row per test image: path relative to the dataset root, defect type (its folder), label,
    raw image score. Enough to recompute image AUROC (or any image metric) without anomalib."""
    tmp = path.with_suffix(".csv.partial")
    scores, labels = np.concatenate(roc.image_scores), np.concatenate(roc.image_labels)
    with tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image_path", "defect_type", "label", "score"])
        for image, label, score in zip(roc.image_paths, labels, scores):
            writer.writerow([os.path.relpath(image, dataset_root), Path(image).parent.name, int(label), repr(float(score))])
    tmp.replace(path)
    return path


def input_transform(d: DictConfig, mean, std):
    """Detector input: resize to ``dataset.image_size``, then a centre crop to ``dataset.crop`` if set
    (the study ran anomalib v1's default, resize 256 + centre crop 224), then normalise. anomalib's
    PreProcessor applies it to the image and its mask together (the mask as a torchvision ``Mask``:
    nearest-neighbour resize, no normalisation), so pixels and labels stay aligned."""
    from torchvision.transforms.v2 import CenterCrop, Compose, Normalize, Resize

    steps = [Resize((d.image_size, d.image_size), antialias=True)]
    crop = d.get("crop")
    if crop:
        if not 32 <= crop <= d.image_size:
            raise ConfigError(f"dataset.crop={crop} must lie between 32 and dataset.image_size={d.image_size} "
                             f"(it is cut from the resized image); or null for no crop")
        steps.append(CenterCrop((crop, crop)))
    return Compose([*steps, Normalize(mean=list(mean), std=list(std))])


def _leakage_guard(datamodule_cfg: DictConfig) -> None:
    """The validation split picks checkpoints and thresholds: it must never be the test set."""
    mode = str(datamodule_cfg.get("val_split_mode", "same_as_test")).lower()
    if mode in ("same_as_test", "from_test", "valsplitmode.same_as_test", "valsplitmode.from_test"):
        raise ConfigError(
            f"dataset.datamodule.val_split_mode={mode} validates on test images, so checkpoint selection "
            f"and the F1 threshold would see the test set. Use 'synthetic' (training normals + synthetic "
            f"anomalies), 'from_train' or 'from_dir'.")


def fit_on_all_normals(datamodule) -> None:
    """Training-free detectors (memory bank, density) fit on every training normal, as the study does.

    anomalib's synthetic validation split moves ``val_split_ratio`` of the normals out of the training
    set; here the split is still made (the same images get the same synthetic anomalies, for the F1
    threshold) but the training set is put back whole afterwards. So for these detectors the
    validation normals are images they were fitted on; nothing of ``test/`` is involved.
    """
    create_val_split = datamodule._create_val_split

    def create_val_split_keeping_train() -> None:
        train = datamodule.train_data
        create_val_split()
        datamodule.train_data = train

    datamodule._create_val_split = create_val_split_keeping_train


def selection_callbacks(cfg: DictConfig, out_dir: Path) -> list:
    """Best-checkpoint selection and early stopping on the validation split, for detectors that train."""
    from anomalib.callbacks.checkpoint import ModelCheckpoint
    from lightning.pytorch.callbacks import EarlyStopping

    sel = cfg.detector.get("selection")
    if not sel:  # training-free detectors (one pass over the normals): nothing to select
        return []
    callbacks = [ModelCheckpoint(dirpath=out_dir / "weights", filename="best-epoch={epoch}", monitor=sel.monitor, mode=sel.mode,
                                 save_top_k=1, auto_insert_metric_name=False)]
    if sel.get("patience"):
        callbacks.append(EarlyStopping(monitor=sel.monitor, mode=sel.mode, patience=sel.patience))
    return callbacks


def detect(cfg: DictConfig, backbone: Backbone, out_dir: str | Path) -> DetectRecord:
    from anomalib.engine import Engine
    from anomalib.pre_processing import PreProcessor

    d = cfg.dataset
    if d.image_size < 32:
        raise ConfigError(f"dataset.image_size must be >= 32 pixels, got {d.image_size}")
    out_dir = Path(out_dir)
    if d.name == "builtin":
        make_builtin_dataset(d.root, **d.builtin)
    validate_dataset(d)
    _leakage_guard(d.datamodule)

    pre_processor = PreProcessor(transform=input_transform(d, backbone.mean, backbone.std))
    # Seeded right before the first random draw of the stage (random init, PaDiM's channel subset, the
    # students/flows/decoders), so nothing that ran before in this process (another sweep job, the
    # offline ImageNet conversion, timm probing) changes them; the same stream then drives the
    # synthetic validation anomalies and the coreset.
    L.seed_everything(cfg.seed, workers=True)
    # threshold-free metrics on raw scores; the F1 threshold and the drawn maps' scale come from validation
    model = build_detector(cfg.detector.model, backbone, pre_processor=pre_processor,
                           post_processor=RawScorePostProcessor(), visualizer=NormalisedVisualizer(),
                           evaluator=study_evaluator(cfg.detector.aupro_fpr_limit, pixel=dataset_has_masks(d)))
    datamodule = hydra.utils.instantiate(d.datamodule, seed=cfg.seed)
    if cfg.detector.get("fit_on_all_normals", False):
        fit_on_all_normals(datamodule)
    roc = RocCollector()
    selection = selection_callbacks(cfg, out_dir)
    # one device: multi-GPU belongs to pre-training; sweeps spread detect jobs over GPUs instead
    engine = Engine(accelerator=cfg.trainer.accelerator, devices=1,
                    default_root_dir=out_dir, logger=False, max_epochs=cfg.detector.get("max_epochs", 1),
                    enable_model_summary=cfg.get("verbose", False),
                    callbacks=[*selection, roc, StepProgress("detect")])

    start = time.perf_counter()
    engine.fit(model=model, datamodule=datamodule)
    fit_s = time.perf_counter() - start
    best = selection[0].best_model_path if selection else ""
    # validation metrics of the model that is tested (the selected epoch): what sweepers may optimise
    (validation,) = engine.validate(model=model, datamodule=datamodule, ckpt_path=best or None, verbose=False)
    start = time.perf_counter()
    (results,) = engine.test(model=model, datamodule=datamodule, ckpt_path=best or None, verbose=False)
    test_s = time.perf_counter() - start

    metrics = {k: float(v) for k, v in {**validation, **results}.items()}
    metrics.update(fit_seconds=fit_s, test_seconds=test_s, fit_images=float(len(datamodule.train_data)),
                   val_images=float(len(datamodule.val_data)),
                   peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    if selection:
        metrics.update(selected_epoch=float(_epoch_of(best)) if best else -1.0,
                       epochs_run=float(engine.trainer.current_epoch))
    csv_path = write_csv(out_dir / "metrics.csv", {"dataset": d.name, "category": d.category,
                                                   "backbone": backbone.source,
                                                   "detector": cfg.detector.name, **metrics})
    predictions_csv = write_predictions(out_dir / "predictions.csv", roc, d.root)
    curves = roc.curves()
    roc_path = plot_roc(curves, out_dir / "roc.png",
                        f"{cfg.detector.name} / {backbone.source} / {d.name}:{d.category}") if curves else None
    # anomalib writes under <out_dir>/<Model>/<Dataset>/<category>/v<N>/images
    images = pick_images(Path(engine.trainer.default_root_dir) / "images", cfg.detector.log_images)
    if mlflow.active_run():
        mlflow.log_metrics(metrics)
        mlflow.log_artifact(str(csv_path))
        mlflow.log_artifact(str(predictions_csv))
        if roc_path:
            mlflow.log_artifact(str(roc_path))
        for path in images:
            mlflow.log_artifact(str(path), f"anomaly_maps/{path.parent.name}")
    return DetectRecord(metrics, csv_path, predictions_csv, images)


def _epoch_of(checkpoint: str) -> int:
    match = re.search(r"best-epoch=(\d+)", Path(checkpoint).name)
    return int(match.group(1)) if match else -1

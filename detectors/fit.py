"""Fit and test one anomalib detector on one category: metrics on raw scores, the per-image
predictions, ROC curves and a few anomaly maps, written under the detector's folder."""

from __future__ import annotations

import csv
import os
import re
import resource
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from console.errors import ConfigError
from console.progress import StepProgress
from detectors.private_api import (
    keep_all_normals,
    paired_validation,
    synthetic_anomalies_from,
    validation_draws_apart,
)
from evaluation.plots import RocCollector, plot_roc


@dataclass
class DetectRecord:
    metrics: dict[str, float]
    metrics_csv: Path
    predictions_csv: Path
    roc_png: Path | None = None
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


def input_transform(image_size: int, crop: int | None, mean, std):
    """Detector input: resize to ``image_size``, then a centre crop to ``crop`` if set (the study ran
    anomalib v1's default, resize 256 + centre crop 224), then normalise. anomalib's PreProcessor
    applies it to the image and its mask together (the mask as a torchvision ``Mask``:
    nearest-neighbour resize, no normalisation), so pixels and labels stay aligned."""
    from torchvision.transforms.v2 import CenterCrop, Compose, Normalize, Resize

    if image_size < 32:
        raise ConfigError(f"dataset.image_size must be >= 32 pixels, got {image_size}")
    steps = [Resize((image_size, image_size), antialias=True)]
    if crop:
        if not 32 <= crop <= image_size:
            raise ConfigError(f"dataset.crop={crop} must lie between 32 and dataset.image_size={image_size} "
                             f"(it is cut from the resized image); or null for no crop")
        steps.append(CenterCrop((crop, crop)))
    return Compose([*steps, Normalize(mean=list(mean), std=list(std))])


def leakage_guard(val_split_mode: str) -> None:
    """The validation split picks checkpoints and thresholds: it must never be the test set."""
    mode = str(val_split_mode).lower()
    if mode in ("same_as_test", "from_test", "valsplitmode.same_as_test", "valsplitmode.from_test"):
        raise ConfigError(
            f"dataset.datamodule.val_split_mode={mode} validates on test images, so checkpoint selection "
            f"and the F1 threshold would see the test set. Use 'synthetic' (training normals + synthetic "
            f"anomalies), 'from_train' or 'from_dir'.")


VAL_SPLIT_STREAM = 0x5B17  # names the validation split's seed in split_seed


def split_seed(seed: int) -> int:
    """The seed the validation split draws with (anomalib's choice of validation normals, and the
    synthetic anomalies: ``validation_draws_apart``), for the run seed ``seed``.

    Derived, not the run seed itself: some anomalib versions read seed 0 as "no seed"
    (``manual_seed(seed) if seed else None``; 2.7 tests ``is not None``), and the split's streams
    should not be the very streams the run seed starts (the model's init). The derivation (fixed):
    the first 32-bit word of numpy's ``SeedSequence([seed, VAL_SPLIT_STREAM])``, or 1 where that word
    is 0: never 0, a fixed number per seed."""
    return int(np.random.SeedSequence([int(seed), VAL_SPLIT_STREAM]).generate_state(1)[0]) or 1


@dataclass(frozen=True)
class Selection:
    """Checkpoint selection of a detector that trains: the validation metric, its direction, and
    early stopping after ``patience`` epochs without improvement (None: no early stopping)."""
    monitor: str
    mode: str = "max"
    patience: int | None = None


def selection_callbacks(selection: Selection | None, out_dir: Path) -> list:
    """Best-checkpoint selection and early stopping on the validation split, for detectors that train."""
    from anomalib.callbacks.checkpoint import ModelCheckpoint
    from lightning.pytorch.callbacks import EarlyStopping

    if selection is None:  # training-free detectors (one pass over the normals): nothing to select
        return []
    callbacks = [ModelCheckpoint(dirpath=out_dir / "weights", filename="best-epoch={epoch}", monitor=selection.monitor,
                                 mode=selection.mode, save_top_k=1, auto_insert_metric_name=False)]
    if selection.patience:
        callbacks.append(EarlyStopping(monitor=selection.monitor, mode=selection.mode, patience=selection.patience))
    return callbacks


def fit_and_test(model, datamodule, out_dir: str | Path, *, labels: dict[str, str], dataset_root: str | Path,
                 selection: Selection | None = None, max_epochs: int = 1, accelerator: str = "auto",
                 refit: Callable[[], Any] | None = None, log_images: int = 0, verbose: bool = False,
                 logger=None, anomaly_textures: Path | None = None) -> DetectRecord:
    """Fit ``model`` (an anomalib model, built and seeded by the caller) on ``datamodule``'s training
    normals minus the validation split, select its epoch on the validation split (``selection``,
    detectors that train), and test it.

    ``refit`` (training-free detectors: memory bank, density): a builder of a fresh copy of ``model``
    (built and seeded the same way). ``model``, fitted without the validation normals, gives the
    validation metrics (``val_*``: recipe pick, sweeper objective, normalisation rule), which must not
    score images the detector was fitted on; ``refit()``, fitted on every training normal as the
    study does, gives the test metrics (its F1 threshold from the same validation split). The refit
    is fitted first, so that PatchCore's two coreset selections run side by side (one thread each).
    Detectors that train hold the validation normals out anyway (one model, no ``refit``).

    ``labels`` (dataset, category, backbone, detector) head the metrics.csv row; ``dataset_root``
    makes predictions.csv's image paths relative. ``logger``: a Lightning logger for the per-epoch
    curves (losses, validation metrics) of detectors that train. ``anomaly_textures``: the folder the
    synthetic validation anomalies take their textures from (None: anomalib's default, which depends
    on the working directory)."""
    from anomalib.engine import Engine
    from lightning.pytorch.trainer.states import TrainerFn

    out_dir = Path(out_dir)
    keep_all_normals(datamodule)
    paired_validation(datamodule)
    if anomaly_textures is not None:
        synthetic_anomalies_from(datamodule, anomaly_textures)
    validation_draws_apart(datamodule)
    roc = RocCollector()
    callbacks = selection_callbacks(selection, out_dir)

    def engine(*extra, validate_in_fit: bool = True) -> Engine:
        # one device: multi-GPU belongs to pre-training; sweeps spread jobs
        return Engine(accelerator=accelerator, devices=1, default_root_dir=out_dir, logger=logger or False,
                      max_epochs=max_epochs, enable_model_summary=verbose,
                      **({} if validate_in_fit else {"check_val_every_n_epoch": max_epochs + 1}),
                      callbacks=[*extra, StepProgress("detect")])

    start = time.perf_counter()
    datamodule.prepare_data()
    datamodule.setup(TrainerFn.FITTING)  # the split, once (as the trainer calls it): every fit below sees the same
    held_out = datamodule.train_data
    if refit is not None:
        # the tested model first: PatchCore's coreset selection runs on a thread of its own
        # (detectors.adapters.patchcore), beside the held-out model's fit and selection, so neither fit runs a
        # validation loop; the tested model's validation pass below sets its thresholds
        datamodule.train_data = datamodule.all_normals  # same split, same synthetic anomalies
        tested, tester = refit(), engine(roc, validate_in_fit=False)
        tester.fit(model=tested, datamodule=datamodule)
        datamodule.train_data = held_out
    validator = engine(*callbacks, roc, validate_in_fit=refit is None)
    validator.fit(model=model, datamodule=datamodule)
    best = callbacks[0].best_model_path if callbacks else ""
    # validation metrics of the model that is tested (the selected epoch) or, for training-free
    # detectors, of the fit without the validation normals: what sweepers may optimise
    (validation,) = validator.validate(model=model, datamodule=datamodule, ckpt_path=best or None, verbose=False)
    if refit is None:
        tested, tester = model, validator
    else:
        datamodule.train_data = datamodule.all_normals
        getattr(tested, "wait_for_memory_bank", lambda: None)()
    fit_s = time.perf_counter() - start  # until both models are complete (the first validation included)
    if refit is not None:
        tester.validate(model=tested, datamodule=datamodule, verbose=False)  # thresholds only
    start = time.perf_counter()
    (results,) = tester.test(model=tested, datamodule=datamodule, ckpt_path=best or None, verbose=False)
    test_s = time.perf_counter() - start

    val_labels = datamodule.val_data.samples.label_index
    metrics = {k: float(v) for k, v in {**validation, **results}.items()}
    metrics.update(fit_seconds=fit_s, test_seconds=test_s, fit_images=float(len(datamodule.train_data)),
                   val_fit_images=float(len(held_out)), val_images=float(len(val_labels)), val_normals=float((val_labels == 0).sum()),
                   val_anomalies=float((val_labels == 1).sum()),
                   peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    if callbacks:
        metrics.update(selected_epoch=float(_epoch_of(best)) if best else -1.0,
                       epochs_run=float(tester.trainer.current_epoch))
    csv_path = write_csv(out_dir / "metrics.csv", {**labels, **metrics})
    predictions_csv = write_predictions(out_dir / "predictions.csv", roc, dataset_root)
    curves = roc.curves()
    title = f"{labels.get('detector')} / {labels.get('backbone')} / {labels.get('dataset')}:{labels.get('category')}"
    roc_path = plot_roc(curves, out_dir / "roc.png", title) if curves else None
    # anomalib writes under <out_dir>/<Model>/<Dataset>/<category>/v<N>/images
    images = pick_images(Path(tester.trainer.default_root_dir) / "images", log_images)
    return DetectRecord(metrics, csv_path, predictions_csv, roc_path, images)


def _epoch_of(checkpoint: str) -> int:
    match = re.search(r"best-epoch=(\d+)", Path(checkpoint).name)
    return int(match.group(1)) if match else -1

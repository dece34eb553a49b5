"""Detect stage: an anomalib detector on a frozen backbone, fitted and tested on one category."""

from __future__ import annotations

import csv
import resource
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import hydra
import mlflow
import timm
from omegaconf import DictConfig

from detectors.backbone import Backbone
from evaluation.builtin import make_builtin_dataset
from evaluation.datasets import validate_layout
from evaluation.metrics import study_evaluator


@dataclass
class DetectRecord:
    metrics: dict[str, float]
    metrics_csv: Path
    images: list[Path] = field(default_factory=list)


def check_layers(arch: str, layers: list[str]) -> None:
    """Fail early, naming the valid choices, instead of a bare KeyError deep inside anomalib."""
    valid = timm.create_model(arch, pretrained=False, features_only=True).feature_info.module_name()
    missing = [layer for layer in layers if layer not in valid]
    if missing:
        raise ValueError(f"detector layers {missing} do not exist in {arch}; its feature layers are "
                         f"{valid}. Set detector.model.layers to names from that list.")


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


def detect(cfg: DictConfig, backbone: Backbone, out_dir: str | Path) -> DetectRecord:
    from anomalib.engine import Engine
    from anomalib.pre_processing import PreProcessor
    from torchvision.transforms.v2 import Compose, Normalize, Resize

    d = cfg.dataset
    if d.image_size < 32:
        raise ValueError(f"dataset.image_size must be >= 32 pixels, got {d.image_size}")
    out_dir = Path(out_dir)
    if d.name == "builtin":
        make_builtin_dataset(d.root, **d.builtin)
    validate_layout(d.name, d.root, d.category)
    check_layers(backbone.arch, list(cfg.detector.model.layers))

    pre_processor = PreProcessor(transform=Compose([
        Resize((d.image_size, d.image_size), antialias=True),
        Normalize(mean=list(backbone.mean), std=list(backbone.std)),
    ]))
    model = hydra.utils.instantiate(cfg.detector.model, backbone=backbone.timm_name,
                                    pre_trained=backbone.pre_trained, pre_processor=pre_processor,
                                    evaluator=study_evaluator(cfg.detector.aupro_fpr_limit))
    datamodule = hydra.utils.instantiate(d.datamodule, seed=cfg.seed)
    engine = Engine(accelerator=cfg.trainer.accelerator, devices=cfg.trainer.devices,
                    default_root_dir=out_dir, logger=False)

    start = time.perf_counter()
    engine.fit(model=model, datamodule=datamodule)
    fit_s = time.perf_counter() - start
    start = time.perf_counter()
    (results,) = engine.test(model=model, datamodule=datamodule, verbose=False)
    test_s = time.perf_counter() - start

    metrics = {k: float(v) for k, v in results.items()}
    metrics.update(fit_seconds=fit_s, test_seconds=test_s,
                   peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    csv_path = write_csv(out_dir / "metrics.csv", {"dataset": d.name, "category": d.category,
                                                   "backbone": backbone.source,
                                                   "detector": cfg.detector.name, **metrics})
    images = pick_images(Path(engine.trainer.default_root_dir) / "images", cfg.detector.log_images)
    if mlflow.active_run():
        mlflow.log_metrics(metrics)
        mlflow.log_artifact(str(csv_path))
        for path in images:
            mlflow.log_artifact(str(path), f"anomaly_maps/{path.parent.name}")
    return DetectRecord(metrics, csv_path, images)

"""Detect stage: the ``backbone``, ``detector`` and ``dataset`` groups -> an anomalib detector on the
frozen backbone, fitted and tested on one category (detectors.fit) -> metrics and files in MLflow."""

from __future__ import annotations

from pathlib import Path

import hydra
import mlflow
from omegaconf import DictConfig, OmegaConf

from console.errors import ConfigError
from console.logs import log
from detectors.backbone import Backbone, BackboneError
from detectors.backbone import resolve_backbone as resolve
from detectors.fit import DetectRecord, Selection, fit_and_test, input_transform, leakage_guard, split_seed
from detectors.models import build_detector
from evaluation.datasets.layouts import validate_folder, validate_layout, validate_real_iad
from evaluation.datasets.textures import write_fractal_textures
from evaluation.metrics import RawScorePostProcessor, study_evaluator
from evaluation.plots import NormalisedVisualizer
from pipeline.config import seed_stage
from pipeline.provenance import log_dataset_inputs, split_files


def fetch_mlflow_export(run_id: str, dst: Path) -> Path:
    """Download the ``backbone`` artifact folder of a pretrain run."""
    try:
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="backbone",
                                                        dst_path=str(dst)))
    except Exception as err:  # mlflow raises several types for a missing run or artifact
        raise BackboneError(f"could not fetch the backbone of MLflow run {run_id}: {err}. Check the run "
                            f"id in the MLflow UI, and that its pretrain stage logged the export "
                            f"(pretrain.log_export=true).") from err


def upstream_run_id(weights) -> str | None:
    """The pretrain run of ``backbone.weights=runs:/<run id>[/...]``; None for other weights."""
    weights = str(weights or "")
    return weights.removeprefix("runs:/").split("/")[0] if weights.startswith("runs:/") else None


def resolve_backbone(b: DictConfig, fractal_export: Path | None, work_dir: Path) -> Backbone:
    """The ``backbone`` group -> what the detector needs. ``fractal_export`` is the export of this
    call's pretrain stage, if it ran; ``backbone.weights=runs:/<id>`` fetches a pretrain run's export."""
    weights = b.get("weights")
    if run_id := upstream_run_id(weights):
        weights = fetch_mlflow_export(run_id, work_dir / "upstream")
    if b.source == "fractal" and not weights:
        weights = fractal_export
    return resolve(b.source, b.arch, b.normalization, weights, allow_download=bool(b.get("allow_download")),
                   offline_import=bool(b.get("offline_import")))


def build_from_config(model_cfg: DictConfig, backbone: Backbone, **components):
    """The ``detector.model`` group (``_target_``: an anomalib model class) on ``backbone``."""
    kwargs = OmegaConf.to_container(model_cfg, resolve=True)
    return build_detector(hydra.utils.get_class(kwargs.pop("_target_")), kwargs, backbone, **components)


def validate_dataset(d: DictConfig) -> Path:
    """Validate the dataset a ``dataset`` config group describes; return its category (or root) folder."""
    if d.name == "folder":
        folder = validate_folder(d.root, d.normal_dir, d.abnormal_dir, d.get("normal_test_dir"), d.get("mask_dir"))
        if not dataset_has_masks(d):
            log.warning("dataset %r has no masks (dataset.mask_dir is not set): image-level metrics only, "
                        "pixel_AUROC and pixel_AUPRO are left out", d.category)
        return folder
    if d.name == "real_iad":
        return validate_real_iad(d.root, d.category, d.datamodule.resolution, d.datamodule.json_path)
    return validate_layout(d.name, d.root, d.category)


def dataset_has_masks(d: DictConfig) -> bool:
    """Whether the test split has ground-truth masks, i.e. pixel metrics are defined.

    Only ``folder`` datasets may come without masks (no ``mask_dir``); every benchmark ships them.
    """
    return d.name != "folder" or bool(d.get("mask_dir"))


def anomaly_textures(d: DictConfig) -> Path | None:
    """The folder of the synthetic validation anomalies' textures (``dataset.val_anomalies``): the
    fractal textures, rendered on first use, or the user's folder; None for anomalib's default."""
    textures = d.val_anomalies.textures
    if textures == "fractal":
        return write_fractal_textures(d.val_anomalies.fractal_dir)
    if textures and not Path(textures).is_dir():
        raise ConfigError(f"dataset.val_anomalies.textures={textures} is not a folder; give a folder of "
                          f"images (DTD: /abs/path/to/dtd/images), 'fractal' or null")
    return Path(textures) if textures else None


def detector_crop(cfg: DictConfig) -> int | None:
    """The centre crop of the detector's input: ``dataset.crop`` for detectors that crop
    (``detector.center_crop``: PatchCore, whose anomalib v1 transform, the study's, was resize 256 +
    centre crop 224), none for the others (anomalib v1 resized their input only)."""
    return cfg.dataset.get("crop") if cfg.detector.get("center_crop") else None


def prepare_dataset(d: DictConfig) -> Path:
    """Everything about the ``dataset`` group that can fail before a model exists: the input size and
    crop, the built-in dataset (built on first use), the layout on disk, the validation anomalies'
    textures, a validation split that is not the test set. The pipeline calls it before any stage, so
    a wrong root costs no pre-training."""
    input_transform(d.image_size, d.get("crop"), (0.5,) * 3, (0.5,) * 3)
    anomaly_textures(d)
    if d.name == "builtin":
        hydra.utils.instantiate(d.datamodule).prepare_data()  # builds it on first use
    folder = validate_dataset(d)
    leakage_guard(d.datamodule.get("val_split_mode", "same_as_test"))
    return folder


def detect(cfg: DictConfig, backbone: Backbone, out_dir: str | Path, dataset_prepared: bool = False,
           model_id: str | None = None) -> DetectRecord:
    """Build, fit and test the configured detector on ``backbone``; log metrics, files and the
    dataset inputs (the train and test files' digests) to the active MLflow run (if any).
    ``dataset_prepared``: ``prepare_dataset`` already ran in this call. ``model_id``: the backbone's
    MLflow LoggedModel, which the metrics are logged against."""
    from anomalib.loggers import AnomalibMLFlowLogger
    from anomalib.pre_processing import PreProcessor

    d = cfg.dataset
    if not dataset_prepared:
        prepare_dataset(d)
    pre_processor = PreProcessor(transform=input_transform(d.image_size, detector_crop(cfg), backbone.mean, backbone.std))

    # Seeded right before the first random draw of the stage (random init, PaDiM's channel subset, the
    # students/flows/decoders), so nothing that ran before in this process (another sweep job, the
    # offline ImageNet conversion, timm probing) changes them; the same stream then drives the
    # synthetic validation anomalies and the coreset.
    def build():  # seeded each time: the refit of training-free detectors is the same model again
        seed_stage(cfg.seed)
        # threshold-free metrics on raw scores; the F1 threshold and the drawn maps' scale come from validation
        return build_from_config(cfg.detector.model, backbone, pre_processor=pre_processor,
                                 post_processor=RawScorePostProcessor(), visualizer=NormalisedVisualizer(),
                                 evaluator=study_evaluator(cfg.detector.aupro_fpr_limit, pixel=dataset_has_masks(d),
                                                           maps=cfg.detector.anomaly_maps))

    model = build()
    # a detector's own batch sizes (the study's CFlow and RD configs) over the dataset's
    batches = {k: cfg.detector[k] for k in ("train_batch_size", "eval_batch_size") if cfg.detector.get(k)}
    datamodule = hydra.utils.instantiate(d.datamodule, seed=split_seed(cfg.seed), **batches)
    sel = cfg.detector.get("selection")
    # anomalib's MLflow logger writes into this stage's run: the per-epoch curves of detectors that train
    active = mlflow.active_run()
    logger = (AnomalibMLFlowLogger(tracking_uri=mlflow.get_tracking_uri(), run_id=active.info.run_id)
              if active and sel else None)
    record = fit_and_test(
        model, datamodule, out_dir, dataset_root=d.root,
        labels={"dataset": d.name, "category": d.category, "backbone": backbone.source, "detector": cfg.detector.name},
        selection=Selection(sel.monitor, sel.mode, sel.get("patience")) if sel else None,
        max_epochs=cfg.detector.get("max_epochs", 1), accelerator=cfg.trainer.accelerator,
        refit=build if cfg.detector.get("fit_on_all_normals", False) else None,
        log_images=cfg.detector.log_images, verbose=cfg.get("verbose", False), logger=logger,
        anomaly_textures=anomaly_textures(d))
    if mlflow.active_run():
        log_dataset_inputs(f"{d.name}:{d.category}", d.root, {
            "train": split_files(datamodule.train_data.samples), "test": split_files(datamodule.test_data.samples)})
        mlflow.log_metrics(record.metrics, model_id=model_id)
        for path in (record.metrics_csv, record.predictions_csv, record.roc_png):
            if path:
                mlflow.log_artifact(str(path))
        for path in record.images:
            mlflow.log_artifact(str(path), f"anomaly_maps/{path.parent.name}")
    return record

"""Detect stage: the ``dataset`` group -> a ``PreparedDataset`` (checked, built, before any model
exists); the ``detector`` group and ``seed`` -> a ``DetectSpec``; both and a resolved backbone -> an
anomalib detector fitted and tested on one category (detectors.fit) -> its record."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import mlflow
from omegaconf import DictConfig, OmegaConf

from console.errors import ConfigError
from console.logs import log
from detectors.backbone import Backbone, BackboneError
from detectors.backbone import resolve_backbone as resolve
from detectors.fit import DetectRecord, Selection, fit_and_test, input_transform, leakage_guard, split_seed
from detectors.models import build_detector
from evaluation.datasets.builtin import make_builtin_dataset
from evaluation.datasets.layouts import validate_folder, validate_layout, validate_real_iad
from evaluation.datasets.textures import TRAINING_SEED, write_fractal_textures
from evaluation.metrics import RawScorePostProcessor, study_evaluator
from evaluation.plots import NormalisedVisualizer
from pipeline.config import seed_stage
from pipeline.provenance import Upstream, split_files, upstream_backbone


@dataclass(frozen=True)
class PreparedDataset:
    """A checked dataset, ready on disk: what the detect stage reads, and the keywords of its
    anomalib datamodule (the category included: the config names it once, as ``dataset.category``)."""
    name: str
    category: str
    root: Path
    folder: Path  # the category's folder (the root for ``folder`` datasets)
    image_size: int
    crop: int | None
    has_masks: bool  # pixel metrics are defined
    textures: Path | None  # the synthetic validation anomalies' textures; None: anomalib's default
    datamodule: dict[str, Any]

    def make_datamodule(self, seed: int, **overrides):
        """The anomalib datamodule; ``seed``: the seed of its validation split (``split_seed``)."""
        return hydra.utils.instantiate(self.datamodule, seed=seed, **overrides)


@dataclass(frozen=True)
class DetectSpec:
    """The ``detector`` group and ``seed``, as the detect stage uses them."""
    seed: int
    name: str
    model: dict[str, Any]  # ``_target_``: an anomalib model class (or our adapter), and its settings
    center_crop: bool
    selection: Selection | None  # checkpoint selection of detectors that train
    max_epochs: int
    batch_sizes: dict[str, int]  # a detector's own batch sizes over the dataset's
    fit_on_all_normals: bool
    anomaly_source: dict[str, Any]  # ``textures`` (fractal, a folder, None) and ``fractal_dir``: GLASS's training textures
    aupro_fpr_limit: float
    anomaly_maps: bool
    log_images: int
    accelerator: str
    verbose: bool


@dataclass
class Detected:
    record: DetectRecord
    split_files: dict[str, list[str]]  # the train and test files (images, masks): the run's dataset inputs


def detect_spec(cfg: DictConfig) -> DetectSpec:
    det = cfg.detector
    sel = det.get("selection")
    source = OmegaConf.to_container(det.anomaly_source, resolve=True)
    if source["textures"] not in ("fractal", None) and not Path(source["textures"]).is_dir():
        raise ConfigError(f"detector.anomaly_source.textures={source['textures']} is not a folder; give a folder of "
                          f"images (DTD: /abs/path/to/dtd/images), 'fractal' or null")
    return DetectSpec(
        cfg.seed, det.name, OmegaConf.to_container(det.model, resolve=True), bool(det.get("center_crop")),
        Selection(sel.monitor, sel.mode, sel.get("patience")) if sel else None, det.get("max_epochs", 1),
        {k: det[k] for k in ("train_batch_size", "eval_batch_size") if det.get(k)},
        bool(det.get("fit_on_all_normals", False)), source, det.aupro_fpr_limit, det.anomaly_maps, det.log_images,
        cfg.trainer.accelerator, bool(cfg.get("verbose", False)))


def fetch_mlflow_export(upstream: Upstream, dst: Path) -> Path:
    """Download the export a pretrain run logged (its ``backbone`` artifact folder, as its LoggedModel's
    ``weights`` tag names it)."""
    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=upstream.weights_uri, dst_path=str(dst)))
    except Exception as err:  # mlflow raises several types for a missing run or artifact
        raise BackboneError(f"could not fetch the backbone of MLflow run {upstream.run_id} "
                            f"({upstream.weights_uri}): {err}. Check the run id in the MLflow UI, and that "
                            f"its pretrain stage logged the export (pretrain.log_export=true).") from err


def backbone_from_config(b: DictConfig, fractal_export: Path | None, work_dir: Path) -> Backbone:
    """The ``backbone`` group -> what the detector needs. ``fractal_export`` is the export of this
    call's pretrain stage, if it ran; ``backbone.weights=runs:/<id>`` or ``models:/...`` fetches the
    export a pretrain run logged."""
    weights = b.get("weights")
    if upstream := upstream_backbone(weights):
        weights = fetch_mlflow_export(upstream, work_dir / "upstream")
    if b.source == "fractal" and not weights:
        weights = fractal_export
    return resolve(b.source, b.arch, b.normalization, weights, allow_download=bool(b.get("allow_download")),
                   offline_import=bool(b.get("offline_import")))


def build_from_config(model: dict[str, Any], backbone: Backbone, **components):
    """The ``detector.model`` group (``_target_``: an anomalib model class) on ``backbone``."""
    kwargs = dict(model)
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


def training_textures(source: dict[str, Any]) -> Path | None:
    """The folder of the textures a detector blends into its training anomalies
    (``detector.anomaly_source``): the fractal training textures (``TRAINING_SEED``: none of them is a
    validation anomaly's texture), rendered on first use, or the user's folder; None: Perlin noise."""
    if source["textures"] == "fractal":
        return write_fractal_textures(source["fractal_dir"], seed=TRAINING_SEED)
    return Path(source["textures"]) if source["textures"] else None


def prepare_dataset(d: DictConfig) -> PreparedDataset:
    """Everything about the ``dataset`` group that can fail before a model exists: the input size and
    crop, the built-in dataset (built on first use), the layout on disk, the validation anomalies'
    textures, a validation split that is not the test set. The pipeline calls it before any stage, so
    a wrong root costs no pre-training."""
    input_transform(d.image_size, d.get("crop"), (0.5,) * 3, (0.5,) * 3)
    textures = anomaly_textures(d)
    if d.name == "builtin":
        make_builtin_dataset(d.root, **d.builtin)  # built on first use, reused when it matches
    folder = validate_dataset(d)
    leakage_guard(d.datamodule.get("val_split_mode", "same_as_test"))
    datamodule = OmegaConf.to_container(d.datamodule, resolve=True)
    datamodule["name" if d.name == "folder" else "category"] = d.category  # anomalib's Folder calls it name
    return PreparedDataset(d.name, d.category, Path(d.root), folder, d.image_size, d.get("crop"),
                           dataset_has_masks(d), textures, datamodule)


def detect(spec: DetectSpec, backbone: Backbone, dataset: PreparedDataset, out_dir: str | Path,
           logger=None) -> Detected:
    """Build, fit and test the detector of ``spec`` on ``backbone`` and ``dataset``. ``logger``: a
    Lightning logger for the per-epoch curves of detectors that train (the tracker's)."""
    from anomalib.pre_processing import PreProcessor

    # anomalib v1's PatchCore (the study's) centre-cropped its input; its other detectors did not
    crop = dataset.crop if spec.center_crop else None
    pre_processor = PreProcessor(transform=input_transform(dataset.image_size, crop, backbone.mean, backbone.std))

    # Seeded right before the first random draw of the stage (random init, PaDiM's channel subset, the
    # students/flows/decoders), so nothing that ran before in this process (another sweep job, the
    # offline ImageNet conversion, timm probing) changes them; the same stream then drives the
    # synthetic validation anomalies and the coreset.
    def build():  # seeded each time: the refit of training-free detectors is the same model again
        seed_stage(spec.seed)
        # threshold-free metrics on raw scores; the F1 threshold and the drawn maps' scale come from validation
        return build_from_config(spec.model, backbone, anomaly_source=lambda: training_textures(spec.anomaly_source),
                                 pre_processor=pre_processor,
                                 post_processor=RawScorePostProcessor(), visualizer=NormalisedVisualizer(),
                                 evaluator=study_evaluator(spec.aupro_fpr_limit, pixel=dataset.has_masks,
                                                           maps=spec.anomaly_maps))

    model = build()
    datamodule = dataset.make_datamodule(split_seed(spec.seed), **spec.batch_sizes)
    record = fit_and_test(
        model, datamodule, out_dir, dataset_root=dataset.root,
        labels={"dataset": dataset.name, "category": dataset.category, "backbone": backbone.source,
                "detector": spec.name},
        selection=spec.selection, max_epochs=spec.max_epochs, accelerator=spec.accelerator,
        refit=build if spec.fit_on_all_normals else None, log_images=spec.log_images, verbose=spec.verbose,
        logger=logger, anomaly_textures=dataset.textures)
    return Detected(record, {"train": split_files(datamodule.train_data.samples),
                             "test": split_files(datamodule.test_data.samples)})

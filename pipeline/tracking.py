"""The tracker: everything the pipeline records in MLflow. One parent run per pipeline call, one
nested run per stage; the stages compute and return records, and the functions here log them (and
hand Lightning's and anomalib's loggers the stage's run). No other module of the pipeline decides
what is logged.

Runs are opened with ``mlflow.start_run`` as a context manager, which ends them FAILED when an
exception (KeyboardInterrupt and SystemExit included) leaves the block: no run is left RUNNING.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import mlflow
from omegaconf import DictConfig, OmegaConf
from timm.models import split_model_name_tag

from console.logs import stage_header
from fractal_pretrain.export import export_digest, read_export
from pipeline import provenance
from pipeline.config import pretrain_hash, recipe_groups, source_label

# Marks the experiment as model training, not GenAI. MLflow 3.x's UI reads this tag to choose the
# experiment's view; 3.17.2's UI-wide "GenAI | Model training" switch (default GenAI: an empty
# "Traces" overview) takes precedence, so the link run.py prints also carries
# ?workflowType=machine_learning, which sets that switch.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def setup(tracking_uri: str, experiment: str) -> None:
    """Point MLflow at the store and create the experiment (and the SQLite schema) once.

    A SQLite store's default artifact root is ``./mlruns`` relative to the working directory, so
    artifacts would land wherever the command was started: the experiment is created with its
    artifacts beside the database instead (``<store folder>/mlartifacts/<experiment>``).
    """
    artifacts = None
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri.removeprefix("sqlite:///"))
        db.parent.mkdir(parents=True, exist_ok=True)
        artifacts = (db.parent / "mlartifacts" / experiment).as_uri()
    mlflow.set_tracking_uri(tracking_uri)
    if artifacts and mlflow.get_experiment_by_name(experiment) is None:
        try:
            mlflow.create_experiment(experiment, artifact_location=artifacts)
        except mlflow.exceptions.MlflowException:  # a parallel job created it first
            pass
    if EXPERIMENT_KIND[0] not in mlflow.set_experiment(experiment).tags:
        mlflow.set_experiment_tag(*EXPERIMENT_KIND)


def run_name(cfg: DictConfig) -> str:
    """``fractal / resnet18 / patchcore / mvtec:bottle / seed 0``: what the runs table lists."""
    return (f"{source_label(cfg)} / {cfg.backbone.arch} / {cfg.detector.name} / "
            f"{cfg.dataset.name}:{cfg.dataset.category} / seed {cfg.seed}")


def scalar_params(cfg: Mapping, prefix: str = "") -> dict[str, str | int | float | bool]:
    """Flatten a config into ``a.b.c -> value`` for scalar leaves (lists as their string)."""
    out = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(scalar_params(value, prefix=f"{name}."))
        elif value is None or isinstance(value, (str, int, float, bool)):
            out[name] = value
        else:
            out[name] = str(list(value)) if not isinstance(value, str) else value
    return out


def stage_summary(stage: str, cfg: DictConfig) -> str:
    """What a stage is about to do, for its console header."""
    source = cfg.pretrain.source
    if stage == "generate":
        f = cfg.fractal
        if source.name == "image_folder":
            return f"images under {source.root} ({source.labels})"
        if source.name != "fractal":
            return f"{source.num_classes} {source.name} classes"
        return f"{f.num_classes} classes x {f.systems_per_class} IFS systems ({f.get('family', 'fractals')})"
    if stage == "pretrain":
        p = cfg.pretrain
        size = cfg.fractal.render.size if source.name == "fractal" else source.size
        return (f"{cfg.backbone.arch} from scratch, {p.max_steps} steps of {p.batch_size} images "
                f"({size} px {source.name} images) on {cfg.trainer.accelerator}")
    if stage == "detect":
        d = cfg.dataset
        return (f"{cfg.detector.name} on {cfg.backbone.source} {cfg.backbone.arch}, "
                f"{d.name}:{d.category} at {d.image_size} px")
    return ""


@contextmanager
def stage_run(stage: str, cfg: DictConfig, groups: tuple[str, ...] = (), tags: Mapping | None = None,
              system_metrics: bool = False) -> Iterator[mlflow.ActiveRun]:
    """A nested run tagged ``stage``, with the scalar settings of ``groups`` as params and the
    resolved config as an artifact."""
    run_tags = {"stage": stage, **(tags or {})}
    stage_header(stage, stage_summary(stage, cfg))
    with mlflow.start_run(run_name=stage, nested=mlflow.active_run() is not None, tags=run_tags,
                          log_system_metrics=system_metrics) as run:
        resolved = OmegaConf.to_container(cfg, resolve=True)
        params = {}
        for group in groups:
            params.update(scalar_params(resolved.get(group) or {}, prefix=f"{group}."))
        params["seed"] = resolved.get("seed")
        mlflow.log_params(params)
        mlflow.log_text(OmegaConf.to_yaml(resolved), "config.yaml")
        yield run


def stage_logger(anomalib: bool = False):
    """An MLflow logger on the active stage run, for the curves Lightning writes (losses, the learning
    rate; ``anomalib``: anomalib's subclass, for the per-epoch curves of detectors that train), or
    False outside a run (DDP ranks other than 0, tests that call a stage alone)."""
    if anomalib:
        from anomalib.loggers import AnomalibMLFlowLogger as Logger
    else:
        from lightning.pytorch.loggers import MLFlowLogger as Logger

    active = mlflow.active_run()
    return Logger(tracking_uri=mlflow.get_tracking_uri(), run_id=active.info.run_id) if active else False


def log_generate(record) -> None:
    """The generate stage's figures, what defines its source (the stored systems, classes or image
    listing) and the preview grid, under the name of the folder the stage wrote them to."""
    folder = record.bank_path.parent.name  # fractals/, dead_leaves/, ...: the job folder's layout
    mlflow.log_metrics(record.metrics)
    mlflow.log_artifact(str(record.bank_path), folder)
    mlflow.log_artifact(str(record.preview_path), folder)


def log_pretrain(record, cfg: DictConfig) -> None:
    """The pretrain stage's figures, its first batch, the export (``pretrain.log_export``) and the
    backbone as a LoggedModel linked to this run (the Models view lists it with the detect metrics
    it reached; ``mlflow.register_backbone``: also registered under that name)."""
    if not record.is_global_zero:
        return
    run_id = mlflow.active_run().info.run_id
    mlflow.log_metrics(record.metrics, step=record.global_step)
    if record.sample_grid:
        mlflow.log_artifact(str(record.sample_grid), "samples")
    if cfg.pretrain.log_export:
        mlflow.log_artifacts(str(record.export_dir), "backbone")
    name = f"{source_label(cfg)}-{cfg.backbone.arch.split('.')[0]}"  # fractal-resnet18, dead_leaves-resnet18
    provenance.log_backbone_model(run_id, name, backbone_model_tags(record.export_dir, cfg),
                                  backbone_model_params(record.export_dir, cfg),
                                  logged_export=bool(cfg.pretrain.log_export),
                                  register_as=cfg.mlflow.get("register_backbone"))


def backbone_model_tags(export_dir: Path, cfg: DictConfig) -> dict[str, str]:
    """What identifies a fractal export's LoggedModel: the arm's recipe hash, its named recipe and
    budget, the code, the seed and the weights' digest (the same weights wherever they are stored)."""
    return {"pretrain_hash": pretrain_hash(cfg), "source": source_label(cfg), "code_version": provenance.code_version(),
            "seed": str(cfg.seed),
            "arch": str(cfg.backbone.arch), "recipe": str(cfg.pretrain.get("recipe") or "-"),
            "pretrain_steps": str(cfg.pretrain.max_steps), "weights_digest": str(export_digest(export_dir))}


def backbone_model_params(export_dir: Path, cfg: DictConfig) -> dict[str, str]:
    """An export's recipe (the scalar source, pretrain and optim settings, as the pretrain
    run's params) and the input statistics its weights were trained with (``input_mean``,
    ``input_std``, as the export's config.json records them and detect runs log them)."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    params = {"backbone.arch": cfg.backbone.arch, "seed": cfg.seed}
    for group in recipe_groups(cfg):  # fractal, pretrain, optim (no fractal group for other sources)
        params.update(scalar_params(resolved.get(group) or {}, prefix=f"{group}."))
    stats = read_export(export_dir, split_model_name_tag(cfg.backbone.arch)[0]).get("pretrained_cfg", {})
    params.update(input_mean=str(tuple(stats.get("mean", ()))), input_std=str(tuple(stats.get("std", ()))))
    return {k: str(v) for k, v in params.items()}


def log_backbone(backbone, normalization: str, model_id: str | None) -> None:
    """Which weights the detector ran on, and how its inputs were normalised."""
    if model_id:
        mlflow.set_tag("backbone_model_id", model_id)
    mlflow.set_tags({"weights": backbone.weights, "normalization": normalization})
    mlflow.log_params({"input_mean": str(backbone.mean), "input_std": str(backbone.std),
                       "weights_origin": backbone.weights})  # e.g. timm hub timm/<arch>.<tag>


def log_detect(detected, dataset, model_id: str | None) -> None:
    """The detect stage's dataset inputs (the train and test files' digests), metrics (against the
    backbone's LoggedModel, if any), tables, ROC curves and anomaly maps."""
    record = detected.record
    provenance.log_dataset_inputs(f"{dataset.name}:{dataset.category}", dataset.root, detected.split_files)
    mlflow.log_metrics(record.metrics, model_id=model_id)
    for path in (record.metrics_csv, record.predictions_csv, record.roc_png):
        if path:
            mlflow.log_artifact(str(path))
    for path in record.images:
        mlflow.log_artifact(str(path), f"anomaly_maps/{path.parent.name}")

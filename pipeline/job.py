"""One pipeline call: the configured stages under one parent MLflow run, in order."""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from console.logs import log
from detectors.imagenet_offline import ensure_imagenet_export
from evaluation.metrics import HEADLINE
from pipeline import tracking
from pipeline.config import (
    check_job,
    config_hash,
    is_multirun,
    pretrain_hash,
    recipe_groups,
    source_label,
    stages_to_run,
)
from pipeline.detect import backbone_from_config, detect, detect_spec, prepare_dataset
from pipeline.generate import GenerateSpec, generate, generate_spec
from pipeline.pretrain import PretrainSpec, pretrain, pretrain_spec
from pipeline.provenance import backbone_model_id, code_version, upstream_backbone
from pipeline.shared_backbone import shared_trained_backbone
from pipeline.sweep import SWEEP_RUN_ENV


def train_backbone(cfg: DictConfig, generating: GenerateSpec, pretraining: PretrainSpec | None,
                           out_dir: Path, tags: dict) -> tuple[Path | None, str | None]:
    """The generate and pretrain stages (of any source); returns the export folder and the pretrain run id."""
    fractal = cfg.pretrain.source.name == "fractal"
    with tracking.stage_run("generate", cfg, groups=("fractal",) if fractal else ("pretrain",), tags=tags):
        generated = generate(generating, out_dir / ("fractals" if fractal else cfg.pretrain.source.name))
        tracking.log_generate(generated)
    if pretraining is None:
        return None, None
    with tracking.stage_run("pretrain", cfg, groups=(*recipe_groups(cfg), "backbone", "trainer"),
                            tags=tags, system_metrics=cfg.mlflow.system_metrics) as run:
        record = pretrain(pretraining, generated.source, out_dir / "pretrain", generated.bank_path,
                          logger=tracking.stage_logger())
        tracking.log_pretrain(record, cfg)
    return record.export_dir, run.info.run_id


def run_pipeline(cfg: DictConfig) -> dict[str, float]:
    """Run the configured stages under one parent MLflow run; return the detect metrics."""
    check_job(cfg)
    stages = stages_to_run(cfg)
    # each stage's settings, checked before anything starts
    generating = generate_spec(cfg) if "generate" in stages else None
    pretraining = pretrain_spec(cfg) if "pretrain" in stages else None
    detecting = detect_spec(cfg) if "detect" in stages else None
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    resolved = OmegaConf.to_yaml(cfg, resolve=True)
    (out_dir / "config.yaml").write_text(resolved)
    tracking.setup(cfg.mlflow.tracking_uri, cfg.mlflow.experiment)
    if cfg.backbone.get("offline_import"):  # converted before the tags: the arm is named by its digest
        ensure_imagenet_export(cfg.backbone.weights)
    sweep_run_id = os.environ.get(SWEEP_RUN_ENV)
    trains = generating is not None
    tags = {"backbone": source_label(cfg), "arch": cfg.backbone.arch, "detector": cfg.detector.name,
            "dataset": cfg.dataset.name, "category": cfg.dataset.category, "seed": str(cfg.seed),
            "config_hash": config_hash(cfg), "pretrain_hash": pretrain_hash(cfg), "code_version": code_version(),
            # the fractal arm's recipe by name (conf/recipe/) and budget: the budget curve's axes
            "recipe": str(cfg.pretrain.get("recipe") or "-") if trains else "-",
            "pretrain_steps": str(cfg.pretrain.max_steps) if trains else "-",
            **({"sweep_run_id": sweep_run_id} if sweep_run_id else {})}

    export_dir = pretrain_run_id = None
    metrics: dict[str, float] = {}
    with mlflow.start_run(run_name=tracking.run_name(cfg),
                          parent_run_id=sweep_run_id, tags={**tags, "stage": "pipeline"}):
        mlflow.log_text(resolved, "config.yaml")
        # a wrong dataset fails here, not after a pre-training
        dataset = prepare_dataset(cfg.dataset) if detecting else None
        if trains:  # weights are made here (fractals by default) unless an export was given
            reuse = is_multirun() if cfg.pretrain.reuse == "auto" else cfg.pretrain.reuse
            train = lambda: train_backbone(cfg, generating, pretraining, out_dir, tags)  # noqa: E731
            export_dir, pretrain_run_id = shared_trained_backbone(cfg, train) if reuse else train()
        if detecting:
            given = upstream_backbone(cfg.backbone.get("weights"))  # runs:/ or models:/ weights
            pretrain_run_id = given.run_id if given else pretrain_run_id
            upstream = {"pretrain_run_id": pretrain_run_id} if pretrain_run_id else {}
            # the fractal export's LoggedModel, if any
            model_id = given.model_id if given else backbone_model_id(pretrain_run_id)
            with tracking.stage_run("detect", cfg, groups=("backbone", "detector", "dataset", "trainer"),
                                    tags={**tags, **upstream}):
                backbone = backbone_from_config(cfg.backbone, export_dir, out_dir)
                tracking.log_backbone(backbone, cfg.backbone.normalization, model_id)
                curves = tracking.stage_logger(anomalib=True) if detecting.selection else None  # detectors that train
                detected = detect(detecting, backbone, dataset, out_dir / "detect", logger=curves)
                tracking.log_detect(detected, dataset, model_id)
            metrics = detected.record.metrics
            mlflow.log_metrics({k: metrics[k] for k in HEADLINE if k in metrics})
            row = pd.DataFrame([{**tags, **metrics}]).reindex(columns=["backbone", "detector", "category", *HEADLINE])
            log.info("\n" + row.to_string(index=False, float_format="{:.3f}".format, na_rep="-") + "\n")
    return metrics


def where_it_went(cfg: DictConfig, log_file: str | None) -> None:
    """The last lines of a run: its folder, its MLflow run and how to look at it."""
    run = mlflow.last_active_run()  # the pipeline's parent run: the last one to end
    uri = cfg.mlflow.tracking_uri
    log.info(f"run folder  {cfg.paths.output_dir}" + (f"  (log: {Path(log_file).name})" if log_file else ""))
    if run is not None:
        log.info(f"MLflow run  {run.info.run_id} in experiment '{cfg.mlflow.experiment}' ({uri})")
        log.info(f"browse it   mlflow ui --backend-store-uri {uri}   then open "
                 f"http://127.0.0.1:5000/#/experiments/{run.info.experiment_id}?workflowType=machine_learning")

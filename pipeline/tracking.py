"""MLflow bookkeeping shared by all stages: one parent run per pipeline call, one nested run per stage.

Runs are opened with ``mlflow.start_run`` as a context manager, which ends them FAILED when an
exception (KeyboardInterrupt and SystemExit included) leaves the block: no run is left RUNNING.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import mlflow
from omegaconf import DictConfig, OmegaConf

from console.logs import stage_header
from pipeline.config import source_label

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
    if stage == "generate":
        f = cfg.fractal
        return f"{f.num_classes} classes x {f.systems_per_class} IFS systems ({f.get('family', 'fractals')})"
    if stage == "pretrain":
        p = cfg.pretrain
        return (f"{cfg.backbone.arch} from scratch, {p.max_steps} steps of {p.batch_size} images "
                f"({cfg.fractal.render.size} px renders) on {cfg.trainer.accelerator}")
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

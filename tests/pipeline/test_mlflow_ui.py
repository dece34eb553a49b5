"""The MLflow UI opens on the runs table, and the run names say what was compared."""

from __future__ import annotations

import mlflow
from conftest import runs_of

from pipeline import tracking
from pipeline.job import run_pipeline


def test_experiment_opens_on_the_runs_table_and_runs_are_named_by_what_they_compare(tiny_config, tmp_path):
    cfg = tiny_config("stages=[generate]", "seed=3", "dataset.category=tiles")
    run_pipeline(cfg)
    experiment = mlflow.get_experiment_by_name(cfg.mlflow.experiment)
    assert experiment.tags.get("mlflow.experimentKind") == "custom_model_development"
    runs = runs_of(cfg.mlflow.tracking_uri)
    names = dict(zip(runs["tags.stage"], runs["tags.mlflow.runName"]))
    assert names == {"pipeline": "fractal / resnet18 / patchcore / builtin:tiles / seed 3", "generate": "generate"}


def test_an_experiment_made_before_the_tag_existed_gets_it(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    mlflow.MlflowClient().create_experiment("old")
    assert "mlflow.experimentKind" not in mlflow.get_experiment_by_name("old").tags
    tracking.setup(uri, "old")  # what run.py and the sweep callback call first
    assert mlflow.get_experiment_by_name("old").tags["mlflow.experimentKind"] == "custom_model_development"


def test_artifacts_land_beside_the_store_whatever_the_working_directory(tmp_path, monkeypatch):
    elsewhere = tmp_path / "started_here"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    tracking.setup(uri, "where")
    with mlflow.start_run():
        mlflow.log_text("x", "a.txt")
        artifact_uri = mlflow.get_artifact_uri()
    assert artifact_uri.startswith((tmp_path / "store" / "mlartifacts" / "where").as_uri())
    assert (tmp_path / "store" / "mlartifacts" / "where").is_dir() and not (elsewhere / "mlruns").exists()

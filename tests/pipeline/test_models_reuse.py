"""A fractal export reused as an MLflow model: ``backbone.weights=models:/<registered name>/<version>``
(``mlflow.register_backbone``) detects exactly as the export on disk, in a real SQLite store after a
real (tiny) pre-training; and a model URI that cannot work stops, with the fix, before any run starts.
The ``models:/<model id>`` and ``runs:/`` round trips: test_pipeline.py."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from conftest import compose_config, runs_of

from console.errors import ConfigError
from fractal_pretrain.export import export_digest
from pipeline import tracking
from pipeline.job import run_pipeline
from pipeline.provenance import MODEL_TYPE, NOT_LOGGED

NAME = "fractal-tiny"  # the registered model (mlflow.register_backbone)


def detect_on(cfg, out: Path, weights: str) -> dict[str, float]:
    return run_pipeline(compose_config(out, f"backbone.weights={weights}", "stages=[detect]",
                                       f"mlflow.tracking_uri={cfg.mlflow.tracking_uri}",
                                       data_dir=Path(cfg.paths.data_dir)))


@pytest.mark.slow
def test_a_registered_backbone_detects_as_the_export_on_disk(tmp_path):
    """pretrain with mlflow.register_backbone=NAME -> version 1 of NAME -> detect on models:/NAME/1."""
    cfg = compose_config(tmp_path / "pre", "stages=[generate,pretrain]", f"mlflow.register_backbone={NAME}",
                         data_dir=tmp_path / "data")
    run_pipeline(cfg)
    runs = runs_of(cfg.mlflow.tracking_uri)
    pretrain = runs[runs["tags.stage"] == "pretrain"].iloc[0]
    (model,) = mlflow.search_logged_models(experiment_ids=[pretrain["experiment_id"]], output_format="list")
    assert mlflow.MlflowClient().get_model_version(NAME, "1").source == f"models:/{model.model_id}"
    assert pretrain["tags.registered_model"] == f"models:/{NAME}/1"  # the pretrain run says where

    export = Path(cfg.paths.output_dir) / "pretrain" / "backbone"
    on_disk = detect_on(cfg, tmp_path / "disk", str(export))
    registered = detect_on(cfg, tmp_path / "registry", f"models:/{NAME}/1")
    assert registered == {**on_disk, **{k: registered[k] for k in registered if k.endswith(("_seconds", "peak_rss_mb"))}}
    (download,) = (tmp_path / "registry" / "job" / "upstream").rglob("model.safetensors")
    assert export_digest(download.parent) == export_digest(export)
    detects = runs_of(cfg.mlflow.tracking_uri).query("`tags.stage` == 'detect'")
    reused = detects[detects["tags.weights"].str.contains("upstream")].iloc[0]
    assert reused["tags.pretrain_run_id"] == pretrain["run_id"] and reused["tags.backbone_model_id"] == model.model_id
    assert detects["tags.pretrain_hash"].nunique() == 1  # the same weights: one report arm


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A store with hand-made models (no pre-training needed to refuse a URI): a fractal export whose
    weights were not logged, a LoggedModel of something else, each registered."""
    base = tmp_path_factory.mktemp("models_store")
    cfg = compose_config(base, data_dir=tmp_path_factory.mktemp("models_store_data"))
    tracking.setup(cfg.mlflow.tracking_uri, cfg.mlflow.experiment)
    with mlflow.start_run() as run:
        unlogged = mlflow.initialize_logged_model(name="fractal-resnet18", source_run_id=run.info.run_id,
                                                  model_type=MODEL_TYPE, tags={"weights": NOT_LOGGED})
    other = mlflow.initialize_logged_model(name="other", model_type="sklearn")
    mlflow.register_model(f"models:/{unlogged.model_id}", NAME)
    mlflow.register_model(f"models:/{other.model_id}", "other")
    return cfg, {"unlogged": unlogged.model_id, "other": other.model_id}


@pytest.mark.parametrize("uri,message", [
    ("models:/m-0123456789abcdef0123456789abcdef", "no logged model 'm-0123.*Models view.*mlflow.tracking_uri"),
    (f"models:/{NAME}", f"without a version; add one: backbone.weights=models:/{NAME}/1"),
    (f"models:/{NAME}/7", f"no version 7 of a registered model '{NAME}'"),
    ("models:/no-such-name", "no logged model id or registered model 'no-such-name'"),
    ("models:/a/b/c", "not a model URI this pipeline reads"),
    ("models:/{other}", "'other'.*is not a fractal backbone export.*backbone.weights=/abs/path/to/export"),
    ("models:/other/1", "'other'.*is not a fractal backbone export"),
    ("models:/{unlogged}", "did not log its export.*pretrain.log_export=true"),
    (f"models:/{NAME}/1", "did not log its export"),
])
def test_a_models_uri_that_names_no_usable_export_fails_before_any_run(store, tmp_path, uri, message):
    cfg, ids = store
    before = len(runs_of(cfg.mlflow.tracking_uri))
    with pytest.raises(ConfigError, match=message):
        detect_on(cfg, tmp_path, uri.format(**ids))
    assert len(runs_of(cfg.mlflow.tracking_uri)) == before  # refused before any run started

"""Every number traceable to its data and its code: dataset inputs, the code_version tag, the
backbone LoggedModel and the shared-backbone cache keyed by code, on a real SQLite MLflow store."""

from __future__ import annotations

import json
import shutil
import subprocess

import mlflow
import pytest
from conftest import runs_of

from pipeline import provenance
from pipeline.shared_backbone import shared_trained_backbone
from pipeline.job import run_pipeline


def logged_inputs(uri: str, folder, name="builtin:tiles"):
    """Log the train/test inputs of ``folder``'s files in a fresh run; return {context: digest}."""
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("inputs")  # not the experiment id an earlier test left active in another store
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    with mlflow.start_run() as run:
        provenance.log_dataset_inputs(name, folder, {
            "train": [f for f in files if "train" in f.parts], "test": [f for f in files if "test" in f.parts]})
    inputs = mlflow.get_run(run.info.run_id).inputs.dataset_inputs
    return {next(t.value for t in i.tags if t.key == "mlflow.data.context"): i.dataset for i in inputs}


def test_dataset_input_digest_follows_the_files_not_the_folder(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    data = tmp_path / "data"
    for i, name in enumerate(["train/good/0.png", "train/good/1.png", "test/bad/0.png", "test/good/0.png"]):
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        (data / name).write_bytes(b"x" * (10 + i))
    first = logged_inputs(uri, data)
    assert set(first) == {"train", "test"} and first["train"].name == "builtin:tiles"
    assert first["train"].digest != first["test"].digest
    moved = tmp_path / "elsewhere" / "data"
    shutil.move(data, moved)
    after_move = logged_inputs(uri, moved)
    assert {c: d.digest for c, d in after_move.items()} == {c: d.digest for c, d in first.items()}
    (moved / "test/bad/0.png").write_bytes(b"changed, and longer")
    changed = logged_inputs(uri, moved)
    assert changed["train"].digest == first["train"].digest and changed["test"].digest != first["test"].digest


def test_code_version_is_the_commit_in_git_and_a_source_digest_outside(tmp_path, monkeypatch):
    version = provenance.code_version()
    # the last commit that changed the sources (not a later docs/tests-only one)
    head = subprocess.run(["git", "-C", str(provenance.ROOT), "log", "-1", "--format=%H", "--", "pipeline", "conf",
                           "fractal_pretrain", "detectors", "evaluation", "console", "hydra_plugins", "run.py"],
                          capture_output=True, text=True, check=True).stdout.strip()
    assert version.startswith(f"0.1.0+g{head[:12]}")
    # a copy of the sources outside any checkout (a pip install, a CI copy): a digest of them
    copy = tmp_path / "installed"
    shutil.copytree(provenance.ROOT / "pipeline", copy / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(provenance, "ROOT", copy)
    provenance.code_version.cache_clear()
    try:
        outside = provenance.code_version()
        assert outside == f"0.1.0+src{provenance.source_digest()}"
        (copy / "pipeline" / "report.py").write_text("# changed\n", encoding="utf-8")
        provenance.code_version.cache_clear()
        assert provenance.code_version() != outside
    finally:
        provenance.code_version.cache_clear()


def test_a_backbone_cached_by_other_code_is_not_reused(tiny_config, tmp_path, monkeypatch):
    cfg = tiny_config("pretrain.reuse=true")
    trained = []

    def train():
        export = tmp_path / f"export{len(trained)}"
        export.mkdir()
        (export / "model.safetensors").write_bytes(b"w")
        trained.append(export)
        return export, f"run{len(trained)}"

    for version in ("0.1.0+gaaaa", "0.1.0+gaaaa", "0.1.0+gbbbb", "0.1.0+gaaaa"):
        monkeypatch.setattr(provenance, "code_version", lambda v=version: v)
        shared_trained_backbone(cfg, train)
    assert len(trained) == 2  # once per code version; the same version again reuses its own
    cached = sorted((tmp_path / "backbones").glob("*/run.json"))
    assert sorted(json.loads(p.read_text())["code_version"] for p in cached) == ["0.1.0+gaaaa", "0.1.0+gbbbb"]


def test_the_parent_and_stage_runs_carry_the_code_version(tiny_config):
    cfg = tiny_config("stages=[generate]")
    run_pipeline(cfg)
    runs = runs_of(cfg.mlflow.tracking_uri)
    assert sorted(runs["tags.stage"]) == ["generate", "pipeline"]
    assert set(runs["tags.code_version"]) == {provenance.code_version()}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """generate, pretrain, detect at the tiny sizes: about a minute, so the tests on it are slow."""
    from conftest import compose_config

    base = tmp_path_factory.mktemp("provenance")
    cfg = compose_config(base, data_dir=tmp_path_factory.mktemp("provenance_data"))
    run_pipeline(cfg)
    return cfg, runs_of(cfg.mlflow.tracking_uri)


@pytest.mark.slow
def test_every_run_carries_the_code_version_and_detect_logs_its_data(tiny_run):
    cfg, runs = tiny_run
    assert sorted(runs["tags.stage"]) == ["detect", "generate", "pipeline", "pretrain"]
    assert set(runs["tags.code_version"]) == {provenance.code_version()}
    (detect_id,) = runs.loc[runs["tags.stage"] == "detect", "run_id"]
    inputs = mlflow.get_run(detect_id).inputs.dataset_inputs
    contexts = {next(t.value for t in i.tags if t.key == "mlflow.data.context"): i.dataset for i in inputs}
    assert set(contexts) == {"train", "test"}
    assert {d.name for d in contexts.values()} == {f"builtin:{cfg.dataset.category}"}
    # the test digest is that of the category's test images and masks, computed here independently
    category = provenance.Path(cfg.dataset.root) / cfg.dataset.category
    test_files = [p for p in (category / "test").rglob("*.png")] + [p for p in (category / "ground_truth").rglob("*.png")]
    assert contexts["test"].digest == provenance.files_digest(test_files, cfg.dataset.root)[0]


@pytest.mark.slow
def test_the_fractal_backbone_is_a_logged_model_with_the_detect_metrics_it_reached(tiny_run):
    cfg, runs = tiny_run
    (pretrain_id,) = runs.loc[runs["tags.stage"] == "pretrain", "run_id"]
    detect = runs[runs["tags.stage"] == "detect"].iloc[0]
    models = mlflow.search_logged_models(experiment_ids=[detect["experiment_id"]], output_format="list")
    (model,) = models
    assert model.source_run_id == pretrain_id and model.tags["code_version"] == provenance.code_version()
    assert detect["tags.backbone_model_id"] == model.model_id
    metrics = {m.key: m.value for m in mlflow.get_logged_model(model.model_id).metrics}
    assert metrics["image_AUROC"] == pytest.approx(detect["metrics.image_AUROC"])
    assert {m.run_id for m in mlflow.get_logged_model(model.model_id).metrics} == {detect["run_id"]}

"""Bad input: a clear error naming the problem and the fix, and no MLflow run left RUNNING."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import TINY, compose_config, runs_of
from hydra.errors import ConfigCompositionException, MissingConfigException

from evaluation.datasets.layouts import DatasetError
from console.errors import EXIT_USER_ERROR, ConfigError, UserError
from detectors.backbone import BackboneError
from detectors.imagenet_offline import OfflineWeightsError
from pipeline.job import run_pipeline
from run import ROOT


def failed_runs(cfg, error, match, stages: int = 1):
    with pytest.raises(error, match=match):
        run_pipeline(cfg)
    runs = runs_of(cfg.mlflow.tracking_uri)
    assert len(runs) >= 1 + stages, "the parent and the failing stage run were both opened"
    assert set(runs["status"]) <= {"FAILED", "FINISHED"}
    return runs


def test_unknown_detector_is_rejected_at_composition_with_the_valid_names(tmp_path):
    with pytest.raises((MissingConfigException, ConfigCompositionException)) as err:
        compose_config(tmp_path, "detector=patchkore")
    assert "patchkore" in str(err.value) and "patchcore" in str(err.value)


def test_missing_dataset_root_fails_before_any_pretraining(tiny_config, tmp_path):
    """The dataset is checked first: a wrong root costs no fractal generation or pre-training."""
    cfg = tiny_config("backbone=fractal", "dataset=mvtec", f"dataset.root={tmp_path}/nowhere")
    runs = failed_runs(cfg, DatasetError, "dataset.root", stages=0)
    assert list(runs["tags.stage"]) == ["pipeline"] and list(runs["status"]) == ["FAILED"]
    assert not (tmp_path / "job" / "fractals").exists() and not (tmp_path / "job" / "detect").exists()


def test_unknown_category_lists_the_valid_ones(tiny_config):
    runs = failed_runs(tiny_config("backbone=random", "dataset.category=carpet"), DatasetError, "weave", stages=0)
    assert set(runs["status"]) == {"FAILED"}


def test_invalid_stage_settings_fail_before_anything_starts(tiny_config, tmp_path):
    """Each stage's settings are checked when its spec is made, before the first stage: no run opened,
    no folder written, whichever stage they belong to."""
    for i, (setting, match) in enumerate((("fractal.render.size=-1", "render size"),
                                          ("pretrain.batch_size=0", "pretrain.batch_size"),
                                          ("pretrain.objective.name=mae", "unknown pretrain objective"))):
        cfg = tiny_config(setting, out_dir=tmp_path / str(i))
        with pytest.raises(ValueError, match=match):
            run_pipeline(cfg)
        assert not (tmp_path / str(i)).exists(), setting


def test_invalid_detector_input_size_is_named(tiny_config):
    failed_runs(tiny_config("backbone=random", "dataset.image_size=-5"), ConfigError, "dataset.image_size", stages=0)


def test_missing_imagenet_weights_fail_fast_and_say_how_to_provide_them(tiny_config):
    cfg = tiny_config("+experiment=imagenet_patchcore")
    with pytest.raises(BackboneError) as err:
        run_pipeline(cfg)
    message = str(err.value)
    assert "resnet18" in message and "backbone.weights" in message and "allow_download" in message
    runs = runs_of(cfg.mlflow.tracking_uri)
    assert sorted(runs["tags.stage"]) == ["detect", "pipeline"]  # no fractal stages for imagenet
    assert set(runs["status"]) == {"FAILED"}


def test_incompatible_weights_are_named(tiny_config, tmp_path):
    import timm

    export = tmp_path / "export"
    timm.models.save_for_hf(timm.create_model("resnet34", num_classes=2), str(export), safe_serialization=True)
    with pytest.raises(BackboneError, match="incompatible weights.*resnet34"):
        run_pipeline(tiny_config(f"backbone.weights={export}", "stages=[detect]"))


def test_layers_absent_from_the_backbone_are_named(tiny_config):
    with pytest.raises(ConfigError, match="layer9.*feature layers are"):
        run_pipeline(tiny_config("backbone=random", "detector.model.layers=[layer2,layer9]"))


def test_negative_seed_is_refused_before_any_run_opens(tiny_config, tmp_path):
    with pytest.raises(ConfigError, match="seed must be a non-negative integer"):
        run_pipeline(tiny_config("seed=-3"))
    assert not (tmp_path / "mlflow.db").exists()


def test_the_errors_a_user_can_fix_share_one_base_class(tiny_config):
    # run.py prints these as a short block instead of a traceback; existing `except ValueError` code
    # still catches the ones that were ValueErrors
    for error in (DatasetError, BackboneError, OfflineWeightsError, ConfigError):
        assert issubclass(error, UserError)
    assert issubclass(ConfigError, ValueError) and issubclass(DatasetError, ValueError)
    with pytest.raises(ConfigError, match="pretrain.batch_size"):
        run_pipeline(tiny_config("pretrain.batch_size=7", "trainer.devices=2", "stages=[generate,pretrain]"))
    with pytest.raises(ConfigError, match="fractal.num_classes"):
        run_pipeline(tiny_config("fractal.num_classes=1"))
    with pytest.raises(ConfigError, match="EfficientAd cannot take a swappable backbone"):
        run_pipeline(tiny_config("backbone=random", "detector.model._target_=anomalib.models.EfficientAd"))


def run_py(*args: str, cwd, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd, env={**environ, **env},
                          capture_output=True, text=True, timeout=600)


MISSING_MVTEC = ("dataset=mvtec", "dataset.root=/nonexistent", "backbone=random", *TINY)


@pytest.mark.slow
def test_user_error_prints_one_block_and_no_traceback(tmp_path):
    proc = run_py(*MISSING_MVTEC, f"paths.outputs_dir={tmp_path}", cwd=tmp_path)
    console = proc.stdout + proc.stderr
    assert proc.returncode == EXIT_USER_ERROR
    assert "Traceback" not in console and "Error executing job" not in console
    block = proc.stderr.strip().splitlines()
    assert block[0] == "Error (DatasetError):" and len(block) <= 8, proc.stderr
    # what is wrong, the key to change, and where to get the data
    assert "/nonexistent does not exist" in proc.stderr and "dataset.root=" in proc.stderr
    assert "Download MVTec AD" in proc.stderr
    runs = runs_of(f"sqlite:///{tmp_path}/mlflow.db")
    assert list(runs["tags.stage"]) == ["pipeline"] and set(runs["status"]) == {"FAILED"}  # checked before any stage
    # the traceback is kept in the run's log file
    (log_file,) = tmp_path.glob("runs/*/run.log")
    assert "Traceback" in log_file.read_text() and "DatasetError" in log_file.read_text()


@pytest.mark.slow
def test_hydra_full_error_still_shows_the_traceback(tmp_path):
    proc = run_py(*MISSING_MVTEC, f"paths.outputs_dir={tmp_path}", cwd=tmp_path, HYDRA_FULL_ERROR="1")
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "evaluation.datasets.layouts.DatasetError: Dataset root /nonexistent" in proc.stderr
    assert set(runs_of(f"sqlite:///{tmp_path}/mlflow.db")["status"]) == {"FAILED"}


@pytest.mark.slow
def test_a_programming_error_keeps_its_traceback(tmp_path):
    # an argument anomalib's model does not take: nothing we anticipated, so it is reported as a bug
    proc = run_py("backbone=random", "+detector.model.no_such_argument=1", *TINY,
                  f"paths.outputs_dir={tmp_path}", cwd=tmp_path)
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "TypeError" in proc.stderr and "no_such_argument" in proc.stderr
    assert not proc.stderr.startswith("Error (")
    assert set(runs_of(f"sqlite:///{tmp_path}/mlflow.db")["status"]) == {"FAILED"}

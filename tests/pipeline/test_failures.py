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
from fractal_pretrain.export import ExportError, read_export, write_export
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
    with pytest.raises(ExportError, match="incompatible weights.*resnet34"):
        run_pipeline(tiny_config(f"backbone.weights={export}", "stages=[detect]"))


def test_an_export_cut_short_is_named_with_the_fix(tiny_config, tmp_path):
    """A backbone export whose weights file was cut short (an interrupted copy) is a user error that
    says so, not safetensors' traceback; the detect run ends FAILED. The whole file loads."""
    import timm

    cfg = tiny_config(f"backbone.weights={tmp_path / 'export'}", "stages=[detect]")
    export = write_export(timm.create_model(cfg.backbone.arch), tmp_path / "export", [0.2] * 3, [0.5] * 3, {})
    whole = (export / "model.safetensors").read_bytes()
    read_export(export, cfg.backbone.arch)  # complete: accepted
    (export / "model.safetensors").write_bytes(whole[: len(whole) // 2])
    runs = failed_runs(cfg, ExportError, r"model.safetensors is cut short: .* bytes where its header describes "
                                         r".*interrupted copy.*Copy the export again")
    assert set(runs["status"]) == {"FAILED"}
    (export / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ExportError, match="not a readable safetensors file"):
        read_export(export, cfg.backbone.arch)


def test_an_outputs_folder_that_cannot_be_made_is_a_user_error(tmp_path, capsys):
    """paths.outputs_dir where no folder can be made: the one-block message and exit 2, checked by
    the first Hydra callback before Hydra makes a job folder."""
    from pipeline.launch import CheckOutputs

    (tmp_path / "a_file").write_text("")
    with pytest.raises(SystemExit) as exit_:
        CheckOutputs(str(tmp_path / "a_file" / "outputs")).on_run_start(None)
    assert exit_.value.code == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.startswith("Error (ConfigError):") and "paths.outputs_dir=" in err and "cannot be made" in err
    CheckOutputs(str(tmp_path / "fine" / "outputs")).on_multirun_start(None)  # makes it, says nothing
    assert (tmp_path / "fine" / "outputs").is_dir() and not capsys.readouterr().err


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
def test_outputs_folder_error_from_the_command_line(tmp_path):
    (tmp_path / "a_file").write_text("")
    proc = run_py(*TINY, f"paths.outputs_dir={tmp_path}/a_file/outputs", cwd=tmp_path)
    assert proc.returncode == EXIT_USER_ERROR and "Traceback" not in proc.stdout + proc.stderr
    assert proc.stderr.startswith("Error (ConfigError):") and "paths.outputs_dir=" in proc.stderr


@pytest.mark.slow
def test_hydra_full_error_still_shows_the_traceback(tmp_path):
    proc = run_py(*MISSING_MVTEC, f"paths.outputs_dir={tmp_path}", cwd=tmp_path, HYDRA_FULL_ERROR="1")
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and f"{DatasetError.__module__}.DatasetError: Dataset root /nonexistent" in proc.stderr
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

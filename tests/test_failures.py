"""Bad input: a clear error naming the problem and the fix, and no MLflow run left RUNNING."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException

from conftest import compose_config, runs_of
from detectors.backbone import BackboneError
from evaluation.datasets import DatasetError
from run import run_pipeline


def failed_runs(cfg, error, match):
    with pytest.raises(error, match=match):
        run_pipeline(cfg)
    runs = runs_of(cfg.mlflow.tracking_uri)
    assert len(runs) >= 2, "the parent and the failing stage run were both opened"
    assert set(runs["status"]) <= {"FAILED", "FINISHED"}
    return runs


def test_unknown_detector_is_rejected_at_composition_with_the_valid_names(tmp_path):
    with pytest.raises((MissingConfigException, ConfigCompositionException)) as err:
        compose_config(tmp_path, "detector=patchkore")
    assert "patchkore" in str(err.value) and "patchcore" in str(err.value)


def test_missing_dataset_root_fails_the_detect_run(tiny_config, tmp_path):
    cfg = tiny_config("backbone=random", "dataset=mvtec", f"dataset.root={tmp_path}/nowhere")
    runs = failed_runs(cfg, DatasetError, "dataset.root")
    detect = runs[runs["tags.stage"] == "detect"]
    assert list(detect["status"]) == ["FAILED"]
    assert list(runs[runs["tags.stage"] == "pipeline"]["status"]) == ["FAILED"]
    assert not (tmp_path / "job" / "detect" / "metrics.csv").exists()


def test_unknown_category_lists_the_valid_ones(tiny_config):
    runs = failed_runs(tiny_config("backbone=random", "dataset.category=carpet"), DatasetError, "weave")
    assert set(runs["status"]) == {"FAILED"}


def test_invalid_render_size_fails_the_generate_run(tiny_config):
    runs = failed_runs(tiny_config("fractal.render.size=-1"), ValueError, "render size")
    assert list(runs[runs["tags.stage"] == "generate"]["status"]) == ["FAILED"]
    assert "pretrain" not in set(runs["tags.stage"])


def test_invalid_detector_input_size_is_named(tiny_config):
    failed_runs(tiny_config("backbone=random", "dataset.image_size=-5"), ValueError, "dataset.image_size")


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
    with pytest.raises(ValueError, match="layer9.*feature layers are"):
        run_pipeline(tiny_config("backbone=random", "detector.model.layers=[layer2,layer9]"))


def test_negative_seed_is_refused_before_any_run_opens(tiny_config, tmp_path):
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        run_pipeline(tiny_config("seed=-3"))
    assert not (tmp_path / "mlflow.db").exists()

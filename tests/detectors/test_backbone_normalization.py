"""``backbone.normalization=trained`` reads the input statistics from the export; an export without
them is an error that names the export, the missing key and the fixes, never a silent switch to
ImageNet's statistics."""

from __future__ import annotations

import json

import pytest
import timm
from conftest import runs_of

from detectors.backbone import IMAGENET_MEAN, IMAGENET_STD, BackboneError, resolve_backbone
from pipeline.job import run_pipeline


def export_without(tmp_path, *keys: str):
    """A timm export (trained statistics 0.2/0.5) whose config.json lacks ``keys`` of its pretrained_cfg,
    as an export written by hand or by another tool may."""
    export = tmp_path / "export"
    timm.models.save_for_hf(timm.create_model("resnet18", num_classes=2), export, safe_serialization=True,
                            model_config={"pretrained_cfg": {"mean": [0.2] * 3, "std": [0.5] * 3}})
    config = json.loads((export / "config.json").read_text())
    for key in keys:
        del config["pretrained_cfg"][key]
    (export / "config.json").write_text(json.dumps(config))
    return export


@pytest.mark.parametrize("source", ["fractal", "imagenet"])
@pytest.mark.parametrize("keys", [("mean", "std"), ("std",)])
def test_trained_normalization_of_an_export_without_statistics_is_an_error_that_says_the_fixes(keys, source, tmp_path):
    export = export_without(tmp_path, *keys)
    with pytest.raises(BackboneError) as err:
        resolve_backbone(source, "resnet18", "trained", export)
    message = str(err.value)
    assert str(export) in message and f"pretrained_cfg.{keys[0]}" in message
    assert "Re-export" in message and "backbone.normalization=imagenet" in message
    # the same export with its statistics present resolves to them
    assert resolve_backbone(source, "resnet18", "trained", export_without(tmp_path / "whole")).mean == (0.2,) * 3


def test_imagenet_normalization_takes_an_export_without_statistics(tmp_path):
    backbone = resolve_backbone("fractal", "resnet18", "imagenet", export_without(tmp_path, "mean", "std"))
    assert (backbone.mean, backbone.std) == (IMAGENET_MEAN, IMAGENET_STD)


def test_the_pipeline_fails_before_building_a_detector(tiny_config, tmp_path):
    """Through run_pipeline: the detect run ends FAILED, and nothing of a detector was written."""
    cfg = tiny_config(f"backbone.weights={export_without(tmp_path, 'mean')}", "stages=[detect]")
    with pytest.raises(BackboneError, match="pretrained_cfg.mean"):
        run_pipeline(cfg)
    runs = runs_of(cfg.mlflow.tracking_uri)
    assert sorted(runs["tags.stage"]) == ["detect", "pipeline"] and set(runs["status"]) == {"FAILED"}
    assert not (tmp_path / "job" / "detect").exists()

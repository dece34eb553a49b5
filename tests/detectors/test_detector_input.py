"""The detector input of the study experiments: centre-cropped only where the study's detector cropped."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import CONF_DIR, compose_config

from pipeline.detect import PreparedDataset, detect_spec



def detector_crop(cfg):
    """The centre crop the detect stage gives the detector's input."""
    return cfg.dataset.crop if detect_spec(cfg).center_crop else None


DETECTORS = sorted(p.stem for p in Path(CONF_DIR, "detector").glob("*.yaml"))


@pytest.mark.parametrize("experiment", ["study_mvtec", "study_visa"])
def test_only_patchcore_crops_in_the_study_experiments(experiment, tmp_path):
    """anomalib v1 (the study's) resized every detector's input to 256 and centre-cropped it to 224
    for PatchCore alone (its own transform); the other detectors saw the whole 256 px image."""
    crops = {name: detector_crop(compose_config(tmp_path, f"+experiment={experiment}", f"detector={name}"))
             for name in DETECTORS}
    assert crops == {name: 224 if name == "patchcore" else None for name in DETECTORS}


def test_builtin_runs_crop_nothing(tmp_path):
    assert detector_crop(compose_config(tmp_path, "detector=patchcore")) is None


def test_cflow_and_reverse_distillation_keep_the_studys_batches_and_stopping(tmp_path, monkeypatch):
    """fractal4AD's configs: CFlow batches 16/16, early stopping after 2 epochs; RD train batch 16, all
    200 epochs (no early stopping). The detect stage hands the batch sizes to the datamodule."""
    import pipeline.detect as pipeline_detect
    from detectors.backbone import IMAGENET_MEAN, IMAGENET_STD, Backbone

    for name, patience in (("cflow", 2), ("reverse_distillation", None)):
        cfg = compose_config(tmp_path, "+experiment=study_mvtec", f"detector={name}")
        assert cfg.detector.selection.patience == patience and cfg.detector.max_epochs == (50 if name == "cflow" else 200)

    seen = {}

    def instantiate(config, **kwargs):  # the datamodule's arguments are all this test needs
        seen.update(kwargs)
        raise RuntimeError("stop")

    monkeypatch.setattr(pipeline_detect.hydra.utils, "instantiate", instantiate)
    backbone = Backbone("random", "resnet18", "resnet18", False, IMAGENET_MEAN, IMAGENET_STD, "random init")
    for name, batches in (("cflow", {"train_batch_size": 16, "eval_batch_size": 16}),
                          ("reverse_distillation", {"train_batch_size": 16})):
        seen.clear()
        cfg = compose_config(tmp_path, "+experiment=study_mvtec", f"detector={name}", "backbone=random",
                             "backbone.arch=resnet18")
        with pytest.raises(RuntimeError, match="stop"):
            pipeline_detect.detect(detect_spec(cfg), backbone, PreparedDataset(
                "mvtec", "bottle", tmp_path, tmp_path, 256, 224, True, None, {}), tmp_path / name)
        assert {k: v for k, v in seen.items() if k.endswith("batch_size")} == batches

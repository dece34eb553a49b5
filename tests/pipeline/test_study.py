"""The study on the built-in data: efficientnet_lite0 as fractal / ImageNet / random backbone.

Fast tests check the experiment's grid and that efficientnet_lite0 goes everywhere a backbone goes
(fractal pre-training and export; every detector: tests/test_detectors.py). The slow one runs the experiment as a
user types it, on one category and PatchCore, and checks the study's floor: ImageNet weights beat
random weights on image AUROC.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import timm
from conftest import CONF_DIR, compose_config
from hydra import compose, initialize_config_dir

from detectors.layers import feature_layers, resolve_layers
from pipeline.detect import backbone_from_config
from pipeline.job import run_pipeline

ROOT = Path(__file__).resolve().parents[2]
ARCH = "tf_efficientnet_lite0"  # the offline ImageNet weights' architecture, shared by every arm
DETECTORS = sorted(p.stem for p in Path(CONF_DIR, "detector").glob("*.yaml"))
# efficientnet_lite0's feature layers by stride; ResNet's layerN plays the stride-2**(N+1) role
LITE0_STAGES = {"layer1": "blocks.1", "layer2": "blocks.2", "layer3": "blocks.4", "layer4": "blocks.6"}


def study_config(tmp_path: Path, *overrides: str, hydra_cfg: bool = False):
    paths = [f"paths.outputs_dir={tmp_path}", f"paths.output_dir={tmp_path}/job"]
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        return compose("config", overrides=["+experiment=study_builtin", *paths, *overrides],
                       return_hydra_config=hydra_cfg)


def test_study_grid_is_three_backbones_two_detectors_every_category(tmp_path):
    cfg = study_config(tmp_path, hydra_cfg=True)
    params = cfg.hydra.sweeper.params
    assert params.backbone.split(",") == ["fractal", "imagenet_offline", "random"]
    assert params.detector.split(",") == ["patchcore", "padim"]
    assert params["dataset.category"].split(",") == ["weave", "tiles", "washer"]
    assert cfg.hydra.callbacks.imagenet_weights.export_dir == f"{tmp_path}/weights/tf_efficientnet_lite0_imagenet"


# one detect-time normalisation rule: the statistics the weights were trained with (random init: ImageNet's)
RULE = {"fractal": "trained", "imagenet_offline": "trained", "imagenet": "trained", "random": "imagenet"}


@pytest.mark.parametrize("experiment", ["compare_builtin", "study_builtin", "study_mvtec", "study_visa"])
def test_every_study_experiment_feeds_fractal_backbones_the_same_normalisation(experiment, tmp_path):
    from conftest import CONF_DIR
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        for backbone in ("fractal", "random"):
            cfg = compose("config", overrides=[f"+experiment={experiment}", f"backbone={backbone}",
                                               f"paths.outputs_dir={tmp_path}", f"paths.output_dir={tmp_path}/job"])
            assert cfg.backbone.normalization == RULE[backbone], (experiment, backbone)


@pytest.mark.parametrize("backbone", ["fractal", "imagenet_offline", "random"])
@pytest.mark.parametrize("detector", ["patchcore", "padim"])
def test_every_job_of_the_grid_uses_efficientnet_lite0(backbone, detector, tmp_path):
    cfg = study_config(tmp_path, f"backbone={backbone}", f"detector={detector}")
    assert cfg.backbone.arch == ARCH
    assert cfg.backbone.normalization == RULE[backbone]  # each source gets the statistics it was trained with
    assert resolve_layers(ARCH, cfg.detector.model.layers) == [LITE0_STAGES[x] for x in cfg.detector.model.layers]
    if backbone == "imagenet_offline":
        assert cfg.backbone.weights == f"{tmp_path}/weights/tf_efficientnet_lite0_imagenet"


def test_efficientnet_lite0_stages_are_mapped_by_stride():
    by_name = {f.name: f.reduction for f in feature_layers(ARCH)}
    assert sorted(by_name) == ["blocks.0", "blocks.1", "blocks.2", "blocks.4", "blocks.6"]
    for resnet_name, lite0_name in LITE0_STAGES.items():
        assert resolve_layers(ARCH, [resnet_name]) == [lite0_name]
        assert by_name[lite0_name] == 2 ** (int(resnet_name[-1]) + 1)


def test_efficientnet_lite0_pretrains_on_fractals_and_its_export_loads(tmp_path):
    cfg = compose_config(tmp_path, f"backbone.arch={ARCH}", "stages=[generate,pretrain]")
    run_pipeline(cfg)
    export = tmp_path / "job/pretrain/backbone"
    meta = json.loads((export / "config.json").read_text())
    assert meta["architecture"] == ARCH and meta["pretrained_cfg"]["mean"] == [0.2] * 3
    backbone = backbone_from_config(compose_config(tmp_path, f"backbone.arch={ARCH}",
                                               f"backbone.weights={export}").backbone, None, tmp_path)
    assert backbone.mean == (0.2, 0.2, 0.2)
    features = timm.create_model(backbone.timm_name, pretrained=True, features_only=True)
    assert features.feature_info.module_name() == [f.name for f in feature_layers(ARCH)]


@pytest.mark.slow
def test_study_experiment_imagenet_beats_random_on_patchcore(tmp_path):
    """`python run.py -m +experiment=study_builtin` narrowed to PatchCore on `tiles`: three real jobs
    (fractal with a short pre-training, offline ImageNet, random init) on the default built-in data,
    then the sweep report. ImageNet must beat random init by a clear margin on image AUROC."""
    cmd = [sys.executable, str(ROOT / "run.py"), "-m", "+experiment=study_builtin", "detector=patchcore",
           "dataset.category=tiles", f"paths.outputs_dir={tmp_path}", "mlflow.system_metrics=false",
           "detector.log_images=0", "+debug=tiny_pretrain", "pretrain.max_steps=20"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (summary,) = list(tmp_path.glob("multirun/*/report/summary.csv"))
    table = pd.read_csv(summary).set_index("backbone")
    print("\n" + table[["detector", "image_AUROC_mean", "pixel_AUROC_mean", "pixel_AUPRO_mean"]].to_string())
    assert set(table.index) == {"fractal", "imagenet", "random"} and set(table["detector"]) == {"patchcore"}
    assert table.loc["imagenet", "image_AUROC_mean"] > table.loc["random", "image_AUROC_mean"] + 0.2
    assert table.loc["imagenet", "pixel_AUROC_mean"] > table.loc["random", "pixel_AUROC_mean"]
    assert (tmp_path / "weights/tf_efficientnet_lite0_imagenet/model.safetensors").is_file()

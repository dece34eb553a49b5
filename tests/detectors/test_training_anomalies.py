"""The detectors that train on synthetic anomalies (GLASS, SuperSimpleNet): nothing is downloaded,
GLASS's local anomalies are blended from the fractal training textures (a set apart from the
validation anomalies' textures), SuperSimpleNet reads no image at all, and GLASS's backbone stays
frozen with random weights too. Tiny: 64 px (96 for SuperSimpleNet), one epoch."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import TEXTURES, TRAINING_TEXTURES, compose_config, run_detect
from test_detectors import SMALL_DATA, TINY_MODEL, backbone_of

from evaluation.datasets.textures import TRAINING_SEED, VALIDATION_SEED


@pytest.fixture
def offline_and_reads(monkeypatch) -> list[Path]:
    """No network (any connection attempt raises), anomalib's DTD download raises, and every image
    that anomalib's Perlin anomaly generator reads is recorded, in order."""
    from anomalib.data.utils.generators import perlin
    from anomalib.models.image.glass import lightning_model

    def no_network(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(lightning_model, "download_and_extract", no_network)
    reads: list[Path] = []
    read_image = perlin.io.read_image

    def recording(path, *args, **kwargs):
        reads.append(Path(path))
        return read_image(path, *args, **kwargs)

    monkeypatch.setattr(perlin.io, "read_image", recording)
    return reads


def run(detector: str, tmp_path: Path, weights: str = "random", export: Path | None = None):
    cfg = compose_config(tmp_path, f"detector={detector}", "detector.max_epochs=1", *SMALL_DATA,
                         *TINY_MODEL.get(detector, []), data_dir=tmp_path / "data")
    return run_detect(cfg, backbone_of(weights, export or tmp_path), tmp_path / "detect")


def test_glass_blends_its_anomalies_from_the_fractal_training_textures_offline(tmp_path, offline_and_reads):
    record = run("glass", tmp_path)
    assert record.metrics["epochs_run"] == 1.0
    training = sorted(TRAINING_TEXTURES.glob("*.png"))
    validation = sorted(TEXTURES.glob("*.png"))
    # the folder is the pipeline's fractal textures of the training seed, 64 of them
    assert json.loads((TRAINING_TEXTURES / "textures.json").read_text())["seed"] == TRAINING_SEED != VALIDATION_SEED
    assert len(training) == 64
    # no training texture is a validation texture (the validation split selects GLASS's epoch)
    assert not {p.read_bytes() for p in training} & {p.read_bytes() for p in validation}
    # every image read for a synthetic anomaly is one of the two sets: the validation split's from
    # the validation textures, GLASS's training anomalies from the training textures, and only them
    assert offline_and_reads and {p.parent for p in offline_and_reads} == {TRAINING_TEXTURES, TEXTURES}
    drawn = [p for p in offline_and_reads if p.parent == TRAINING_TEXTURES]
    assert len(drawn) >= 9  # one texture per training image (9 of 12 normals; re-read if its mask came out empty)


def test_supersimplenet_reads_no_texture_and_downloads_nothing(tmp_path, offline_and_reads):
    """Its anomalies are Gaussian noise in Perlin masks on features: the only images the Perlin
    generator reads are the validation split's textures."""
    record = run("supersimplenet", tmp_path)
    assert record.metrics["epochs_run"] == 1.0
    assert offline_and_reads and {p.parent for p in offline_and_reads} == {TEXTURES}


def test_anomalibs_own_classes_are_refused_for_the_adapters(tmp_path):
    from pipeline.detect import build_from_config

    for name in ("Glass", "Supersimplenet"):
        with pytest.raises(ValueError, match=f"anomalib's {name} cannot take our backbone as it is.*adapters"):
            build_from_config({"_target_": f"anomalib.models.{name}", "layers": ["layer2"]},
                              backbone_of("random", tmp_path))


def test_glass_keeps_a_random_backbone_frozen(tmp_path):
    """anomalib's GLASS reads ``pre_trained=False`` as "train the backbone" (training mode, gradients,
    an optimiser of its own); our random arm is a frozen random backbone, as in every detector: a
    training step leaves its weights and batch-norm statistics as they were."""
    from anomalib.pre_processing import PreProcessor
    from torchvision.transforms.v2 import Compose, Normalize, Resize

    from pipeline.detect import build_from_config

    cfg = compose_config(tmp_path, "detector=glass")
    pre = PreProcessor(transform=Compose([Resize((64, 64)), Normalize([0.5] * 3, [0.25] * 3)]))
    torch.manual_seed(0)
    model = build_from_config(dict(cfg.detector.model), backbone_of("random", tmp_path), pre_processor=pre)
    extractor = model.model.forward_modules["feature_aggregator"]
    before = {k: v.clone() for k, v in extractor.state_dict().items()}
    images = torch.rand(2, 3, 64, 64)
    model.model.calculate_center([SimpleNamespace(image=images)], torch.device("cpu"))
    model.model.train()
    *_, loss = model.model(images)
    loss.backward()
    after = extractor.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # running means/vars included
    assert all(p.grad is None and not p.requires_grad for p in extractor.parameters())
    optimised = {id(p) for o in model.configure_optimizers() for g in o.param_groups for p in g["params"]}
    assert not optimised & {id(p) for p in extractor.parameters()}
    assert model.model.input_shape == (64, 64)  # from the pre-processor, not anomalib's 288
    # the pre-processor's statistics undo the normalisation before blending textures in [0, 1]
    assert model.model._img_mean.flatten().tolist() == [0.5] * 3


def test_supersimplenet_refuses_a_feature_map_too_small_for_anomalibs_perlin_noise(tmp_path):
    """At 64 px, layer2 (stride 8) upscaled x2 is 16 x 16: anomalib's Perlin noise then fails at
    random (a scale of 32 cells on 16 pixels), so the adapter refuses it up front, with the size to use."""
    from anomalib.pre_processing import PreProcessor
    from torchvision.transforms.v2 import Resize

    from pipeline.detect import build_from_config

    cfg = compose_config(tmp_path, "detector=supersimplenet")
    with pytest.raises(ValueError, match=r"16 cells.*at least 65 px"):
        build_from_config(dict(cfg.detector.model), backbone_of("random", tmp_path),
                          pre_processor=PreProcessor(transform=Resize((64, 64))))
    build_from_config(dict(cfg.detector.model), backbone_of("random", tmp_path),
                      pre_processor=PreProcessor(transform=Resize((72, 72))))

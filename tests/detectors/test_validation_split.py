"""The validation split that selects (recipes, sweeper objective, normalisation rule): held out of the
fit that is validated, paired normals and anomalies, and the same split for seed 0 whatever ran before."""

from __future__ import annotations

import random
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import compose_config, run_detect
from PIL import Image
from sklearn.metrics import roc_auc_score

import pipeline.detect as pipeline_detect
from evaluation.datasets.builtin import make_builtin_dataset
from evaluation.datasets.datamodules import Builtin
from detectors.backbone import IMAGENET_MEAN, IMAGENET_STD, Backbone
from evaluation.datasets.textures import write_fractal_textures
from detectors.fit import split_seed, synthetic_anomalies_from, validation_draws_apart

SMALL_DATA = ["dataset.builtin.image_size=64", "dataset.builtin.n_train=12", "dataset.builtin.n_test_good=3",
              "dataset.builtin.n_test_defect=1", "dataset.datamodule.val_split_ratio=0.25"]


def split_after(root: Path, seed: int, earlier_draws: int, textures: Path, apart: bool = True) -> list:
    """The synthetic validation split of the built-in ``weave`` for datamodule seed ``seed`` (as the
    detect stage makes it, or ``apart=False``: anomalib's alone), after ``earlier_draws`` draws from
    the global torch, numpy and python streams (what ran before in the process): every validation
    image's path and pixels, in path order."""
    datamodule = Builtin(root=root, category="weave", num_workers=0, val_split_mode="synthetic",
                         val_split_ratio=0.25, seed=seed)
    synthetic_anomalies_from(datamodule, textures)
    if apart:
        validation_draws_apart(datamodule)
    L.seed_everything(0)
    torch.rand(earlier_draws), np.random.rand(earlier_draws), [random.random() for _ in range(earlier_draws)]
    datamodule.setup()
    paths = sorted(datamodule.val_data.samples.image_path)
    return [(Path(p).name, np.asarray(Image.open(p))) for p in paths]


def same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(x[0] == y[0] and np.array_equal(x[1], y[1]) for x, y in zip(a, b))


def test_seed_0_split_is_the_same_whatever_was_drawn_before(tmp_path):
    root = make_builtin_dataset(tmp_path / "data", image_size=32, n_train=12, n_test_good=1, n_test_defect=1)
    textures = write_fractal_textures(tmp_path / "textures", count=4, size=32)
    assert split_seed(0) != 0 and len({split_seed(s) for s in range(1000)}) == 1000
    assert same(split_after(root, split_seed(0), 1, textures), split_after(root, split_seed(0), 7, textures))
    # anomalib alone: which normals become anomalies, and the anomalies, follow the global streams
    assert not same(split_after(root, split_seed(0), 1, textures, apart=False),
                    split_after(root, split_seed(0), 7, textures, apart=False))


def spy_on_models(monkeypatch) -> list:
    """Every detector the detect stage builds, recording the images it is fitted on, its validation
    images, labels and raw scores (per validation pass) and its test scores."""
    built, build = [], pipeline_detect.build_from_config

    def building(*args, **kwargs):
        model = build(*args, **kwargs)
        model.fit_paths, model.val_passes, model.test_scores = [], [], {}
        train_step, val_step, test_step_of_model = model.training_step, model.validation_step, model.test_step

        def training_step(batch, *a, **k):
            model.fit_paths += list(batch.image_path)
            return train_step(batch, *a, **k)

        def validation_step(batch, batch_idx, *a, **k):
            out = val_step(batch, batch_idx, *a, **k)
            if batch_idx == 0:
                model.val_passes.append([])
            model.val_passes[-1] += zip(out.image_path, out.gt_label.tolist(), out.pred_score.tolist())
            return out

        def test_step(batch, *a, **k):
            out = test_step_of_model(batch, *a, **k)
            model.test_scores.update(zip(out.image_path, out.pred_score.tolist()))
            return out

        model.training_step, model.validation_step, model.test_step = training_step, validation_step, test_step
        built.append(model)
        return model

    monkeypatch.setattr(pipeline_detect, "build_from_config", building)
    return built


def test_validation_metrics_come_from_a_fit_without_the_validation_normals(tmp_path, monkeypatch):
    """PatchCore (training-free): the model whose validation metrics are logged never saw a validation
    normal; the tested model is the same seeded model fitted on every training normal; every
    validation normal has its synthetic anomalous copy in the split; the counts are logged."""
    cfg = compose_config(tmp_path, "detector=patchcore", *SMALL_DATA, data_dir=tmp_path / "data")
    built = spy_on_models(monkeypatch)
    backbone = Backbone("random", "resnet18", "resnet18", False, IMAGENET_MEAN, IMAGENET_STD, "random init")
    record = run_detect(cfg, backbone, tmp_path / "detect")
    m = record.metrics

    held_out, tested = built  # built twice: validated without the validation normals, then refitted
    train_dir = Path(cfg.dataset.root) / cfg.dataset.category / "train" / "good"
    normals = {str(p) for p in train_dir.glob("*.png")}
    val = held_out.val_passes[-1]  # the validation pass whose metrics are logged
    val_normals = {p for p, label, _ in val if label == 0}
    assert len(val_normals) == 3 and sum(label for _, label, _ in val) == 3  # 25% of 12, each paired
    assert m["val_normals"] == 3 and m["val_anomalies"] == 3 and m["val_images"] == 6

    assert not set(held_out.fit_paths) & val_normals and set(held_out.fit_paths) | val_normals == normals
    assert m["val_fit_images"] == 9 and m["fit_images"] == 12
    assert m["val_image_AUROC"] == pytest.approx(
        roc_auc_score([label for _, label, _ in val], [score for *_, score in val]), abs=1e-6)

    assert sorted(tested.fit_paths) == sorted(normals)  # the study's protocol for the test metrics
    assert [p for p, *_ in tested.val_passes[-1]] == [p for p, *_ in val]  # same split, same anomalies
    rows = pd.read_csv(record.predictions_csv)
    scores = {str(Path(cfg.dataset.root) / p): s for p, s in zip(rows.image_path, rows.score)}
    assert scores.keys() == tested.test_scores.keys()
    assert np.allclose([scores[p] for p in scores], [tested.test_scores[p] for p in scores])
    # the refit is the same model again: the same (random-init) backbone weights
    for a, b in zip(held_out.model.feature_extractor.state_dict().values(),
                    tested.model.feature_extractor.state_dict().values(), strict=True):
        assert torch.equal(a, b)

"""A trained detector's checkpoint, reloaded, scores the test images exactly as the run reported them:
raw, not min-max normalised and clamped. anomalib 2.7 keeps the post-processor's settings in the
checkpoint (``checkpoint_config``) and its thresholds and statistics as buffers; the class itself is
not kept, which is what this file pins down for ``evaluation.metrics.RawScorePostProcessor``."""

from __future__ import annotations

from pathlib import Path

import hydra
import pandas as pd
import pytest
import torch
from anomalib.engine import Engine
from anomalib.pre_processing import PreProcessor
from conftest import compose_config, datamodule_of, run_detect
from lightning.pytorch.callbacks import Callback

from detectors.backbone import IMAGENET_MEAN, IMAGENET_STD, Backbone
from detectors.fit import input_transform
from evaluation.metrics import RawScorePostProcessor, study_evaluator
from pipeline.detect import build_from_config, detect_spec

# tests/test_detectors.py's miniature: 64 px, 10 training normals + 2 for validation, 5 test images
SMALL_DATA = ["dataset.builtin.image_size=64", "dataset.builtin.n_train=12", "dataset.builtin.n_test_good=3",
              "dataset.builtin.n_test_defect=2"]
# a reload tests the selected weights only: the callbacks that chose them are not needed again
pytestmark = pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`, callbacks used to create")
RANDOM = Backbone("random", "resnet18", "resnet18", False, IMAGENET_MEAN, IMAGENET_STD, "random init")


class Scores(Callback):
    """What ``Engine.test`` ends with per image. It keeps the batches themselves: anomalib's
    post-processor and evaluator act on them after this callback, so reading them once the test
    is over sees the scores the evaluator saw."""

    def __init__(self) -> None:
        self.batches = []

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.batches.append(outputs)

    def by_image(self, field: str) -> pd.Series:
        rows = {str(p): float(v) for b in self.batches for p, v in zip(b.image_path, getattr(b, field).flatten())}
        return pd.Series(rows).sort_index()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """STFPM trained for one epoch by the detect stage: its config, selected checkpoint and record.
    Its own miniature (not the session's data_dir, whose built-in dataset has other sizes)."""
    out = tmp_path_factory.mktemp("stfpm")
    cfg = compose_config(out, "detector=stfpm", "detector.max_epochs=1", *SMALL_DATA,
                         data_dir=tmp_path_factory.mktemp("data"))
    record = run_detect(cfg, RANDOM, out / "detect")
    (checkpoint,) = (out / "detect" / "weights").glob("best-epoch=0*.ckpt")
    return cfg, checkpoint, record


def reload_and_test(cfg, model, checkpoint: Path) -> tuple[Scores, dict]:
    """``Engine.test(ckpt_path=...)`` on ``model``, as the detect stage tests its selected epoch."""
    scores = Scores()
    engine = Engine(accelerator="cpu", devices=1, logger=False, callbacks=[scores],
                    default_root_dir=checkpoint.parent.parent / "reload")
    datamodule = datamodule_of(cfg, cfg.seed)
    (metrics,) = engine.test(model=model, datamodule=datamodule, ckpt_path=checkpoint, verbose=False)
    return scores, metrics


def reported_scores(cfg, record) -> pd.Series:
    """The raw scores the run reported (predictions.csv), by absolute image path."""
    rows = pd.read_csv(record.predictions_csv)
    return pd.Series(rows.score.values, index=[str(Path(cfg.dataset.root) / p) for p in rows.image_path]).sort_index()


def pre_processor(cfg) -> PreProcessor:
    d = cfg.dataset
    return PreProcessor(transform=input_transform(d.image_size, d.get("crop"), RANDOM.mean, RANDOM.std))


def saved_statistics(checkpoint: Path) -> dict[str, float]:
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    return {k.removeprefix("post_processor."): float(v) for k, v in state.items() if k.startswith("post_processor.")}


def normalised(raw: pd.Series, s: dict[str, float]) -> pd.Series:
    """anomalib's test-time normalisation, written out: min-max with the validation statistics,
    centred on the threshold, clamped to [0, 1]."""
    return ((raw - s["_image_threshold"]) / (s["image_max"] - s["image_min"]) + 0.5).clip(0, 1)


def test_a_fresh_detector_tested_from_the_checkpoint_reports_the_runs_raw_scores(trained):
    """The detect stage's route (``Engine.test(ckpt_path=...)``) on a detector built anew, as another
    process would: same scores, thresholds and metrics as the run, every score raw."""
    cfg, checkpoint, record = trained
    model = build_from_config(detect_spec(cfg).model, RANDOM, pre_processor=pre_processor(cfg),
                              post_processor=RawScorePostProcessor(), visualizer=False,
                              evaluator=study_evaluator(cfg.detector.aupro_fpr_limit))
    assert torch.isnan(model.post_processor.image_threshold)  # nothing fitted before the reload
    scores, metrics = reload_and_test(cfg, model, checkpoint)
    raw = reported_scores(cfg, record)
    pd.testing.assert_series_equal(scores.by_image("pred_score"), raw, check_exact=False, atol=1e-6, rtol=0)
    saved = saved_statistics(checkpoint)
    assert float(model.post_processor.image_threshold) == saved["_image_threshold"]
    assert (scores.by_image("pred_label") == (raw > saved["_image_threshold"])).all()
    # normalised scores would fail the equality above (atol 1e-6): it tells raw from normalised
    assert (normalised(raw, saved) - raw).abs().max() > 0.01
    for key in ("image_AUROC", "image_F1Score", "pixel_AUROC", "pixel_AUPRO"):
        assert metrics[key] == pytest.approx(record.metrics[key], abs=1e-6), key


@pytest.mark.slow  # the project reloads through Engine.test(ckpt_path=...) only (above)
def test_load_from_checkpoint_keeps_raw_scores_only_when_given_the_post_processor(trained):
    """``Model.load_from_checkpoint`` rebuilds the components from the model's defaults (the checkpoint
    holds their settings and buffers, not their classes): with ``post_processor=RawScorePostProcessor()``
    the reloaded model scores as the run did; without it, anomalib's default post-processor returns
    the scores min-max normalised with the checkpoint's statistics and clamped to [0, 1].
    The adapter's own arguments are passed too (its checkpoint holds no hyper-parameters), and the
    evaluator, which anomalib never rebuilds from a checkpoint."""
    cfg, checkpoint, record = trained
    raw = reported_scores(cfg, record)
    cls = hydra.utils.get_class(cfg.detector.model._target_)
    args = {"backbone": RANDOM.timm_name, "arch": RANDOM.arch, "pre_trained": False,
            "layers": list(cfg.detector.model.layers), "visualizer": False,
            "evaluator": study_evaluator(cfg.detector.aupro_fpr_limit)}  # (its AUPRO buffer is in the state)
    model = cls.load_from_checkpoint(checkpoint, **args, post_processor=RawScorePostProcessor())
    assert type(model.post_processor) is RawScorePostProcessor
    scores, _ = reload_and_test(cfg, model, checkpoint)  # (the input transform came back from the checkpoint)
    pd.testing.assert_series_equal(scores.by_image("pred_score"), raw, check_exact=False, atol=1e-6, rtol=0)

    default = cls.load_from_checkpoint(checkpoint, **args)
    scores, _ = reload_and_test(cfg, default, checkpoint)
    expected = normalised(raw, saved_statistics(checkpoint))
    pd.testing.assert_series_equal(scores.by_image("pred_score"), expected, check_exact=False, atol=1e-6, rtol=0)

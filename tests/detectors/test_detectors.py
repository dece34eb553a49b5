"""Every supported anomalib detector, fitted and evaluated for real on the built-in dataset (tiny).

CPU only, offline. Sizes: 64 px images, 12 training normals (9 train + 3 validation, each with its
synthetic anomalous copy), 9 test
images, one epoch; the study's settings are shrunk only where a tiny image forces it (flow depth,
CFlow's fiber batch, DFKDE's PCA size).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from conftest import CONF_DIR, compose_config, datamodule_of, run_detect

from detectors.backbone import IMAGENET_MEAN, IMAGENET_STD, Backbone
from detectors.layers import resolve_layers

DETECTORS = sorted(p.stem for p in Path(CONF_DIR, "detector").glob("*.yaml"))
TRAINED = {"cflow", "fastflow", "reverse_distillation", "stfpm", "cfa", "glass", "supersimplenet"}
NO_MAPS = {"dfkde"}  # image scores only
SMALL_DATA = ["dataset.builtin.image_size=64", "dataset.builtin.n_train=12", "dataset.builtin.n_test_good=3",
              "dataset.builtin.n_test_defect=2"]
TINY_MODEL = {  # what a 64 px image forces; everything else is the study's config
    "cflow": ["detector.model.fiber_batch_size=16", "detector.model.coupling_blocks=2"],
    "fastflow": ["detector.model.flow_steps=2"],
    "dfkde": ["detector.model.n_pca_components=4"],
    # anomalib's Perlin masks need a feature map of more than 16 cells (the adapter refuses less)
    "supersimplenet": ["dataset.image_size=96"],
}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("detector-data")


@pytest.fixture(scope="module")
def fractal_export(tmp_path_factory) -> Path:
    """A tiny timm export standing in for the pretrain stage's (trained mean/std 0.2/0.5)."""
    out = tmp_path_factory.mktemp("export")
    torch.manual_seed(1)
    model = timm.create_model("resnet18", num_classes=3)
    timm.models.save_for_hf(model, out, safe_serialization=True,
                            model_config={"pretrained_cfg": {"mean": [0.2] * 3, "std": [0.5] * 3}})
    return out


def backbone_of(kind: str, export: Path, arch: str = "resnet18") -> Backbone:
    if kind == "fractal":
        return Backbone("fractal", arch, f"local-dir:{export}", True, (0.2,) * 3, (0.5,) * 3, str(export))
    return Backbone("random", arch, arch, False, IMAGENET_MEAN, IMAGENET_STD, "random init")


def config(out: Path, data: Path, detector: str, *overrides: str):
    return compose_config(out, f"detector={detector}", "detector.max_epochs=1", *SMALL_DATA,
                          *TINY_MODEL.get(detector, []), *overrides, data_dir=data)


def check_record(record, detector: str, out: Path) -> None:
    m = record.metrics
    for key in ("image_AUROC", "image_F1Score"):
        assert 0.0 <= m[key] <= 1.0, (key, m)
    if detector in NO_MAPS:
        assert "pixel_AUROC" not in m
    else:
        assert 0.0 <= m["pixel_AUROC"] <= 1.0 and 0.0 <= m["pixel_AUPRO"] <= 1.0, m
        assert 0 < len(record.images) <= 2
    assert m["fit_seconds"] > 0 and m["test_seconds"] > 0 and m["peak_rss_mb"] > 0
    assert record.metrics_csv.is_file()
    assert (out / "roc.png").stat().st_size > 1000
    assert 0.0 <= m["val_image_AUROC"] <= 1.0  # the validation quantity sweepers receive
    # training-free detectors are validated on a fit of 9 normals, tested on a fit of all 12; trained
    # ones hold the 3 validation normals out (25% of 12, the built-in config's val_split_ratio)
    assert m["fit_images"] == (9 if detector in TRAINED else 12) and m["val_fit_images"] == 9, m
    assert m["val_normals"] == m["val_anomalies"] == 3 and m["val_images"] == 6, m
    if detector in TRAINED:  # the checkpoint tested is the one selected on the validation split
        assert m["selected_epoch"] == 0.0 and m["epochs_run"] == 1.0
        assert list((out / "weights").glob("best-epoch=0*.ckpt"))


def check_predictions(record, test_dir: Path) -> None:
    """predictions.csv holds every test image's raw score: AUROC recomputed from it with sklearn is
    the reported image_AUROC (anomalib's post-processor clamps scores, which would break this)."""
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    rows = pd.read_csv(record.predictions_csv)
    assert list(rows.columns) == ["image_path", "defect_type", "label", "score"]
    on_disk = sorted(str(p.relative_to(test_dir.parent.parent)) for p in test_dir.rglob("*.png"))
    assert sorted(rows.image_path) == on_disk  # every test image once, relative to the dataset root
    assert set(rows.label[rows.defect_type == "good"]) == {0} and set(rows.label[rows.defect_type != "good"]) == {1}
    assert record.metrics["image_AUROC"] == pytest.approx(roc_auc_score(rows.label, rows.score), abs=1e-6)


# (architecture, weights): the tiny ResNet of most tests, the same with fractal weights (an export),
# and the study's efficientnet_lite0 (TF padding), whose feature layers map differently. The last two
# are `slow` (CI runs them): the default selection fits each detector once; the lite0 layer mapping
# has its own fast test below.
BACKBONES = [pytest.param("resnet18", "random", id="resnet18-random"),
             pytest.param("resnet18", "fractal", id="resnet18-fractal", marks=pytest.mark.slow),
             pytest.param("tf_efficientnet_lite0", "random", id="lite0-random", marks=pytest.mark.slow)]


@pytest.mark.parametrize("arch,weights", BACKBONES)
@pytest.mark.parametrize("detector", DETECTORS)
def test_detector_fits_and_tests_on_the_backbone(detector, arch, weights, tmp_path, data, fractal_export):
    """Fit, validate and test for real; every record and file the detect stage promises, AUROC equal to
    sklearn's on the raw scores. Reverse Distillation has decoders for the ResNet family only and
    must refuse anything else by name."""
    cfg = config(tmp_path, data, detector)
    out = tmp_path / "detect"
    backbone = backbone_of(weights, fractal_export, arch)
    if detector == "reverse_distillation" and not arch.startswith(("resnet", "wide_resnet")):
        with pytest.raises(ValueError, match=f"decoder only for resnet18.*{arch}"):
            run_detect(cfg, backbone, out)
        return
    record = run_detect(cfg, backbone, out)
    check_record(record, detector, out)
    check_predictions(record, Path(cfg.dataset.root) / cfg.dataset.category / "test")


@pytest.mark.parametrize("detector", DETECTORS)
def test_fractal_weights_reach_the_detector(detector, tmp_path, fractal_export):
    """Our exported weights (not a hub download, not random init) end up inside every detector."""
    from anomalib.pre_processing import PreProcessor
    from torchvision.transforms.v2 import Resize

    from pipeline.detect import build_from_config as build_detector
    from pipeline.detect import detect_spec

    cfg = config(tmp_path, tmp_path, detector)
    target = timm.create_model(f"local-dir:{fractal_export}", pretrained=True).state_dict()["layer1.0.conv1.weight"]

    def holds_export(model) -> bool:
        return any(p.shape == target.shape and torch.equal(p, target) for p in model.state_dict().values())

    pre = PreProcessor(transform=Resize((cfg.dataset.image_size,) * 2))
    assert holds_export(build_detector(detect_spec(cfg).model, backbone_of("fractal", fractal_export), pre_processor=pre))
    assert not holds_export(build_detector(detect_spec(cfg).model, backbone_of("random", fractal_export), pre_processor=pre))


def test_layer_names_follow_the_backbone_family():
    assert resolve_layers("resnet18", ["layer2", "layer3"]) == ["layer2", "layer3"]
    assert resolve_layers("efficientnet_lite0", ["layer1", "layer2", "layer3"]) == ["blocks.1", "blocks.2", "blocks.4"]
    assert resolve_layers("convnext_tiny", ["layer1", "layer4"]) == ["stages.0", "stages.3"]
    assert resolve_layers("efficientnet_lite0", ["blocks.6"]) == ["blocks.6"]
    with pytest.raises(ValueError, match=r"\['blocks\.3'\] do not exist in efficientnet_lite0.*blocks\.4"):
        resolve_layers("efficientnet_lite0", ["layer2", "blocks.3"])


def test_padim_n_features_follow_the_backbone():
    from detectors.models import padim_n_features

    assert padim_n_features("resnet18", ["layer1", "layer2", "layer3"]) == 100
    assert padim_n_features("wide_resnet50_2", ["layer1", "layer2", "layer3"]) == 550
    assert padim_n_features("efficientnet_lite0", ["blocks.1", "blocks.2", "blocks.4"]) == round(0.3 * (24 + 40 + 112))


def test_unsupported_detector_is_named_with_the_reason(tmp_path, fractal_export):
    from pipeline.detect import build_from_config as build_detector

    with pytest.raises(ValueError, match="EfficientAd cannot take a swappable backbone: own PDN teacher"):
        build_detector({"_target_": "anomalib.models.EfficientAd"}, backbone_of("random", fractal_export))


# ---------------------------------------------------------------------------------------------
# No test-set leakage
# ---------------------------------------------------------------------------------------------


def test_validation_split_comes_from_training_normals_only(tmp_path, data):
    from anomalib.data.utils.synthetic import SyntheticAnomalyDataset

    from evaluation.datasets.builtin import make_builtin_dataset

    cfg = config(tmp_path, data, "patchcore")
    make_builtin_dataset(cfg.dataset.root, **cfg.dataset.builtin)
    datamodule = datamodule_of(cfg)
    datamodule.setup()
    assert isinstance(datamodule.val_data, SyntheticAnomalyDataset)
    val = datamodule.val_data.samples
    train = {Path(p).name for p in datamodule.train_data.samples.image_path}
    assert sorted(val.label_index.unique()) == [0, 1]  # normals and synthetic anomalies
    test_dir = str(Path(cfg.dataset.root) / cfg.dataset.category / "test")
    assert not any(str(p).startswith(test_dir) for p in val.image_path), "validation uses test images"
    normals = val[val.label_index == 0].image_path
    assert all("/train/good/" in p and Path(p).name not in train for p in normals), "val normals must be held out"
    assert len(train) + len(val) == 12


def test_validation_on_the_test_set_is_refused(tmp_path, data, fractal_export):
    cfg = config(tmp_path, data, "stfpm", "dataset.datamodule.val_split_mode=same_as_test")
    with pytest.raises(ValueError, match="val_split_mode=same_as_test.*test set.*synthetic"):
        run_detect(cfg, backbone_of("random", fractal_export), tmp_path / "detect")


def test_trained_detector_keeps_the_best_validation_epoch(tmp_path, data, fractal_export):
    """The tested checkpoint is the epoch with the best validation pixel AUROC, as the per-epoch curve
    that anomalib's MLflow logger writes into the stage run shows it."""
    import mlflow

    from pipeline import tracking

    cfg = config(tmp_path, data, "stfpm", "detector.max_epochs=3", "detector.selection.patience=null")
    mlflow.set_tracking_uri(cfg.mlflow.tracking_uri)
    mlflow.set_experiment("epochs")  # not the experiment id an earlier test left active in another store
    with mlflow.start_run() as run:
        record = run_detect(cfg, backbone_of("random", fractal_export), tmp_path / "detect", tracking.stage_logger(anomalib=True))
    curve = mlflow.MlflowClient().get_metric_history(run.info.run_id, "val_pixel_AUROC")
    per_epoch = [m.value for m in sorted(curve, key=lambda m: m.timestamp)][:3]  # then the selected epoch's, re-validated
    assert len(curve) >= 3 and len(mlflow.MlflowClient().get_metric_history(run.info.run_id, "train_loss_epoch")) == 3
    assert record.metrics["selected_epoch"] == int(np.argmax(per_epoch))
    assert record.metrics["epochs_run"] == 3.0
    best = list((tmp_path / "detect" / "weights").glob("best-epoch=*.ckpt"))
    assert len(best) == 1
    epoch = int(best[0].stem.split("=")[1])
    assert record.metrics["selected_epoch"] == epoch and 0 <= epoch <= 2
    state = torch.load(best[0], map_location="cpu", weights_only=False)
    scores = [v for k, v in state["callbacks"].items() if k.startswith("ModelCheckpoint")]
    assert scores and scores[0]["monitor"] == "val_pixel_AUROC"


# ---------------------------------------------------------------------------------------------
# Metrics on raw scores
# ---------------------------------------------------------------------------------------------


def pro_auc_reference(maps: np.ndarray, masks: np.ndarray, fpr_limit: float = 0.3) -> float:
    """AUPRO by its definition (Bergmann et al.), written independently of anomalib: at every
    threshold, FPR over normal pixels and the mean overlap over connected defect regions; the area
    under that curve up to ``fpr_limit`` (linear interpolation at the limit), divided by the limit."""
    from scipy import ndimage

    regions = []
    for i, mask in enumerate(masks):
        labelled, n = ndimage.label(mask, structure=np.ones((3, 3)))  # 8-connected, as anomalib
        regions += [(i, labelled == k) for k in range(1, n + 1)]
    normal = maps[masks == 0]
    fprs, pros = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        fprs.append(float((normal >= t).mean()))
        pros.append(float(np.mean([(maps[i][region] >= t).mean() for i, region in regions])))
    fprs, pros = np.array(fprs), np.array(pros)
    inside = fprs <= fpr_limit
    x, y = fprs[inside], pros[inside]
    if x[-1] < fpr_limit:
        j = np.flatnonzero(~inside)[0]
        x = np.r_[x, fpr_limit]
        y = np.r_[y, pros[j - 1] + (pros[j] - pros[j - 1]) * (fpr_limit - fprs[j - 1]) / (fprs[j] - fprs[j - 1])]
    return float(np.trapezoid(y, x) / fpr_limit)


def test_threshold_free_metrics_are_computed_on_raw_maps():
    """A small case through the detect stage's post-processor and evaluator: pixel AUROC and AUPRO
    equal sklearn's AUROC and a reference AUPRO on the raw maps. With anomalib's default
    post-processor (normalised by the validation range and clamped) the same data scores differently."""
    from anomalib.data import ImageBatch
    from anomalib.post_processing import PostProcessor
    from sklearn.metrics import roc_auc_score

    from evaluation.metrics import RawScorePostProcessor, study_evaluator

    rng = np.random.default_rng(0)
    masks = np.zeros((6, 16, 16), np.int64)
    masks[3, 2:6, 2:7] = 1
    masks[4, 9:14, 8:12] = 1
    masks[4, 1:3, 1:3] = 1  # two regions in one image
    masks[5, 5:11, 5:11] = 1
    # raw scores as PatchCore gives them: distances of 15-40, far outside [0, 1]
    maps = 15 + 10 * (rng.random(masks.shape) + masks * rng.uniform(0.2, 1.5, masks.shape))
    labels = masks.reshape(6, -1).max(1)

    def batch(m, y, g):
        return ImageBatch(image=torch.zeros(len(y), 3, 16, 16), gt_label=torch.tensor(y), gt_mask=torch.tensor(g).bool(),
                          anomaly_map=torch.tensor(m, dtype=torch.float32), pred_score=torch.tensor(m.reshape(len(y), -1).max(1), dtype=torch.float32))

    # a narrow validation range, as a weak backbone gives: many test values fall outside it
    val = batch(15 + (maps[[0, 3]] - 15) * 0.3, labels[[0, 3]], masks[[0, 3]])
    expected = {"pixel_AUROC": roc_auc_score(masks.ravel(), maps.ravel()),
                "pixel_AUPRO": pro_auc_reference(maps.astype(np.float32), masks),
                "image_AUROC": roc_auc_score(labels, maps.reshape(6, -1).max(1))}

    def evaluate(post_processor) -> dict[str, float]:
        post_processor.on_validation_batch_end(None, None, val)
        post_processor.on_validation_epoch_end(None, None)
        test = batch(maps, labels, masks)
        post_processor.on_test_batch_end(None, None, test)
        out = {}
        for metric in study_evaluator(0.3).test_metrics:
            metric.update(test)
            out[metric.name] = float(metric.compute())
        return out

    raw = evaluate(RawScorePostProcessor())
    for key, value in expected.items():
        assert raw[key] == pytest.approx(value, abs=1e-5), (key, raw, expected)
    clamped = evaluate(PostProcessor())
    assert abs(clamped["pixel_AUROC"] - expected["pixel_AUROC"]) > 0.01, (clamped, expected)
    assert abs(clamped["image_AUROC"] - expected["image_AUROC"]) > 0.01, (clamped, expected)
    assert raw["image_F1Score"] == clamped["image_F1Score"]  # same validation threshold, same labels


# ---------------------------------------------------------------------------------------------
# ROC plot
# ---------------------------------------------------------------------------------------------


def test_roc_curve_matches_known_values():
    from evaluation.plots import roc_curve

    fpr, tpr, auc = roc_curve(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]))
    assert auc == pytest.approx(0.75)
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 0.5, 1, 1])
    _, _, tied = roc_curve(np.array([1.0, 1.0, 0.0, 0.0]), np.array([1, 0, 1, 0]))
    assert tied == pytest.approx(0.5)
    with pytest.raises(ValueError, match="both"):
        roc_curve(np.array([0.1, 0.2]), np.array([1, 1]))


# ---------------------------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------------------------

MEMORY_SCRIPT = """
import json, resource
from conftest import compose_config, run_detect
from pathlib import Path
from pipeline.detect import backbone_from_config
out = Path({out!r})
cfg = compose_config(out, "backbone=random", "backbone.arch={arch}", "detector=patchcore", "dataset.image_size=128",
                     data_dir=out / "data")
record = run_detect(cfg, backbone_from_config(cfg.backbone, None, out), out / "detect")
print("RESULT", json.dumps({{"maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                             "image_AUROC": record.metrics["image_AUROC"]}}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["resnet18", "efficientnet_lite0"])
def test_patchcore_peak_memory_stays_under_4gb(arch, tmp_path):
    """The default built-in PatchCore run (128 px, 32 normals), random init, in its own process, with
    glibc's default allocator settings: anomalib's coreset selection grew the heap by ~20 MB per
    iteration here (OOM at 24 GB) until an allocator setting held it; detectors.coreset allocates
    nothing per iteration, so no setting is needed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    proc = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT.format(out=str(tmp_path), arch=arch)],  # imports conftest
                          cwd=Path(__file__).parents[1], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT", 1)[1])
    print(f"\npeak RSS {arch}: {result['maxrss_mb']:.0f} MB")
    assert 0.0 <= result["image_AUROC"] <= 1.0
    assert result["maxrss_mb"] < 4096, result


# ---------------------------------------------------------------------------------------------
# Detector input: resize, optional centre crop (the study's 256 -> 224)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("crop", [None, 48])
def test_images_and_masks_stay_aligned_through_resize_and_crop(crop):
    """anomalib's PreProcessor applies our input transform to an image and its mask together: an
    off-centre defect drawn in both lands on the same pixels after resize (+ centre crop)."""
    from anomalib.data import ImageBatch
    from anomalib.pre_processing import PreProcessor
    from omegaconf import OmegaConf
    from torchvision import tv_tensors

    from detectors.fit import input_transform

    image = torch.zeros(1, 3, 100, 100)
    mask = torch.zeros(1, 100, 100, dtype=torch.bool)
    image[..., 20:45, 55:90] = 1.0
    mask[..., 20:45, 55:90] = True
    d = OmegaConf.create({"image_size": 64, "crop": crop})
    batch = ImageBatch(image=image, gt_mask=tv_tensors.Mask(mask), gt_label=torch.tensor([1]))
    PreProcessor(transform=input_transform(d.image_size, d.crop, (0.5,) * 3, (0.25,) * 3)).on_test_batch_start(None, None, batch, 0)
    side = crop or 64
    assert batch.image.shape[-2:] == (side, side) and batch.gt_mask.shape[-2:] == (side, side)
    bright = (batch.image[0, 0] * 0.25 + 0.5) > 0.5  # undo the normalisation

    def iou(a, b):
        return float((a & b).sum() / (a | b).sum())

    assert batch.gt_mask[0].sum() > 0
    assert iou(bright, batch.gt_mask[0]) > 0.95
    assert iou(bright, torch.roll(batch.gt_mask[0], 2, dims=1)) < 0.9  # a 2 px misalignment would show


def test_crop_larger_than_the_resize_is_refused():

    from detectors.fit import input_transform

    with pytest.raises(ValueError, match="dataset.crop=300 must lie between 32 and dataset.image_size=256"):
        input_transform(256, 300, (0.5,) * 3, (0.5,) * 3)


def test_study_experiments_crop_as_the_study_and_builtin_runs_do_not(tmp_path):
    assert compose_config(tmp_path).dataset.crop is None
    for experiment in ("study_mvtec", "study_visa"):
        d = compose_config(tmp_path, f"+experiment={experiment}").dataset
        assert d.crop == 224, experiment  # (image_size 256 there; the tests shrink it)

"""The whole pipeline in-process: real fractals, real Lightning training, real PatchCore, real MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from conftest import runs_of

from pipeline.job import run_pipeline


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """The same tiny config and seed run twice, into one MLflow store."""
    from conftest import compose_config

    base = tmp_path_factory.mktemp("pipeline")
    data = tmp_path_factory.mktemp("pipeline_data")
    cfgs = [compose_config(base, f"paths.output_dir={base}/job{i}", data_dir=data) for i in range(2)]
    metrics = [run_pipeline(cfg) for cfg in cfgs]
    return cfgs, metrics, runs_of(cfgs[0].mlflow.tracking_uri)


def test_one_parent_and_three_finished_stage_runs_per_call(two_runs):
    cfgs, _, runs = two_runs
    parents = runs[runs["tags.stage"] == "pipeline"]
    assert len(parents) == 2
    for parent_id in parents["run_id"]:
        children = runs[runs["tags.mlflow.parentRunId"] == parent_id]
        assert sorted(children["tags.stage"]) == ["detect", "generate", "pretrain"]
        assert set(children["status"]) == {"FINISHED"}
    assert set(runs["status"]) == {"FINISHED"}


def test_stage_runs_carry_params_metrics_artifacts_and_lineage(two_runs):
    cfgs, _, runs = two_runs
    client = __import__("mlflow").MlflowClient(cfgs[0].mlflow.tracking_uri)
    parent_id = runs[runs["tags.stage"] == "pipeline"]["run_id"].iloc[0]
    children = runs[runs["tags.mlflow.parentRunId"] == parent_id].set_index("tags.stage")

    pretrain, detect, generate = (children.loc[s] for s in ("pretrain", "detect", "generate"))
    assert detect["tags.pretrain_run_id"] == pretrain["run_id"]
    for metric in ("image_AUROC", "pixel_AUROC", "pixel_AUPRO"):
        assert 0.0 <= detect[f"metrics.{metric}"] <= 1.0
    assert np.isfinite(pretrain["metrics.train_loss_epoch"]) and 0 <= pretrain["metrics.val_acc"] <= 1
    assert pretrain["params.pretrain.max_steps"] == "4"
    assert detect["params.detector.model.coreset_sampling_ratio"] == "0.1"
    assert generate["params.fractal.num_classes"] == "3"
    assert detect["tags.backbone"] == "fractal" and detect["tags.category"] == "weave"

    def artifacts(run_id, path=""):
        out = []
        for item in client.list_artifacts(run_id, path):
            out += artifacts(run_id, item.path) if item.is_dir else [item.path]
        return out

    assert "fractals/preview.png" in artifacts(generate["run_id"])
    assert {"config.yaml", "backbone/config.json", "backbone/model.safetensors",
            "samples/train_batch.png"} <= set(artifacts(pretrain["run_id"]))
    # Lightning's MLflow logger and LearningRateMonitor write into the stage run: the schedule's lr
    # (step decay at 30% and 60% of 4 steps: 0.1 -> 0.01 -> 0.001 before the last step)
    lr = client.get_metric_history(pretrain["run_id"], "lr")
    assert lr and lr[0].value == pytest.approx(0.001) and lr[0].step == 3
    detect_files = artifacts(detect["run_id"])
    assert {"metrics.csv", "predictions.csv", "roc.png", "config.yaml"} <= set(detect_files)
    assert len([f for f in detect_files if f.startswith("anomaly_maps/")]) == 2


def test_same_config_and_seed_give_same_fractals_and_same_metrics(two_runs):
    cfgs, metrics, _ = two_runs
    outs = [Path(cfg.paths.output_dir) for cfg in cfgs]
    assert (outs[0] / "fractals/preview.png").read_bytes() == (outs[1] / "fractals/preview.png").read_bytes()
    assert (outs[0] / "fractals/systems.npz").read_bytes() == (outs[1] / "fractals/systems.npz").read_bytes()
    for key in ("image_AUROC", "pixel_AUROC", "pixel_AUPRO", "image_F1Score"):
        assert metrics[0][key] == metrics[1][key], key


def test_export_loads_in_timm_and_anomalib_with_identical_weights(two_runs):
    from anomalib.models import Patchcore

    cfgs, _, _ = two_runs
    export = Path(cfgs[0].paths.output_dir) / "pretrain/backbone"
    meta = json.loads((export / "config.json").read_text())
    assert meta["architecture"] == "resnet18"
    assert meta["pretrained_cfg"]["mean"] == [0.2, 0.2, 0.2] and meta["pretrained_cfg"]["std"] == [0.5] * 3
    assert json.loads((export / "fractal.json").read_text())["seed"] == cfgs[0].seed

    model = timm.create_model(f"local-dir:{export}", pretrained=True)
    untrained = timm.create_model("resnet18")
    weight = model.state_dict()["layer2.0.conv1.weight"]
    assert not torch.equal(weight, untrained.state_dict()["layer2.0.conv1.weight"])

    patchcore = Patchcore(backbone=f"local-dir:{export}", layers=["layer2"], pre_trained=True)
    extractor = patchcore.model.feature_extractor.feature_extractor
    assert torch.equal(extractor.state_dict()["layer2.0.conv1.weight"], weight)


def test_different_seed_gives_different_fractals(tiny_config, tmp_path):
    from pipeline.generate import generate, generate_spec

    previews = [generate(generate_spec(tiny_config(f"seed={s}")), tmp_path / str(s)).preview_path.read_bytes() for s in (0, 1)]
    assert previews[0] != previews[1]


def test_pretrain_checkpoint_reloads_under_weights_only_and_carries_the_rng_state(two_runs):
    """torch >= 2.6 loads with weights_only=True: no OmegaConf objects (or numpy arrays) may be pickled
    into the checkpoint. The RNG states ride along so a resume continues the same random streams."""
    import random

    from fractal_pretrain.callbacks import RngState

    cfgs, _, _ = two_runs
    ckpt = torch.load(Path(cfgs[0].paths.output_dir) / "pretrain/checkpoints/last.ckpt", map_location="cpu")
    assert ckpt["hyper_parameters"]["backbone"] == "resnet18" and ckpt["state_dict"]
    saved = ckpt["callbacks"]["RngState"]

    def draws():
        return torch.rand(4).tolist(), np.random.rand(4).tolist(), [random.random() for _ in range(4)]

    RngState().load_state_dict(saved)
    first = draws()
    RngState().load_state_dict(saved)
    assert draws() == first


def test_a_job_gives_the_same_result_alone_and_after_another_job(tmp_path, data_dir):
    """Random-init PaDiM (its init and its random channel subset both draw from the RNG) run alone in
    a fresh state, then again as the second job of an in-process sequence: identical scores."""
    from conftest import compose_config

    from detectors.layers import feature_layers

    def job(name: str, *overrides: str):
        cfg = compose_config(tmp_path, f"paths.output_dir={tmp_path}/{name}", "stages=[detect]", *overrides,
                             data_dir=data_dir)
        metrics = run_pipeline(cfg)
        return metrics, (tmp_path / name / "detect/predictions.csv").read_text()

    padim = ("backbone=random", "detector=padim")
    feature_layers.cache_clear()  # as in a fresh process: nothing probed yet
    alone = job("alone", *padim)
    job("other", "backbone=random", "backbone.arch=efficientnet_lite0", "detector=dfm", "seed=3")
    second = job("second", *padim)
    assert alone[1] == second[1]  # every raw test score, bit for bit
    for key in ("image_AUROC", "pixel_AUROC", "pixel_AUPRO", "image_F1Score"):
        assert alone[0][key] == second[0][key], key


def test_sweepers_get_a_validation_quantity_never_a_test_metric(two_runs, tiny_config):
    cfgs, metrics, _ = two_runs
    assert cfgs[0].sweep_metric == "val_image_AUROC"
    assert 0.0 <= metrics[0]["val_image_AUROC"] <= 1.0
    # PatchCore fits on every training normal; the validation split is made from them too
    assert metrics[0]["fit_images"] == cfgs[0].dataset.builtin.n_train and metrics[0]["val_images"] > 0
    with pytest.raises(ValueError, match="sweep_metric=image_AUROC is not a validation metric.*test set.*val_image_AUROC"):
        run_pipeline(tiny_config("sweep_metric=image_AUROC"))


def test_a_backbone_from_mlflow_detects_as_its_export_on_disk(two_runs, tmp_path):
    """``backbone.weights=runs:/<pretrain run id>`` (the multi-GPU workflow: pre-train once, sweep
    detectors on the logged export) and ``models:/<model id>`` (the export's LoggedModel, as the
    Models view lists it): the detect stage fetches the pretrain run's logged export, names that run
    and model as its upstream, scores exactly as the same export read from disk, and counts as the
    same report arm. The registry form: tests/pipeline/test_models_reuse.py."""
    import mlflow
    from conftest import compose_config

    from fractal_pretrain.export import export_digest

    cfgs, _, runs = two_runs
    pretrain = runs[(runs["tags.stage"] == "pretrain")].iloc[0]
    local = Path(cfgs[0].paths.output_dir) / "pretrain" / "backbone"
    data = Path(cfgs[0].paths.data_dir)
    mlflow.set_tracking_uri(cfgs[0].mlflow.tracking_uri)
    (model,) = mlflow.search_logged_models(experiment_ids=[pretrain["experiment_id"]], output_format="list",
                                           filter_string=f"source_run_id = '{pretrain['run_id']}'")
    # the model carries its recipe, the input statistics and what its weights are
    assert model.params["pretrain.max_steps"] == "4" and model.params["fractal.num_classes"] == "3"
    assert model.params["input_mean"] == "(0.2, 0.2, 0.2)" and model.params["input_std"] == "(0.5, 0.5, 0.5)"
    assert model.tags["weights_digest"] == export_digest(local)

    store = [f"mlflow.tracking_uri={cfgs[0].mlflow.tracking_uri}", "stages=[detect]"]
    fetched = run_pipeline(compose_config(tmp_path / "a", f"backbone.weights=runs:/{pretrain['run_id']}", *store,
                                          data_dir=data))
    by_model = run_pipeline(compose_config(tmp_path / "m", f"backbone.weights=models:/{model.model_id}", *store,
                                           data_dir=data))
    on_disk = run_pipeline(compose_config(tmp_path / "b", f"backbone.weights={local}", *store, data_dir=data))
    timings = ("_seconds", "peak_rss_mb")
    for reused in (fetched, by_model):
        assert reused == {**on_disk, **{k: reused[k] for k in reused if k.endswith(timings)}}
    for job in ("a", "m"):
        (download,) = (tmp_path / job / "job" / "upstream").rglob("model.safetensors")
        assert export_digest(download.parent) == export_digest(local)
    detects = runs_of(cfgs[0].mlflow.tracking_uri)
    detects = detects[(detects["tags.stage"] == "detect") & ~detects["run_id"].isin(runs["run_id"])]  # these three
    reused = detects[detects["tags.weights"].str.contains("upstream")]
    assert list(reused["tags.pretrain_run_id"]) == [pretrain["run_id"]] * 2
    assert set(reused["tags.backbone_model_id"]) == {model.model_id}  # the pretrain run's LoggedModel
    assert detects["tags.pretrain_hash"].nunique() == 1  # the same weights: one arm, however named
    linked = {m.run_id for m in mlflow.get_logged_model(model.model_id).metrics if m.key == "image_AUROC"}
    assert set(reused["run_id"]) <= linked  # the detect metrics reached on the model

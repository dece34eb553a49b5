"""Shared fixtures: real Hydra composition of the project's configs at tiny sizes, in temp folders."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Hermetic against the user's caches: tests that expect "ImageNet weights are not cached" must not
# find a resnet18 in ~/.cache/huggingface. Set before anything imports huggingface_hub (it reads
# HF_HOME once); subprocess tests inherit it.
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="fractal-ad-tests-hf-")
os.environ["TORCH_HOME"] = tempfile.mkdtemp(prefix="fractal-ad-tests-torch-")
# The validation anomalies' fractal textures are the same bytes wherever rendered (tested in
# test_val_anomalies.py): one folder for the session instead of a second of rendering per test.
TEXTURES = Path(tempfile.mkdtemp(prefix="fractal-ad-tests-textures-")) / "fractal"
TRAINING_TEXTURES = TEXTURES.with_name("fractal_train")  # GLASS's (detector.anomaly_source)

import mlflow
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

import run  # registers the ${project_root:} resolver the configs use

CONF_DIR = str(run.ROOT / "conf")

# conf/debug/tiny.yaml: seconds on 2 CPU cores, large enough to exercise every stage for real; and
# none of this machine's conf/local settings. Overrides, so subprocess tests pass them to run.py too.
TINY = ["+debug=tiny", "~local"]


def compose_config(out_dir: Path, *overrides: str, data_dir: Path | None = None) -> DictConfig:
    """The real config tree with TINY sizes, every output (MLflow store included) under ``out_dir``."""
    paths = [f"paths.outputs_dir={out_dir}", f"paths.output_dir={out_dir}/job",
             f"dataset.val_anomalies.fractal_dir={TEXTURES}", f"detector.anomaly_source.fractal_dir={TRAINING_TEXTURES}"]
    if data_dir is not None:
        paths.append(f"paths.data_dir={data_dir}")
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        return compose("config", overrides=[*TINY, *paths, *overrides])


def pytest_collection_modifyitems(config, items):
    """GPU paths run where a CUDA device is, and are reported as skipped (``-ra``) where not."""
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA device (none here): run on a GPU machine")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """One built-in dataset for the whole session (generated on first use by the detect stage)."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture
def tiny_config(tmp_path, data_dir):
    def make(*overrides: str, out_dir: Path | None = None) -> DictConfig:
        return compose_config(out_dir or tmp_path, *overrides, data_dir=data_dir)
    return make


def runs_of(tracking_uri: str, experiment: str = "fractal-ad"):
    """All runs of the experiment as a DataFrame (MLflow's own query API)."""
    mlflow.set_tracking_uri(tracking_uri)
    return mlflow.search_runs(experiment_names=[experiment])


def run_detect(cfg: DictConfig, backbone, out_dir: Path, logger=None):
    """The detect stage as the pipeline calls it: its dataset prepared, its spec from the config,
    ``logger`` for the curves of detectors that train; returns the stage's DetectRecord."""
    from pipeline.detect import detect, detect_spec, prepare_dataset

    return detect(detect_spec(cfg), backbone, prepare_dataset(cfg.dataset), out_dir, logger).record


def run_pretrain(cfg: DictConfig, out_dir: Path):
    """The generate and pretrain stages as the pipeline calls them, outside MLflow; returns the
    pretrain record."""
    from pipeline.generate import generate, generate_spec
    from pipeline.pretrain import pretrain, pretrain_spec

    generated = generate(generate_spec(cfg), out_dir / "fractals")
    return pretrain(pretrain_spec(cfg), generated.source, out_dir / "pretrain", generated.bank_path)


def datamodule_of(cfg: DictConfig, seed: int = 0):
    """The configured dataset's anomalib datamodule, as the detect stage builds it."""
    from pipeline.detect import prepare_dataset

    return prepare_dataset(cfg.dataset).make_datamodule(seed)

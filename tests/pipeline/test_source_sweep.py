"""A real multirun over pre-training sources: each source is pre-trained once and is its own arm of
the sweep's report and of its MLflow row."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
from conftest import TINY, runs_of
from PIL import Image
from skimage import data as skimage_data

from run import ROOT

pytestmark = pytest.mark.slow


def test_sources_are_arms_of_the_sweep_report(tmp_path):
    photos = tmp_path / "photos"  # real photographs shipped with scikit-image: loading code only
    for cls, names in {"a": ("chelsea", "coffee", "rocket"), "b": ("astronaut", "camera", "cat")}.items():
        (photos / cls).mkdir(parents=True)
        for name in names:
            Image.fromarray(getattr(skimage_data, name)()).save(photos / cls / f"{name}.png")
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), "-m", "backbone=fractal", "pretrain/source=dead_leaves,image_folder",
         f"++pretrain.source.root={photos}", "detector=patchcore", *TINY, f"paths.outputs_dir={out}"],
        capture_output=True, text=True, timeout=1200, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    runs = runs_of(f"sqlite:///{out}/mlflow.db")
    pretrains = runs[runs["tags.stage"] == "pretrain"]
    assert sorted(pretrains["tags.backbone"]) == ["dead_leaves", "image_folder"]
    generate = runs[runs["tags.stage"] == "generate"]
    assert set(generate["status"]) == {"FINISHED"} and len(generate) == 2
    client = __import__("mlflow").MlflowClient(f"sqlite:///{out}/mlflow.db")
    for _, run in generate.iterrows():  # what defines each source, beside its preview
        listed = {a.path for a in client.list_artifacts(run["run_id"], run["tags.backbone"])}
        stored = "classes.json" if run["tags.backbone"] == "dead_leaves" else "images.json"
        assert listed == {f"{run['tags.backbone']}/{stored}", f"{run['tags.backbone']}/preview.png"}

    (report_dir,) = (out / "multirun").glob("*/report")
    summary = pd.read_csv(report_dir / "summary.csv")
    assert sorted(summary["backbone"]) == ["dead_leaves", "image_folder"]
    detect = runs[runs["tags.stage"] == "detect"]
    for _, row in summary.iterrows():
        (value,) = detect.loc[detect["tags.backbone"] == row["backbone"], "metrics.image_AUROC"]
        assert row["image_AUROC_mean"] == pytest.approx(value)
    (sweep_id,) = runs[runs["tags.stage"] == "sweep"]["run_id"]
    figures = client.get_run(sweep_id).data.metrics
    assert {"image_AUROC/dead_leaves/patchcore", "image_AUROC/image_folder/patchcore"} <= set(figures)

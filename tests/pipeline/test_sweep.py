"""A real multirun: 2 backbones x 2 detectors, joblib with 2 parallel jobs, one SQLite store."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
from conftest import TINY, runs_of

from run import ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), "-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2",
         "backbone=fractal,random", "detector=patchcore,padim", *TINY, f"paths.outputs_dir={out}"],
        capture_output=True, text=True, timeout=1200, cwd=out)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, proc, runs_of(f"sqlite:///{out}/mlflow.db")


def test_one_sweep_parent_with_four_finished_jobs_tagged_by_their_choices(sweep):
    _, _, runs = sweep
    (sweep_id,) = runs[runs["tags.stage"] == "sweep"]["run_id"]
    jobs = runs[runs["tags.mlflow.parentRunId"] == sweep_id]
    assert len(jobs) == 4 and set(jobs["tags.stage"]) == {"pipeline"}
    assert set(runs["status"]) == {"FINISHED"}, "no run lost or left RUNNING"
    assert set(zip(jobs["tags.backbone"], jobs["tags.detector"])) == {
        ("fractal", "patchcore"), ("fractal", "padim"), ("random", "patchcore"), ("random", "padim")}
    assert set(runs.loc[runs["tags.stage"] != "sweep", "tags.sweep_run_id"]) == {sweep_id}
    assert jobs["tags.config_hash"].nunique() == 4
    # one recipe per backbone source: the detector is its own report key, not part of the recipe
    assert jobs.groupby("tags.backbone")["tags.pretrain_hash"].nunique().to_dict() == {"fractal": 1, "random": 1}
    assert jobs["tags.pretrain_hash"].nunique() == 2
    for tag in ("dataset", "category", "seed"):
        assert jobs[f"tags.{tag}"].notna().all()


def test_fractal_backbone_is_pretrained_once_and_reused(sweep):
    _, _, runs = sweep
    (pretrain_id,) = runs[runs["tags.stage"] == "pretrain"]["run_id"]
    detect = runs[runs["tags.stage"] == "detect"]
    assert list(detect[detect["tags.backbone"] == "fractal"]["tags.pretrain_run_id"]) == [pretrain_id] * 2


def test_report_table_matches_the_jobs_metrics(sweep):
    out, proc, runs = sweep
    (report_dir,) = (out / "multirun").glob("*/report")
    summary = pd.read_csv(report_dir / "summary.csv")
    detect = runs[runs["tags.stage"] == "detect"]
    assert len(summary) == 4
    for _, row in summary.iterrows():
        match = detect[(detect["tags.backbone"] == row["backbone"]) & (detect["tags.detector"] == row["detector"])]
        assert len(match) == 1
        for metric in ("image_AUROC", "pixel_AUROC", "pixel_AUPRO"):
            assert row[f"{metric}_mean"] == pytest.approx(match[f"metrics.{metric}"].iloc[0])
    assert (report_dir / "comparison.png").stat().st_size > 10_000
    assert (report_dir / "per_category.png").stat().st_size > 5_000
    assert "| fractal | padim | builtin | resnet18 |" in proc.stdout  # printed in the terminal too
    assert f"picture: {report_dir / 'comparison.png'}" in proc.stdout and "mlflow ui --backend-store-uri" in proc.stdout
    assert (report_dir / "paired.csv").is_file()
    client = __import__("mlflow").MlflowClient(f"sqlite:///{out}/mlflow.db")
    (sweep_id,) = runs[runs["tags.stage"] == "sweep"]["run_id"]
    assert {a.path for a in client.list_artifacts(sweep_id, "report")} >= {"report/summary.md", "report/comparison.png"}
    # the collapsed sweep row carries each arm's headline figures: the summary's means over seeds
    figures = client.get_run(sweep_id).data.metrics
    for _, row in summary.iterrows():
        name = f"{row['backbone']}/{row['detector']}"
        assert figures[f"image_AUROC/{name}"] == pytest.approx(row["image_AUROC_mean"])
        assert figures[f"pixel_AUPRO/{name}"] == pytest.approx(row["pixel_AUPRO_mean"])
        assert figures[f"seeds/{name}"] == row["seeds"]


def test_compare_script_rebuilds_the_report_from_the_store(sweep, tmp_path):
    out, _, _ = sweep
    proc = subprocess.run([sys.executable, str(ROOT / "scripts/compare.py"), "--tracking-uri",
                           f"sqlite:///{out}/mlflow.db", "--out", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert pd.read_csv(tmp_path / "summary.csv").equals(pd.read_csv(next((out / "multirun").glob("*/report/summary.csv"))))
    empty = subprocess.run([sys.executable, str(ROOT / "scripts/compare.py"), "--tracking-uri",
                            f"sqlite:///{out}/mlflow.db", "--sweep", "nope", "--out", str(tmp_path / "x")],
                           capture_output=True, text=True)
    assert empty.returncode == 2 and "no detect runs match" in empty.stderr

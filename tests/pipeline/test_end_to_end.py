"""`python run.py` as a user types it, in a subprocess (slow: each call imports the whole stack)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import TINY, runs_of

from run import ROOT

pytestmark = pytest.mark.slow


def run_py(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=900)


def test_run_py_walks_every_stage_and_prints_the_metrics_table(tmp_path):
    # started from another directory: nothing may depend on the working directory
    proc = run_py(*TINY, f"paths.outputs_dir={tmp_path}", cwd=tmp_path.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "image_AUROC" in proc.stdout and "pixel_AUPRO" in proc.stdout
    runs = runs_of(f"sqlite:///{tmp_path}/mlflow.db")
    assert sorted(runs["tags.stage"]) == ["detect", "generate", "pipeline", "pretrain"]
    assert set(runs["status"]) == {"FINISHED"}
    (job,) = (tmp_path / "runs").iterdir()  # Hydra's job folder lives under paths.outputs_dir
    assert (job / "pretrain/backbone/model.safetensors").is_file()
    assert (job / "detect/metrics.csv").is_file()

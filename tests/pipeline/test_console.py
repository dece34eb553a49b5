"""The console shows the pipeline (stage headers, progress, the table, where it all went); library
noise goes to the run's log file."""

from __future__ import annotations

import logging
import subprocess
import sys

import lightning as L
import pytest
import torch
from conftest import TINY
from torch.utils.data import DataLoader, TensorDataset

from console.progress import StepProgress
from run import ROOT


class Toy(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch[0]).pow(2).mean()
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True)
        return loss

    def test_step(self, batch, batch_idx):
        return self.layer(batch[0]).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_progress_writes_a_plain_line_per_tenth_of_the_work_with_loss_and_throughput(caplog):
    caplog.set_level(logging.INFO, logger="fractal_ad")
    data = DataLoader(TensorDataset(torch.randn(40, 4)), batch_size=2)
    trainer = L.Trainer(max_steps=20, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_model_summary=False, callbacks=[StepProgress("toy", unit="step")])
    trainer.fit(Toy(), data)
    trainer.test(trainer.lightning_module, data, verbose=False)
    lines = [r.getMessage() for r in caplog.records if r.name == "fractal_ad"]
    fit = [line for line in lines if line.startswith("toy fit")]
    test = [line for line in lines if line.startswith("toy test")]
    # the first step (so a slow start is visible at once), then every tenth: 1, 2, 4, ..., 20
    assert [line.split()[3] for line in fit] == ["1/20", *(f"{k}/20" for k in range(2, 21, 2))]
    assert all("train_loss" in line and "img/s" in line for line in fit)
    assert "left" in fit[0] and "left" not in fit[-1]
    assert test[0].startswith("toy test  batch 1/20 (5%)") and test[-1].startswith("toy test  batch 20/20 (100%)")
    assert all(getattr(r, "progress", False) for r in caplog.records if r.name == "fractal_ad")


def run_py(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=900)  # pipes: not a terminal


NOISE = ("FutureWarning", "DeprecationWarning", "UserWarning", "LOCAL_RANK", "| Name", "┃ Name", "Tip:",
         "INFO", "GPU available", "Seed set", "Trainable params", "Selecting Coreset", "\r", "WARN")


@pytest.mark.slow
def test_default_job_console_has_the_pipeline_and_no_library_noise(tmp_path):
    proc = run_py(*TINY, f"paths.outputs_dir={tmp_path}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    console = proc.stdout + proc.stderr
    for header in ("== generate:", "== pretrain: resnet18", "== detect: patchcore"):
        assert header in proc.stdout
    assert "pretrain fit  step 1/4 (25%)  train_loss" in proc.stdout and "step 4/4 (100%)" in proc.stdout
    assert "img/s" in proc.stdout
    assert "detect fit  batch" in proc.stdout and "detect test  batch" in proc.stdout
    assert "image_AUROC  pixel_AUROC  pixel_AUPRO" in proc.stdout
    (job,) = (tmp_path / "runs").iterdir()
    assert f"run folder  {job}" in proc.stdout
    assert "MLflow run  " in proc.stdout and f"mlflow ui --backend-store-uri sqlite:///{tmp_path}/mlflow.db" in proc.stdout
    assert [n for n in NOISE if n in console] == []
    assert proc.stderr == ""
    assert len(proc.stdout.splitlines()) < 30
    # the noise is kept, in the run's log file
    log_text = (job / "run.log").read_text()
    for noise in ("FutureWarning", "Tip:", "GPU available", "Seed set to 0", "== detect", "detect test  batch"):
        assert noise in log_text


@pytest.mark.slow
def test_verbose_brings_the_library_output_back(tmp_path):
    proc = run_py(*TINY, "backbone=random", "verbose=true", f"paths.outputs_dir={tmp_path}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    console = proc.stdout + proc.stderr
    for noise in ("Name", "Trainable params", "Tip:", "GPU available", "FutureWarning"):
        assert noise in console
    assert "== detect: patchcore" in console and "image_AUROC" in console

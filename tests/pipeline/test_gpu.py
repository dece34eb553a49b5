"""The GPU paths (``trainer=gpu``, ``fractal.renderer=torch`` on a CUDA device), run where a CUDA
device is; elsewhere they are reported as skipped."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from conftest import run_pretrain, runs_of

from fractal_pretrain.fractals.ifs import sample_bank
from fractal_pretrain.fractals.render import RenderConfig
from fractal_pretrain.fractals.render_torch import render_batch
from pipeline.job import run_pipeline

pytestmark = pytest.mark.gpu


def test_torch_renderer_draws_on_the_gpu_what_it_draws_on_the_cpu():
    """Integer hashing picks every draw, so the device changes only float rounding: the same lit
    pixels up to a sliver at the edges, the same mean brightness."""
    bank = sample_bank(4, 1, seed=0)
    cfg = RenderConfig(size=64, n_points=20_000, patch=True, blur_p=0.0)
    systems, keys = [bank.system(i) for i in range(4)], [1, 2, 3, 2**63 + 7]
    cpu = render_batch(systems, keys, cfg, device="cpu", walkers=256).float()
    gpu = render_batch(systems, keys, cfg, device="cuda", walkers=256)
    assert gpu.device.type == "cuda"
    gpu = gpu.float().cpu()
    assert ((cpu > 0) == (gpu > 0)).float().mean() > 0.99
    assert torch.allclose(cpu.mean(dim=(1, 2, 3)), gpu.mean(dim=(1, 2, 3)), rtol=0.02)


def test_pretraining_on_the_gpu_renders_whole_batches_there_and_exports(tiny_config, tmp_path):
    cfg = tiny_config("trainer=gpu", "fractal.renderer=torch", "pretrain.max_steps=6", "pretrain.crop_size=24")
    record = run_pretrain(cfg, tmp_path)
    assert record.global_step == 6 and np.isfinite(record.metrics["train_loss_epoch"])
    model = timm.create_model(f"local-dir:{record.export_dir}", pretrained=True)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_the_whole_pipeline_on_the_gpu(tiny_config):
    cfg = tiny_config("trainer=gpu")
    metrics = run_pipeline(cfg)
    assert {"image_AUROC", "val_image_AUROC"} <= set(metrics)
    runs = runs_of(cfg.mlflow.tracking_uri)
    assert set(runs["status"]) == {"FINISHED"} and (runs["params.trainer.accelerator"].dropna() == "gpu").all()

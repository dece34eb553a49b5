"""LightningModule: a timm classifier trained from scratch with cross entropy over fractal classes."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import lightning as L
import timm
import torch
import torch.nn.functional as F


class FractalClassifier(L.LightningModule):
    """Any timm architecture, random init, SGD + step decay as in FractalDB / Ugwu et al.

    ``lr_milestones`` are fractions of the total number of optimiser steps (the study decays by
    ``lr_gamma`` at epochs 30 and 60 of 100, i.e. 0.3 and 0.6).
    """

    def __init__(self, backbone: str, num_classes: int,
                 optimizer: Callable[..., torch.optim.Optimizer],
                 lr_milestones: Sequence[float] = (0.3, 0.6), lr_gamma: float = 0.1):
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer"])
        self.model = timm.create_model(backbone, pretrained=False, num_classes=num_classes)
        self.optimizer_factory = optimizer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def _step(self, batch, split: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        acc = (logits.argmax(1) == y).float().mean()
        on_step = split == "train"
        self.log(f"{split}_loss", loss, prog_bar=True, on_step=on_step, on_epoch=True, sync_dist=True)
        self.log(f"{split}_acc", acc, prog_bar=True, on_step=on_step, on_epoch=True, sync_dist=True)
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def configure_optimizers(self):
        opt = self.optimizer_factory(self.parameters())
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        milestones = sorted({max(1, int(f * total)) for f in self.hparams.lr_milestones})
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones, gamma=self.hparams.lr_gamma)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

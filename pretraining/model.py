"""LightningModule: a timm classifier trained from scratch with cross entropy over fractal classes."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import lightning as L
import timm
import torch
import torch.nn.functional as F
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from torchmetrics.classification import MulticlassAccuracy


class FractalClassifier(L.LightningModule):
    """Any timm architecture, random init; the FractalDB / Ugwu et al. recipe by default.

    MixUp/CutMix (the follow-up's heavy recipe) act on whole batches and change the loss, so they
    live here; they draw from the seeded main-process generators, whatever the loader workers.
    MixUp/CutMix hit a batch with probability ``mixup.prob`` (OFDB-4AD: 0.8), CutMix instead of MixUp
    with ``mixup.switch_prob``. ``optimizer(params)`` and ``schedule(optimizer, total_steps)``
    (``pretraining.schedules``; stepped every optimiser step) build the optimisation.
    """

    def __init__(self, backbone: str, num_classes: int, optimizer: Callable[..., torch.optim.Optimizer],
                 schedule: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
                 mixup: Mapping | None = None):
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer", "schedule"])
        self.model = timm.create_model(backbone, pretrained=False, num_classes=num_classes)
        self.optimizer_factory, self.schedule_factory = optimizer, schedule
        mix = dict(mixup or {})
        self.mixup = (Mixup(mixup_alpha=mix.get("mixup_alpha", 0.0), cutmix_alpha=mix.get("cutmix_alpha", 0.0),
                            label_smoothing=mix.get("label_smoothing", 0.0), prob=mix.get("prob", 1.0),
                            switch_prob=mix.get("switch_prob", 0.5), num_classes=num_classes)
                      if mix.get("mixup_alpha", 0.0) > 0 or mix.get("cutmix_alpha", 0.0) > 0 else None)
        self.label_smoothing = mix.get("label_smoothing", 0.0)
        # one per split: the running state of training must not mix with validation's
        self.train_accuracy = MulticlassAccuracy(num_classes, average="micro")
        self.val_accuracy = MulticlassAccuracy(num_classes, average="micro")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.mixup is not None:
            x_mixed, soft = self.mixup(x, y)
            logits = self(x_mixed)
            loss = SoftTargetCrossEntropy()(logits, soft)
        else:
            logits = self(x)
            loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        self._log("train", loss, logits, y)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self._log("val", F.cross_entropy(logits, y), logits, y)

    def _log(self, split: str, loss, logits, y) -> None:
        accuracy = getattr(self, f"{split}_accuracy")
        accuracy(logits, y)  # a torchmetrics Metric: Lightning syncs and resets it per epoch
        on_step = split == "train"
        self.log(f"{split}_loss", loss, prog_bar=True, on_step=on_step, on_epoch=True, sync_dist=True)
        self.log(f"{split}_acc", accuracy, prog_bar=True, on_step=on_step, on_epoch=True)

    def configure_optimizers(self):
        opt = self.optimizer_factory(self.parameters())
        if self.schedule_factory is None:
            return opt
        sched = self.schedule_factory(opt, total_steps=max(int(self.trainer.estimated_stepping_batches), 1))
        # "name": what LearningRateMonitor logs it as
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "name": "lr"}}

"""LightningModule: a timm classifier trained from scratch with cross entropy over fractal classes."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import lightning as L
import timm
import torch
import torch.nn.functional as F
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from torchmetrics.classification import MulticlassAccuracy

from console.errors import ConfigError


class FractalClassifier(L.LightningModule):
    """Any timm architecture, random init; the FractalDB / Ugwu et al. recipe by default.

    MixUp/CutMix (the follow-up's heavy recipe) act on whole batches and change the loss, so they
    live here; they draw from the seeded main-process generators, whatever the loader workers.
    ``lr_milestones`` are fractions of all optimiser steps (the study decays by ``lr_gamma`` at
    epochs 30 and 60 of 100: 0.3, 0.6); ``schedule="cosine"`` uses linear warm-up from ``warmup_lr``
    then cosine down to ``min_lr`` (OFDB-4AD: from 1e-6, down to 1e-5). MixUp/CutMix hit a batch with
    probability ``mixup.prob`` (OFDB-4AD: 0.8), CutMix instead of MixUp with ``mixup.switch_prob``.
    """

    def __init__(self, backbone: str, num_classes: int, optimizer: Callable[..., torch.optim.Optimizer],
                 schedule: str = "step", lr_milestones: Sequence[float] = (0.3, 0.6),
                 lr_gamma: float = 0.1, warmup_steps: int = 0, warmup_lr: float = 0.0, min_lr: float = 0.0,
                 mixup: Mapping | None = None):
        super().__init__()
        if schedule not in ("step", "cosine"):
            raise ConfigError(f"pretrain.schedule must be 'step' or 'cosine', got {schedule!r}")
        self.save_hyperparameters(ignore=["optimizer"])
        self.model = timm.create_model(backbone, pretrained=False, num_classes=num_classes)
        self.optimizer_factory = optimizer
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
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        if self.hparams.schedule == "step":
            milestones = sorted({max(1, int(f * total)) for f in self.hparams.lr_milestones})
            sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones, gamma=self.hparams.lr_gamma)
        else:
            warm, base = self.hparams.warmup_steps, opt.param_groups[0]["lr"]
            start, floor = self.hparams.warmup_lr / base, self.hparams.min_lr / base  # as fractions of lr

            def factor(step: int) -> float:
                if step < warm:
                    return start + (1 - start) * (step + 1) / warm
                progress = min(1.0, (step - warm) / max(1, total - warm))
                return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

            sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        # "name": what LearningRateMonitor logs it as
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "name": "lr"}}

"""LightningModules: a timm backbone trained from scratch on fractals, by one of three objectives.

* ``FractalClassifier``: cross entropy over fractal classes (the study's), or with ``multilabel``
  one binary cross entropy per class on multi-instance images (Anderson & Farrell).
* ``FractalSimCLR``: self-supervised, SimCLR's NT-Xent between two views of the same fractal
  through a projection head (Chen et al., ICML 2020); no labels used.

Whatever the objective, ``module.model`` is the plain timm network the export writes, so every
detector takes it the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import lightning as L
import timm
import torch
import torch.nn.functional as F
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from torch import nn
from torchmetrics.classification import MulticlassAccuracy, MultilabelAveragePrecision

from console.errors import ConfigError


class _Optimised(L.LightningModule):
    """``optimizer(params)`` and ``schedule(optimizer, total_steps)`` (``fractal_pretrain.schedules``;
    stepped every optimiser step) build the optimisation."""

    def __init__(self, optimizer: Callable[..., torch.optim.Optimizer],
                 schedule: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None):
        super().__init__()
        self.optimizer_factory, self.schedule_factory = optimizer, schedule

    def configure_optimizers(self):
        opt = self.optimizer_factory(self.parameters())
        if self.schedule_factory is None:
            return opt
        sched = self.schedule_factory(opt, total_steps=max(int(self.trainer.estimated_stepping_batches), 1))
        # "name": what LearningRateMonitor logs it as
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "name": "lr"}}


class FractalClassifier(_Optimised):
    """Any timm architecture, random init; the FractalDB / Ugwu et al. recipe by default.

    MixUp/CutMix (the follow-up's heavy recipe) act on whole batches and change the loss, so they
    live here; they draw from the seeded main-process generators, whatever the loader workers.
    MixUp/CutMix hit a batch with probability ``mixup.prob`` (OFDB-4AD: 0.8), CutMix instead of MixUp
    with ``mixup.switch_prob``. ``multilabel``: targets are one 0/1 value per class (multi-instance
    images), the loss a binary cross entropy per class, the metric the mean average precision over
    classes (``mAP``; chance is the classes' base rate, where accuracy would be ~0.9 for answering
    "absent" everywhere).
    """

    def __init__(self, backbone: str, num_classes: int, optimizer: Callable[..., torch.optim.Optimizer],
                 schedule: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
                 mixup: Mapping | None = None, multilabel: bool = False):
        super().__init__(optimizer, schedule)
        self.save_hyperparameters(ignore=["optimizer", "schedule"])
        self.model = timm.create_model(backbone, pretrained=False, num_classes=num_classes)
        mix = dict(mixup or {})
        mixing = mix.get("mixup_alpha", 0.0) > 0 or mix.get("cutmix_alpha", 0.0) > 0
        if multilabel and mixing:
            raise ConfigError("MixUp/CutMix mix single-class targets; turn pretrain.mixup off for the "
                              "multilabel objective")
        self.mixup = (Mixup(mixup_alpha=mix.get("mixup_alpha", 0.0), cutmix_alpha=mix.get("cutmix_alpha", 0.0),
                            label_smoothing=mix.get("label_smoothing", 0.0), prob=mix.get("prob", 1.0),
                            switch_prob=mix.get("switch_prob", 0.5), num_classes=num_classes)
                      if mixing else None)
        self.label_smoothing = mix.get("label_smoothing", 0.0)
        self.multilabel = multilabel
        # one per split: the running state of training must not mix with validation's. Binned AP
        # (100 thresholds): constant memory however many images an epoch holds
        metric = ((lambda: MultilabelAveragePrecision(num_classes, average="macro", thresholds=100)) if multilabel
                  else (lambda: MulticlassAccuracy(num_classes, average="micro")))
        self.metric_name = "mAP" if multilabel else "acc"
        self.train_metric, self.val_metric = metric(), metric()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def loss(self, logits: torch.Tensor, y: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
        if self.multilabel:
            return F.binary_cross_entropy_with_logits(logits, y)
        return F.cross_entropy(logits, y, label_smoothing=label_smoothing)

    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.mixup is not None:
            x_mixed, soft = self.mixup(x, y)
            logits = self(x_mixed)
            loss = SoftTargetCrossEntropy()(logits, soft)
        else:
            logits = self(x)
            loss = self.loss(logits, y, self.label_smoothing)
        self._log("train", loss, logits, y)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self._log("val", self.loss(logits, y), logits, y)

    def _log(self, split: str, loss, logits, y) -> None:
        metric = getattr(self, f"{split}_metric")
        metric(logits, y.int() if self.multilabel else y)  # Lightning syncs and resets it per epoch
        on_step = split == "train"
        self.log(f"{split}_loss", loss, prog_bar=True, on_step=on_step, on_epoch=True, sync_dist=True)
        self.log(f"{split}_{self.metric_name}", metric, prog_bar=True, on_step=on_step, on_epoch=True)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float,
            gather: Callable[[torch.Tensor], torch.Tensor] | None = None, rank: int = 0) -> torch.Tensor:
    """SimCLR's NT-Xent: each embedding must pick its own pair's other view among the 2N - 1 others
    of the batch (cosine similarity / temperature, cross entropy). Written out rather than taken from
    ``lightly``: its 1.6 release needs ``pytorch_lightning``, a second copy of Lightning beside
    ``lightning``, for these six lines.

    Data-parallel training: ``gather`` maps this process's tensor to every process's, stacked on a
    new first dimension of size world (gradients flowing back to each process's part: Lightning's
    ``all_gather(..., sync_grads=True)``), and ``rank`` is this process's index in it. The negatives are then the 2N - 1 others of the GLOBAL batch, as in
    SimCLR, and the loss is this process's pairs' mean: its mean over processes is the one-process
    loss of the whole batch, and so is the gradient (all_gather's backward sums each process's
    contributions to every part, DDP averages over processes). Per-device negatives would make the
    task, the loss and the learnt features depend on the number of GPUs. Every process must hold
    the same number of pairs (the pre-training sampler pads the shards to equal length).
    """
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = len(z1)
    if gather is None:
        sim = z @ z.T / temperature
        sim.fill_diagonal_(float("-inf"))  # never oneself
        target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
        return F.cross_entropy(sim, target)
    views = gather(torch.stack([z[:n], z[n:]]))  # [world, 2, n, d]
    world = len(views)
    everyone = views.transpose(0, 1).reshape(2 * world * n, -1)  # all first views, then all second views
    sim = z @ everyone.T / temperature  # this process's 2n embeddings against the global 2N
    # where this process's embeddings sit in the global order: themselves (masked), and their partners
    first = torch.arange(n, device=z.device) + rank * n
    own = torch.cat([first, first + world * n])
    sim[torch.arange(2 * n, device=z.device), own] = float("-inf")
    target = torch.cat([first + world * n, first])
    return F.cross_entropy(sim, target)


class FractalSimCLR(_Optimised):
    """Self-supervised pre-training on fractals: two views of one fractal (``data.TwoViews``: two
    independent renders of the same system, or augmentations of the same image) through the backbone
    and a projection head, NT-Xent between them. The head is dropped at export, as in SimCLR."""

    def __init__(self, backbone: str, optimizer: Callable[..., torch.optim.Optimizer],
                 schedule: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
                 projection_dim: int = 128, temperature: float = 0.5):
        super().__init__(optimizer, schedule)
        self.save_hyperparameters(ignore=["optimizer", "schedule"])
        self.model = timm.create_model(backbone, pretrained=False, num_classes=0)  # pooled features
        width = self.model.num_features
        self.head = nn.Sequential(nn.Linear(width, width), nn.ReLU(inplace=True), nn.Linear(width, projection_dim))
        self.temperature = temperature

    def step(self, batch, split: str) -> torch.Tensor:
        (x1, x2), _ = batch
        z = self.head(self.model(torch.cat([x1, x2])))
        # data-parallel: negatives from every process's batch, as in SimCLR (see nt_xent)
        gather = (lambda t: self.all_gather(t, sync_grads=True)) if self.trainer.world_size > 1 else None
        loss = nt_xent(*z.chunk(2), self.temperature, gather, self.global_rank)
        on_step = split == "train"
        self.log(f"{split}_loss", loss, prog_bar=True, on_step=on_step, on_epoch=True, sync_dist=True)
        return loss

    def training_step(self, batch, batch_idx):
        return self.step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self.step(batch, "val")

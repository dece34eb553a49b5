"""Learning-rate schedules as ``schedule(optimizer, total_steps)``.

The pipeline configures them as Hydra partials (``conf/optim/schedule/``) and the LightningModule
completes the call with its optimiser and the run's number of optimiser steps, known only once the
Trainer starts. Torch's schedulers count absolute steps; the study places its turns at fractions of
the run (epochs 30 and 60 of 100), so these two wrappers convert, and that is all they add.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def step_decay(optimizer: torch.optim.Optimizer, total_steps: int, milestones: Sequence[float] = (0.3, 0.6),
               gamma: float = 0.1) -> torch.optim.lr_scheduler.MultiStepLR:
    """The study's schedule: lr x ``gamma`` at each fraction ``milestones`` of ``total_steps``."""
    steps = sorted({max(1, int(f * total_steps)) for f in milestones})
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, steps, gamma=gamma)


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: float = 0,
                  warmup_lr: float = 0.0, min_lr: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from ``warmup_lr`` over ``warmup_steps``, then cosine down to ``min_lr`` at
    ``total_steps`` (OFDB-4AD: from 1e-6, down to 1e-5). A ``warmup_steps`` below 1 is a fraction of
    ``total_steps`` (rounded), so one recipe warms up alike at every budget.

    One closed-form factor rather than ``SequentialLR(LinearLR, CosineAnnealingLR)``: torch's chained
    forms update the rate recursively and drift from the formula in the last bits."""
    if 0 < warmup_steps < 1:
        warmup_steps = round(warmup_steps * total_steps)
    base = optimizer.param_groups[0]["lr"]
    start, floor = warmup_lr / base, min_lr / base  # as fractions of the optimiser's lr

    def factor(step: int) -> float:
        if step < warmup_steps:
            return start + (1 - start) * (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

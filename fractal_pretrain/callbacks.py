"""Lightning callbacks of pre-training that no library provides (metrics and the learning rate go
through Lightning's logger and LearningRateMonitor)."""

from __future__ import annotations

import random
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torchvision.utils import make_grid, save_image


class RngState(L.Callback):
    """Puts the global RNG states (torch, numpy, python; CUDA too) into every checkpoint and restores
    them on resume. Lightning checkpoints carry none: a resumed run would restart the global streams
    from the seed, so the random crops (and MixUp/CutMix draws) after the resume point would differ
    from an uninterrupted run. Stored as tensors and plain lists, so the checkpoint still loads with
    ``torch.load``'s ``weights_only`` default."""

    def state_dict(self) -> dict:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        version, py_state, py_gauss = random.getstate()
        return {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
                "python": [version, list(py_state), py_gauss]}

    def load_state_dict(self, state: dict) -> None:
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
        version, py_state, py_gauss = state["python"]
        random.setstate((version, tuple(py_state), py_gauss))


class FirstBatchAndDataWait(L.Callback):
    """Saves the first training batch as the network sees it (de-normalised, 8 per row) to ``path``,
    and adds up how long training waited for data (``data_wait`` seconds: from the end of a step to
    the arrival of the next batch, validation pauses excluded). Rank zero only."""

    def __init__(self, path: Path, mean, std):
        self.path, self.mean, self.std = Path(path), mean, std
        self.data_wait = 0.0
        self._batch_end: float | None = None
        self.grid_path: Path | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self._batch_end is not None:
            self.data_wait += time.perf_counter() - self._batch_end
        if self.grid_path is None and trainer.global_rank == 0:
            x = batch[0]
            if isinstance(x, list | tuple):  # self-supervised pairs: each image next to its other view
                x = torch.stack([v[:16] for v in x], dim=1).flatten(0, 1)
            x = x[:32].detach().float().cpu()
            x = x * torch.tensor(self.std).view(-1, 1, 1) + torch.tensor(self.mean).view(-1, 1, 1)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            save_image(make_grid(x.clamp(0, 1), nrow=8, padding=0), self.path)
            self.grid_path = self.path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._batch_end = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        self._batch_end = None  # the pause between epochs includes validation, not data loading

"""Lightning callbacks of pre-training that no library provides."""

from __future__ import annotations

import random

import lightning as L
import numpy as np
import torch


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

"""Fractal textures for the synthetic validation anomalies (the FractalAD idea, arXiv 2301.12739).

anomalib's synthetic validation split blends texture images into Perlin-noise masks. Its textures
come from ``./datasets/dtd``, a folder relative to the working directory, with plain Perlin noise
when that folder is absent: the validation split then depends on where the command is started.
This module renders a fixed, seeded set of fractal textures instead (colour IFS renders over a
plasma background, so every pixel is texture), written once into a folder and byte-identical
wherever and however often it is built.

The textures' IFS systems must share nothing with any pre-training bank: a validation anomaly made
of the very fractals a backbone was trained on biases every validation quantity of the fractal arm
(format 1 drew them with ``sample_bank``'s own streams, so for seed 0 all of them were systems of
the seed-0 bank). Texture ``i`` draws from ``SeedSequence(seed, spawn_key=(TEXTURE_STREAM, i))``:
a bank's stream ``i`` is ``SeedSequence([seed, 0x1F5, i])`` with no spawn key, and numpy mixes a
spawn key in after the entropy padded to four words, so no bank seed reaches these streams
(tests/test_texture_streams.py checks every shipped fractal recipe and seeds 0-9 system by system).

``seed`` picks the set: ``VALIDATION_SEED`` for the validation anomalies, ``TRAINING_SEED`` for the
anomalies detectors train on; the two share no system (tests/evaluation/test_texture_streams.py).

    <folder>/textures.json   generation parameters (reuse check)
    <folder>/000.png ...     ``count`` RGB textures of ``size`` x ``size`` pixels
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
from filelock import FileLock
from PIL import Image

from fractal_pretrain.fractals.ifs import sample_system
from fractal_pretrain.fractals.render import RenderConfig, derive_key, render_key

FORMAT_VERSION = 2  # 2: systems from TEXTURE_STREAM, apart from every pre-training bank
PARAMS_FILE = "textures.json"
TEXTURE_STREAM = 0x7E57  # the spawn-key word naming the texture stream; no bank stream carries one
# Two fixed sets of the same stream: the synthetic validation anomalies' textures, and the textures
# of the synthetic anomalies a detector trains on (GLASS's local anomaly synthesis). Apart, so that
# the validation split, which selects such a detector's epoch, never shows it a texture it was
# trained to find (validation then measures unseen textures of the same family, not memorisation).
VALIDATION_SEED = 0
TRAINING_SEED = 1


def texture_system(i: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The IFS system (A, b) of texture ``i``: an Anderson & Farrell system from the texture stream."""
    return sample_system(np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(TEXTURE_STREAM, i))))


def write_fractal_textures(folder: str | Path, count: int = 64, size: int = 256, seed: int = 0) -> Path:
    """Render ``count`` fractal textures into ``folder`` (reused when it holds these parameters'
    textures; built in a sibling folder and renamed into place, so never half-written)."""
    folder = Path(folder)
    params = {"format": FORMAT_VERSION, "count": count, "size": size, "seed": seed}
    if _holds(folder, params):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(folder.with_name(folder.name + ".lock")):
        if _holds(folder, params):
            return folder
        tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        cfg = RenderConfig(size=size, n_points=100_000, color=True, patch=True, background=True)
        for i in range(count):
            texture = render_key(*texture_system(i, seed), derive_key(seed, TEXTURE_STREAM, i), cfg)
            Image.fromarray(texture).save(tmp / f"{i:03d}.png")
        (tmp / PARAMS_FILE).write_text(json.dumps(params))
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    return folder


def _holds(folder: Path, params: dict) -> bool:
    marker = folder / PARAMS_FILE
    return marker.is_file() and json.loads(marker.read_text()) == params

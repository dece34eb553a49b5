"""Fractal textures for the synthetic validation anomalies (the FractalAD idea, arXiv 2301.12739).

anomalib's synthetic validation split blends texture images into Perlin-noise masks. Its textures
come from ``./datasets/dtd``, a folder relative to the working directory, with plain Perlin noise
when that folder is absent: the validation split then depends on where the command is started.
This module renders a fixed, seeded set of fractal textures instead (colour IFS renders over a
plasma background, so every pixel is texture), written once into a folder and byte-identical
wherever and however often it is built.

    <folder>/textures.json   generation parameters (reuse check)
    <folder>/000.png ...     ``count`` RGB textures of ``size`` x ``size`` pixels
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from filelock import FileLock
from PIL import Image

from fractals.ifs import sample_bank
from fractals.render import RenderConfig, derive_key, render_key

FORMAT_VERSION = 1
PARAMS_FILE = "textures.json"


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
        bank = sample_bank(count, 1, seed=seed)
        cfg = RenderConfig(size=size, n_points=100_000, color=True, patch=True, background=True)
        for i in range(count):
            Image.fromarray(render_key(*bank.system(i), derive_key(seed, i), cfg)).save(tmp / f"{i:03d}.png")
        (tmp / PARAMS_FILE).write_text(json.dumps(params))
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    return folder


def _holds(folder: Path, params: dict) -> bool:
    marker = folder / PARAMS_FILE
    return marker.is_file() and json.loads(marker.read_text()) == params

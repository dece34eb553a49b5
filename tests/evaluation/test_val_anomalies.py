"""The synthetic validation anomalies: fractal textures, the same split from any working directory."""

from __future__ import annotations

import os
import random
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skimage_data

from evaluation.datasets.builtin import make_builtin_dataset
from evaluation.datasets.datamodules import Builtin
from evaluation.datasets.textures import write_fractal_textures
from detectors.fit import synthetic_anomalies_from, validation_draws_apart


@pytest.fixture(scope="module")
def textures(tmp_path_factory) -> Path:
    return write_fractal_textures(tmp_path_factory.mktemp("textures") / "fractal", count=6, size=64)


def test_fractal_textures_are_the_same_bytes_wherever_built_and_fill_the_frame(textures, tmp_path):
    again = write_fractal_textures(tmp_path / "elsewhere", count=6, size=64)
    names = sorted(p.name for p in textures.glob("*.png"))
    assert names == sorted(p.name for p in again.glob("*.png")) and len(names) == 6
    assert all((textures / n).read_bytes() == (again / n).read_bytes() for n in names)
    stamp = (textures / names[0]).stat().st_mtime_ns
    write_fractal_textures(textures, count=6, size=64)  # same parameters: reused as is
    assert (textures / names[0]).stat().st_mtime_ns == stamp
    pixels = np.stack([np.asarray(Image.open(textures / n)) for n in names])
    assert pixels.shape == (6, 64, 64, 3) and (pixels.max(axis=-1) == 0).mean() < 0.05  # texture, not black


def validation_images(root: Path, cwd: Path, textures: Path | None, apart: bool = False,
                      after: list | None = None) -> list[np.ndarray]:
    """The synthetic validation split of the built-in `tiles`, made with ``cwd`` as working directory
    (``apart``: as the detect stage makes it, see ``validation_draws_apart``). ``after`` receives the
    next torch, numpy and python draws once the split is made: what the detector would draw next."""
    datamodule = Builtin(root=root, category="tiles", num_workers=0, val_split_mode="synthetic",
                         val_split_ratio=0.5, seed=0)
    if textures is not None:
        synthetic_anomalies_from(datamodule, textures)
    if apart:
        validation_draws_apart(datamodule)
    here = os.getcwd()
    os.chdir(cwd)
    try:
        L.seed_everything(0)  # as the detect stage does before its datamodule draws
        datamodule.setup()
    finally:
        os.chdir(here)
    if after is not None:
        after.append((torch.rand(4).tolist(), np.random.rand(4).tolist(), random.random()))
    samples = datamodule.val_data.samples.sort_values("image_path")
    abnormal = samples[samples.label_index == 1]
    return [np.asarray(Image.open(p)) for p in abnormal.image_path]


def test_validation_anomalies_are_the_same_from_any_working_directory(textures, tmp_path):
    """anomalib's default reads ./datasets/dtd: started beside a DTD-like folder, its validation
    anomalies change. With the fractal textures they are the same from any directory."""
    root = make_builtin_dataset(tmp_path / "data", image_size=64, n_train=8, n_test_good=2, n_test_defect=1)
    plain, beside_dtd = tmp_path / "plain", tmp_path / "beside_dtd"
    plain.mkdir()
    (beside_dtd / "datasets/dtd").mkdir(parents=True)
    Image.fromarray(skimage_data.astronaut()).save(beside_dtd / "datasets/dtd/astronaut.png")

    ours = [validation_images(root, cwd, textures) for cwd in (plain, beside_dtd)]
    assert len(ours[0]) == 2 and all(np.array_equal(a, b) for a, b in zip(*ours, strict=True))
    default = [validation_images(root, cwd, None) for cwd in (plain, beside_dtd)]
    assert not all(np.array_equal(a, b) for a, b in zip(*default, strict=True)), "the cwd matters to anomalib"
    assert not all(np.array_equal(a, b) for a, b in zip(ours[0], default[0], strict=True)), "textures used"


def test_how_validation_anomalies_are_drawn_leaves_the_detectors_draws_alone(textures, tmp_path):
    """The detector's draws after the split (PatchCore's coreset, loader order) are the same with
    fractal textures or anomalib's noise: a validation setting cannot move test figures. Without
    ``validation_draws_apart`` they differ; with it the split's own images are unchanged."""
    root = make_builtin_dataset(tmp_path / "data", image_size=64, n_train=8, n_test_good=2, n_test_defect=1)
    apart, shared = [], []
    images = {t: validation_images(root, tmp_path, t, apart=True, after=apart) for t in (textures, None)}
    for t in (textures, None):
        validation_images(root, tmp_path, t, after=shared)
    assert apart[0] == apart[1]
    assert shared[0] != shared[1], "the split draws from the detector's streams without the fix"
    assert all(np.array_equal(a, b) for a, b in
               zip(images[textures], validation_images(root, tmp_path, textures), strict=True))

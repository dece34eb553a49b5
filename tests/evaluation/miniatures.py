"""Tiny fake copies of the folder layouts of MVTec AD 2, Real-IAD and anomalib's ``Folder`` datasets.

Each writes a few 64 px images (striped texture; a defect is a bright square with its mask) in the
exact structure the real dataset or anomalib's loader expects. Nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from test_dataset_layouts import N_TEST_GOOD, N_TRAIN, _image, _mask

N_BAD = 4


def make_folder(root: Path, masks: bool = True) -> Path:
    """anomalib Folder: good/ (train), good_test/, defect/<kind>/ (nested: read recursively), masks/<kind>/."""
    for i in range(N_TRAIN):
        _image(root / "good" / f"{i:03d}.png", i)
    for i in range(N_TEST_GOOD):
        _image(root / "good_test" / f"{i:03d}.png", 100 + i)
    for i in range(N_BAD):
        kind = ("crack", "hole")[i % 2]
        m = _image(root / "defect" / kind / f"{i:03d}.png", 200 + i, defect=True)
        if masks:
            _mask(root / "masks" / kind / f"{i:03d}.png", m)
    return root


def make_mvtec_ad2(root: Path, category: str = "sheet_metal") -> Path:
    """MVTec AD 2: train/good, validation/good, test_public/{good,bad,ground_truth/bad}, test_private*/."""
    c = root / category
    for i in range(N_TRAIN):
        _image(c / "train/good" / f"{i:03d}_regular.png", i)
    for i in range(2):
        _image(c / "validation/good" / f"{i:03d}_regular.png", 50 + i)
    for i in range(N_TEST_GOOD):
        _image(c / "test_public/good" / f"{i:03d}_regular.png", 100 + i)
    for i in range(N_BAD):
        m = _image(c / "test_public/bad" / f"{i:03d}_regular.png", 200 + i, defect=True)
        _mask(c / "test_public/ground_truth/bad" / f"{i:03d}_regular_mask.png", m)
    for split in ("test_private", "test_private_mixed"):  # no ground truth; never read for metrics
        for i in range(2):
            _image(c / split / f"{i:03d}_regular.png", 300 + i)
    return root


def make_real_iad(root: Path, category: str = "audiojack", resolution: str = "256") -> Path:
    """Real-IAD: realiad_<res>/<cat>/{OK,NG/<defect>}/S<id>/<cat>_<id>_..._C<view>.jpg, masks .png beside
    the anomalous images, and the split JSON realiad_jsons/realiad_jsons/<cat>.json."""
    c = root / f"realiad_{resolution}" / category
    entries: dict[str, list] = {"train": [], "test": []}

    def add(split, sample, view, defect=None):
        cls = defect or "OK"
        rel = (f"NG/{defect}" if defect else "OK") + f"/S{sample:04d}/{category}_{sample:04d}_{cls}_C{view}.jpg"
        m = _image(c / rel, 10 * sample + view, defect=bool(defect))
        mask = None
        if defect:
            mask = rel.removesuffix(".jpg") + ".png"
            _mask(c / mask, m)
        entries[split].append({"category": category, "anomaly_class": cls, "image_path": rel, "mask_path": mask})

    for i in range(N_TRAIN):
        add("train", 1 + i // 2, 1 + i % 2)
    for i in range(N_TEST_GOOD):
        add("test", 20 + i, 1)
    for i in range(N_BAD):
        add("test", 30 + i // 2, 1 + i % 2, defect=("AK", "QS")[i % 2])
    meta = {"meta": {"prefix": "", "normal_class": "OK"}, **entries}
    path = root / "realiad_jsons/realiad_jsons" / f"{category}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(meta, indent=1))
    return root


def break_image(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:40])  # a truncated file with a valid header


def blank_mask(path: Path, size: tuple[int, int]) -> None:
    Image.fromarray(np.zeros(size[::-1], np.uint8)).save(path)

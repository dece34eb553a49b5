"""VisA: anomalib's converted ``visa_pytorch/`` or the raw download with its split CSV."""

from __future__ import annotations

from pathlib import Path

from evaluation.datasets.layouts.common import DATASETS, WHERE_TO_GET, DatasetError, probe
from evaluation.datasets.layouts.mvtec import validate_mvtec

VISA_CSV_COLUMNS = ("object", "split", "label", "image", "mask")


def validate_visa(root: Path, category: str) -> Path:
    """VisA: either anomalib's converted ``<root>/visa_pytorch/<category>`` or the raw download.

    Raw: ``<root>/<category>/Data/Images/{Normal,Anomaly}/*.JPG``, ``.../Data/Masks/Anomaly/*.png`` and
    ``<root>/split_csv/1cls.csv``, which anomalib's ``Visa.prepare_data`` copies into the MVTec layout
    under ``visa_pytorch/`` (every category listed in the CSV, so every file it names must exist).
    """
    converted = root / "visa_pytorch" / category
    if converted.is_dir():
        return validate_mvtec(converted, "visa", extensions=(".png", ".jpg", ".JPG"), mask_dir=None)
    folder = root / category
    if not folder.is_dir():
        present = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise DatasetError(
            f"Category folder {folder} not found (dataset 'visa', category {category!r}), and no converted "
            f"{converted}. Folders present in {root}: {', '.join(present[:20]) or 'none'}. "
            f"{WHERE_TO_GET['visa']}")
    split_csv = root / "split_csv" / "1cls.csv"
    if not split_csv.is_file():
        raise DatasetError(
            f"Missing VisA split file {split_csv}. It ships with the VisA archive (split_csv/1cls.csv) and "
            f"defines the official 1-class train/test split that anomalib converts; restore it.")
    import csv

    with split_csv.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows or tuple(c.strip() for c in rows[0]) != VISA_CSV_COLUMNS:
        raise DatasetError(
            f"{split_csv} does not start with the header {','.join(VISA_CSV_COLUMNS)} (got "
            f"{','.join(rows[0]) if rows else 'an empty file'}); restore the original file from the archive.")
    mine = {"train": 0, "test": 0}
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(VISA_CSV_COLUMNS):
            raise DatasetError(f"{split_csv} line {line} has {len(row)} fields, expected 5: {row}")
        obj, split, label, image, mask = row
        where = f"{split_csv} line {line}"
        if obj not in DATASETS["visa"] or split not in mine or label not in ("normal", "anomaly"):
            raise DatasetError(f"{where}: unexpected row {row} (object must be a VisA category, split "
                               f"train/test, label normal/anomaly); restore the original file.")
        if not (root / image).is_file():
            raise DatasetError(f"{where} names image {root / image}, which does not exist. anomalib converts "
                               f"every category in the CSV, so all must be present: re-extract VisA.")
        if split == "test" and label == "anomaly" and not (mask and (root / mask).is_file()):
            raise DatasetError(f"{where}: anomalous test image {image} has no mask file "
                               f"({root / mask if mask else 'empty mask column'}); re-extract VisA.")
        if obj != category:
            continue
        mine[split] += 1
        sizes = [probe(root / image)]
        if sizes[0][1] is not None:
            raise DatasetError(f"Cannot read image {root / image} ({sizes[0][1]}), named on {where}. The file "
                               f"is corrupt or truncated; re-download the dataset or replace this file.")
        if mask:
            m = probe(root / mask)
            if m[1] is not None:
                raise DatasetError(f"Cannot read mask {root / mask} ({m[1]}), named on {where}. The file is "
                                   f"corrupt or truncated; re-download the dataset or replace this file.")
            if m[0] != sizes[0][0]:
                raise DatasetError(
                    f"Mask {root / mask} is {m[0][0]}x{m[0][1]} but its image {root / image} is "
                    f"{sizes[0][0][0]}x{sizes[0][0][1]} (width x height); a mask must match its image. "
                    f"Replace the mask (or re-download the dataset).")
    for split, n in mine.items():
        if n == 0:
            raise DatasetError(f"{split_csv} lists no {split} images for category {category!r}: the {split} "
                               f"split is missing. Restore the original split file.")
    return folder

"""Dataset registry and on-disk layout validation, run before any model work.

A wrong ``dataset.root``, a half-extracted archive or one truncated PNG otherwise surfaces minutes
later as an obscure error deep inside anomalib or a DataLoader worker. ``validate_layout`` checks the
MVTec AD folder layout up front and raises ``DatasetError`` naming the problem, the offending path
or value, and the fix::

    <root>/<category>/train/good/*.png
    <root>/<category>/test/<good|defect>/*.png
    <root>/<category>/ground_truth/<defect>/<stem>_mask.png   (or <stem>.png)

On top of readability and mask sizes, the checks cover what anomalib's loaders get wrong silently or
cryptically: masks are paired with defect images by sorted position (so every defect image needs
exactly one mask and no mask may be left over), only ``.png`` is read (other formats are skipped),
and a missing root or category makes ``prepare_data`` start a download. Per dataset:

* ``mvtec``/``builtin``: the layout above; ``mvtec`` takes any category folder (the user's own parts).
* ``mvtec_ad2``: ``train/good``, ``test_public/{good,bad}``, ``test_public/ground_truth/bad/<stem>_mask.png``.
* ``real_iad``: the split JSON (``realiad_jsons/...``) and every file it names under ``realiad_<res>/<category>``.
* ``folder``: anomalib's ``Folder`` (``normal_dir``, ``abnormal_dir``, ``normal_test_dir``, optional
  ``mask_dir``), see ``validate_folder``.
* ``mvtec_loco``: as above, but masks are folders, ``ground_truth/<defect>/<stem>/000.png, 001.png ...``.
* ``visa``: anomalib's converted ``<root>/visa_pytorch/<category>`` (MVTec layout, .JPG images,
  ``ground_truth/bad/<stem>.png``), or the raw download (``<root>/<category>/Data/...`` plus
  ``<root>/split_csv/1cls.csv``) that anomalib converts on first use; the CSV is checked row by row.
"""

from __future__ import annotations

from pathlib import Path

from evaluation.datasets.layouts.common import DATASETS, DatasetError, dataset_root
from evaluation.datasets.layouts.folder import FOLDER_KEYS, validate_folder
from evaluation.datasets.layouts.mvtec import validate_mvtec
from evaluation.datasets.layouts.mvtec_ad2 import validate_mvtec_ad2
from evaluation.datasets.layouts.mvtec_loco import validate_mvtec_loco
from evaluation.datasets.layouts.real_iad import validate_real_iad
from evaluation.datasets.layouts.visa import validate_visa

__all__ = ["DATASETS", "FOLDER_KEYS", "DatasetError", "validate_folder", "validate_layout", "validate_real_iad"]

# Datasets whose category is any folder under root in their layout (the user's own parts), not only
# the official names.
OPEN_CATEGORIES = ("mvtec", "folder")

def validate_layout(name: str, root: str | Path, category: str) -> Path:
    """Check that ``root/category`` is a readable dataset in ``name``'s layout; return the category folder."""
    if name == "folder":
        raise DatasetError("dataset=folder is described by its *_dir settings: validate it with "
                           "validate_folder(root, normal_dir, abnormal_dir, ...).")
    if name not in DATASETS:
        raise DatasetError(
            f"Unknown dataset name {name!r}. Valid names: {', '.join(DATASETS)}. Set dataset.name to one of them."
        )
    valid = DATASETS[name]
    if name in OPEN_CATEGORIES:
        if not category or category in (".", "..") or "/" in category or "\\" in category:
            raise DatasetError(f"dataset.category={category!r} is not a folder name. Set it to the name of one "
                               f"category folder under dataset.root (e.g. dataset.category=bottle).")
    elif category not in valid:
        raise DatasetError(
            f"Unknown category {category!r} for dataset {name!r}. Valid categories: {', '.join(valid)}. "
            f"Set dataset.category to one of them."
        )

    root = dataset_root(root, name)

    if name == "visa":
        return validate_visa(root, category)
    folder = root / category
    if not folder.is_dir() and name in OPEN_CATEGORIES:
        raise DatasetError(_unknown_own_category(root, category))
    if not folder.is_dir():
        present = sorted(p.name for p in root.iterdir() if p.is_dir())
        hint = ""
        if (root / "train").is_dir() or (root / "test").is_dir():
            hint = (
                f" {root} itself looks like a category folder (it has train/ or test/); "
                f"set dataset.root to its parent {root.parent}."
            )
        raise DatasetError(
            f"Category folder {folder} not found (dataset {name!r}, category {category!r}). "
            f"Folders present in {root}: {', '.join(present[:20]) or 'none'}{' ...' if len(present) > 20 else ''}."
            f"{hint} Point dataset.root at the folder that holds the category folders, or re-extract "
            f"the dataset if this category is missing."
        )

    if name == "mvtec_loco":
        return validate_mvtec_loco(folder)
    if name == "mvtec_ad2":
        return validate_mvtec_ad2(folder)
    return validate_mvtec(folder, name)


def _unknown_own_category(root: Path, category: str) -> str:
    """MVTec layout with the user's own categories: list the category folders that are there."""
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and (p / "train").is_dir() and (p / "test").is_dir())
    message = (f"Unknown category {category!r} for dataset 'mvtec': there is no folder {root / category}. "
               f"Categories found under {root} (folders with train/ and test/): {', '.join(found) or 'none'}.")
    official = DATASETS["mvtec"]
    if any(name in official for name in found):  # looks like (part of) MVTec AD
        missing = [name for name in official if name not in found]
        message += (f" MVTec AD's categories are {', '.join(official)}"
                    f"{f' ({len(missing)} missing here)' if missing else ''}.")
    if (root / "train").is_dir() and (root / "test").is_dir():
        message += (f" {root} itself looks like a category folder (it has train/ and test/); set "
                    f"dataset.root={root.parent} dataset.category={root.name}.")
    return message + (" Set dataset.category to one of the folders found, or dataset.root to the folder that "
                      "holds your category folder (<root>/<category>/train/good, test/good, test/<defect>, "
                      "ground_truth/<defect>).")

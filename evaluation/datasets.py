"""Dataset registry and on-disk layout validation, run before any model work.

A wrong ``dataset.root``, a half-extracted archive or one truncated PNG otherwise surfaces minutes
later as an obscure error deep inside anomalib or a DataLoader worker. ``validate_layout`` checks the
MVTec AD folder layout up front and raises ``DatasetError`` naming the problem, the offending path
or value, and the fix::

    <root>/<category>/train/good/*.png
    <root>/<category>/test/<good|defect>/*.png
    <root>/<category>/ground_truth/<defect>/<stem>_mask.png   (or <stem>.png)

VisA (after anomalib's conversion to the MVTec layout) and MVTec LOCO get the same MVTec-style checks
for now; their special layouts are validated later.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from evaluation.builtin import CATEGORIES as BUILTIN_CATEGORIES

DATASETS: dict[str, tuple[str, ...]] = {
    "mvtec": (
        "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
        "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
    ),
    "visa": (
        "candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2",
        "pcb1", "pcb2", "pcb3", "pcb4", "pipe_fryum",
    ),
    "mvtec_loco": ("breakfast_box", "juice_bottle", "pushpins", "screw_bag", "splicing_connectors"),
    "builtin": tuple(BUILTIN_CATEGORIES),
}  # fmt: skip

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

_WHERE_TO_GET = {
    "mvtec": (
        "Download MVTec AD from the MVTec website (the 'MVTec AD' dataset page), extract it and set "
        "dataset.root=/abs/path to the folder that holds the category folders (bottle/, cable/, ...)."
    ),
    "visa": (
        "Download VisA from amazon-science/spot-diff on GitHub, convert it to the MVTec layout with "
        "anomalib's VisA preparation (anomalib.data.Visa prepare_data, which writes a visa_pytorch/ "
        "folder) and set dataset.root=/abs/path to that converted folder."
    ),
    "mvtec_loco": (
        "Download MVTec LOCO AD from the MVTec website (the 'MVTec LOCO AD' dataset page), extract it "
        "and set dataset.root=/abs/path to the folder that holds the category folders."
    ),
    "builtin": (
        "The built-in dataset is generated automatically by the pipeline "
        "(evaluation.builtin.make_builtin_dataset) before validation, so this folder should exist; "
        "check that dataset.root points where the pipeline generated it, or generate it by calling "
        "make_builtin_dataset(root)."
    ),
}

# Below this many files, a thread pool costs more than it saves.
_PARALLEL_MIN_FILES = 32


class DatasetError(ValueError):
    """The dataset name, category or on-disk layout is wrong; the message says what and how to fix it."""


def validate_layout(name: str, root: str | Path, category: str) -> Path:
    """Check that ``root/category`` is a readable MVTec-style dataset; return the category folder."""
    if name not in DATASETS:
        raise DatasetError(
            f"Unknown dataset name {name!r}. Valid names: {', '.join(DATASETS)}. Set dataset.name to one of them."
        )
    valid = DATASETS[name]
    if category not in valid:
        raise DatasetError(
            f"Unknown category {category!r} for dataset {name!r}. Valid categories: {', '.join(valid)}. "
            f"Set dataset.category to one of them."
        )

    root = Path(root).expanduser()
    if not root.is_dir():
        problem = "is a file, not a folder" if root.exists() else "does not exist"
        raise DatasetError(f"Dataset root {root} {problem} (dataset {name!r}). {_WHERE_TO_GET[name]}")

    folder = root / category
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

    train_good = folder / "train" / "good"
    if not train_good.is_dir():
        raise DatasetError(
            f"Missing folder {train_good} (normal training images). The dataset is incomplete or not in "
            f"MVTec layout (<root>/<category>/train/good/*.png); re-extract or re-download it."
        )
    if not _images(train_good):
        raise DatasetError(
            f"Folder {train_good} holds no images ({'/'.join(e[1:] for e in IMAGE_EXTENSIONS)}). "
            f"The dataset is incomplete; re-extract or re-download it."
        )

    test = folder / "test"
    if not test.is_dir():
        raise DatasetError(
            f"Missing folder {test} (test images in test/good and test/<defect>). The dataset is "
            f"incomplete or not in MVTec layout; re-extract or re-download it."
        )
    test_dirs = sorted(d for d in test.iterdir() if d.is_dir() and _images(d))
    if not test_dirs:
        raise DatasetError(
            f"Folder {test} holds no sub-folder with images (expected test/good/ and test/<defect>/). "
            f"The dataset is incomplete; re-extract or re-download it."
        )

    sizes = _check_readable(folder)

    ground_truth = folder / "ground_truth"
    for defect_dir in test_dirs:
        if defect_dir.name == "good":
            continue
        for image in _images(defect_dir):
            for mask in (
                ground_truth / defect_dir.name / f"{image.stem}_mask.png",
                ground_truth / defect_dir.name / f"{image.stem}.png",
            ):
                if not mask.is_file():
                    continue
                image_size, mask_size = sizes.get(image) or _size(image), sizes.get(mask) or _size(mask)
                if image_size != mask_size:
                    raise DatasetError(
                        f"Mask {mask} is {mask_size[0]}x{mask_size[1]} but its image {image} is "
                        f"{image_size[0]}x{image_size[1]} (width x height); a mask must match its image. "
                        f"Replace the mask (or re-download the dataset)."
                    )
                break
    return folder


def _images(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted (extensions matched case-insensitively)."""
    with os.scandir(folder) as entries:
        return sorted(
            Path(e.path) for e in entries if e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS
        )


def _all_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def _probe(path: Path) -> tuple[tuple[int, int] | None, str | None]:
    """Fully decode one image; return (size, None) or (None, error). PIL releases the GIL while decoding."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.size, None
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
        return None, f"{type(exc).__name__}: {exc}"


def _size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


def _check_readable(folder: Path) -> dict[Path, tuple[int, int]]:
    """Decode every image under ``folder`` (in parallel); raise on the first unreadable one (sorted)."""
    paths = _all_images(folder)
    if len(paths) < _PARALLEL_MIN_FILES:
        results = [_probe(p) for p in paths]
    else:
        with ThreadPoolExecutor(max_workers=min(32, (os.cpu_count() or 1) + 4)) as pool:
            results = list(pool.map(_probe, paths))
    bad = [(p, err) for p, (_, err) in zip(paths, results) if err is not None]
    if bad:
        path, err = bad[0]
        others = f" ({len(bad) - 1} more unreadable image(s) under {folder})" if len(bad) > 1 else ""
        if path.name.startswith("._"):
            fix = "It is a macOS metadata file ('._' prefix) left by extracting the archive; delete it."
        else:
            fix = "The file is corrupt or truncated; re-download the dataset or replace this file."
        raise DatasetError(f"Cannot read image {path} ({err}). {fix}{others}")
    return {p: size for p, (size, _) in zip(paths, results)}

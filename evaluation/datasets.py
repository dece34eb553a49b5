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

* ``mvtec``/``builtin``: the layout above.
* ``mvtec_loco``: as above, but masks are folders, ``ground_truth/<defect>/<stem>/000.png, 001.png ...``.
* ``visa``: anomalib's converted ``<root>/visa_pytorch/<category>`` (MVTec layout, .JPG images,
  ``ground_truth/bad/<stem>.png``), or the raw download (``<root>/<category>/Data/...`` plus
  ``<root>/split_csv/1cls.csv``) that anomalib converts on first use; the CSV is checked row by row.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from console.errors import UserError
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


class DatasetError(UserError, ValueError):
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

    if name == "visa":
        return _validate_visa(root, category)
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

    if name == "mvtec_loco":
        return _validate_loco(folder)
    return _validate_mvtec(folder, name)


def _validate_mvtec(folder: Path, name: str, extensions: tuple[str, ...] = (".png",),
                    mask_dir: str | None = None) -> Path:
    """MVTec AD layout, as anomalib's loader reads it (also the built-in dataset and converted VisA).

    anomalib pairs masks with defect images by sorted position and reads only ``extensions``, so
    every defect image needs exactly one mask, no mask may be left over, and other formats are
    silently skipped (then positions shift): all three are errors here.
    """
    _check_train_test(folder)
    _check_formats(folder, extensions, name)
    sizes = _check_readable(folder)
    test_dirs = sorted(d for d in (folder / "test").iterdir() if d.is_dir() and _images(d))
    ground_truth = folder / "ground_truth"
    defects = [d for d in test_dirs if d.name != "good"]
    for defect_dir in defects:
        masks_dir = ground_truth / (mask_dir or defect_dir.name)
        if not masks_dir.is_dir():
            raise DatasetError(
                f"Missing folder {masks_dir}: the defect images in {defect_dir} need ground-truth masks there "
                f"(<stem>_mask.png or <stem>.png, one per image). Re-extract the dataset, or remove {defect_dir}.")
        for image in _images(defect_dir):
            candidates = [m for m in (masks_dir / f"{image.stem}_mask.png", masks_dir / f"{image.stem}.png")
                          if m.is_file()]
            if not candidates:
                raise DatasetError(
                    f"No mask for defect image {image}: expected {masks_dir / (image.stem + '_mask.png')} "
                    f"(or {image.stem}.png). anomalib pairs masks with images by position, so one missing mask "
                    f"misaligns all others; add the mask or remove the image.")
            if len(candidates) > 1:
                raise DatasetError(
                    f"Defect image {image} has two masks, {candidates[0].name} and {candidates[1].name}, in "
                    f"{masks_dir}; keep exactly one (delete the other).")
            mask = candidates[0]
            image_size, mask_size = sizes.get(image) or _size(image), sizes.get(mask) or _size(mask)
            if image_size != mask_size:
                raise DatasetError(
                    f"Mask {mask} is {mask_size[0]}x{mask_size[1]} but its image {image} is "
                    f"{image_size[0]}x{image_size[1]} (width x height); a mask must match its image. "
                    f"Replace the mask (or re-download the dataset)."
                )
    if ground_truth.is_dir():
        expected = {(ground_truth / (mask_dir or d.name)) for d in defects}
        stems = {d.name: {p.stem for p in _images(d)} for d in defects}
        for masks_dir in sorted(p for p in ground_truth.iterdir() if p.is_dir()):
            for mask in _all_images(masks_dir):
                stem = mask.stem.removesuffix("_mask")
                owners = [d for d in defects if (ground_truth / (mask_dir or d.name)) == masks_dir]
                if masks_dir not in expected or not any(stem in stems[d.name] for d in owners):
                    raise DatasetError(
                        f"Stray mask {mask}: no test image {folder / 'test' / masks_dir.name / stem}.* belongs to "
                        f"it. anomalib pairs masks with images by position, so an extra mask misaligns the "
                        f"others; delete it (or restore its image).")
    return folder


def _check_train_test(folder: Path, extra_splits: tuple[str, ...] = ()) -> None:
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
    if not (test / "good").is_dir() or not _images(test / "good"):
        raise DatasetError(
            f"Missing or empty folder {test / 'good'} (normal test images). Without it image AUROC is "
            f"undefined; re-extract or re-download the dataset.")
    if all(d.name == "good" for d in test_dirs):
        raise DatasetError(
            f"Folder {test} has no defect sub-folder with images (only test/good). Re-extract or "
            f"re-download the dataset.")
    for split in extra_splits:
        if not (folder / split).is_dir():
            raise DatasetError(f"Missing folder {folder / split}. Re-extract or re-download the dataset.")


def _check_formats(folder: Path, extensions: tuple[str, ...], name: str) -> None:
    """anomalib matches suffixes exactly; an image in another format would be silently dropped."""
    for path in _all_images(folder):
        if path.suffix not in extensions and not path.name.startswith("._"):
            raise DatasetError(
                f"Unsupported image format: {path}. anomalib's {name} loader reads only "
                f"{', '.join(extensions)} files and would silently skip this one; convert it "
                f"(e.g. PIL: Image.open(p).save(p.with_suffix('.png'))) and delete the original.")


def _validate_loco(folder: Path) -> Path:
    """MVTec LOCO AD: several masks per defect image, in ground_truth/<defect>/<stem>/000.png, ..."""
    _check_train_test(folder)
    _check_formats(folder, (".png",), "mvtec_loco")
    sizes = _check_readable(folder)
    ground_truth = folder / "ground_truth"
    defects = [d for d in sorted((folder / "test").iterdir()) if d.is_dir() and d.name != "good" and _images(d)]
    for defect_dir in defects:
        for image in _images(defect_dir):
            masks_dir = ground_truth / defect_dir.name / image.stem
            masks = _images(masks_dir) if masks_dir.is_dir() else []
            if not masks:
                raise DatasetError(
                    f"No mask for defect image {image}: expected one or more masks in {masks_dir}/ "
                    f"(000.png, ...). Re-extract the dataset, or remove the image.")
            for mask in masks:
                if sizes.get(mask, _size(mask)) != sizes.get(image, _size(image)):
                    w, h = sizes.get(mask, _size(mask))
                    iw, ih = sizes.get(image, _size(image))
                    raise DatasetError(
                        f"Mask {mask} is {w}x{h} but its image {image} is {iw}x{ih} (width x height); a mask "
                        f"must match its image. Replace the mask (or re-download the dataset).")
    if ground_truth.is_dir():
        for defect_masks in sorted(p for p in ground_truth.iterdir() if p.is_dir()):
            for masks_dir in sorted(p for p in defect_masks.iterdir() if p.is_dir()):
                image = folder / "test" / defect_masks.name / f"{masks_dir.name}.png"
                if not image.is_file():
                    raise DatasetError(
                        f"Stray mask folder {masks_dir}: its image {image} does not exist. anomalib pairs "
                        f"masks with images by position, so it would misalign the others; delete it.")
    return folder


VISA_CSV_COLUMNS = ("object", "split", "label", "image", "mask")


def _validate_visa(root: Path, category: str) -> Path:
    """VisA: either anomalib's converted ``<root>/visa_pytorch/<category>`` or the raw download.

    Raw: ``<root>/<category>/Data/Images/{Normal,Anomaly}/*.JPG``, ``.../Data/Masks/Anomaly/*.png`` and
    ``<root>/split_csv/1cls.csv``, which anomalib's ``Visa.prepare_data`` copies into the MVTec layout
    under ``visa_pytorch/`` (every category listed in the CSV, so every file it names must exist).
    """
    converted = root / "visa_pytorch" / category
    if converted.is_dir():
        return _validate_mvtec(converted, "visa", extensions=(".png", ".jpg", ".JPG"), mask_dir=None)
    folder = root / category
    if not folder.is_dir():
        present = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise DatasetError(
            f"Category folder {folder} not found (dataset 'visa', category {category!r}), and no converted "
            f"{converted}. Folders present in {root}: {', '.join(present[:20]) or 'none'}. "
            f"{_WHERE_TO_GET['visa']}")
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
        sizes = [_probe(root / image)]
        if sizes[0][1] is not None:
            raise DatasetError(f"Cannot read image {root / image} ({sizes[0][1]}), named on {where}. The file "
                               f"is corrupt or truncated; re-download the dataset or replace this file.")
        if mask:
            m = _probe(root / mask)
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

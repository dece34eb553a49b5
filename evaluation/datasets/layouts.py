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

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from anomalib.data.datasets.image import mvtec_loco, mvtecad, mvtecad2, realiad, visa
from PIL import Image

from evaluation.datasets.builtin import CATEGORIES as BUILTIN_CATEGORIES
from console.errors import UserError

# The official categories: anomalib's own lists, ours for the built-in data.
DATASETS: dict[str, tuple[str, ...]] = {
    "mvtec": tuple(mvtecad.CATEGORIES),
    "visa": tuple(visa.CATEGORIES),
    "mvtec_loco": tuple(mvtec_loco.CATEGORIES),
    "builtin": tuple(BUILTIN_CATEGORIES),
    "mvtec_ad2": tuple(mvtecad2.CATEGORIES),
    "real_iad": tuple(realiad.CATEGORIES),
    "folder": (),  # any data in anomalib's Folder layout; dataset.category is only its display name
}

# Datasets whose category is any folder under root in their layout (the user's own parts), not only
# the official names.
OPEN_CATEGORIES = ("mvtec", "folder")

# torchvision's list, which anomalib's Folder reads; any of them counts as an image for the checks.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".webp")

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
    "mvtec_ad2": (
        "Download MVTec AD 2 from the MVTec website (the 'MVTec AD 2' dataset page), extract it and set "
        "dataset.root=/abs/path to the folder that holds the category folders (can/, fabric/, ...)."
    ),
    "real_iad": (
        "Request access to Real-IAD on Hugging Face (REAL-IAD/Real-IAD), download and extract it and set "
        "dataset.root=/abs/path to the folder that holds realiad_256/ (or realiad_512/, ...) and realiad_jsons/."
    ),
    "folder": (
        "Set dataset.root=/abs/path to the folder that holds your normal_dir, abnormal_dir (and "
        "normal_test_dir, mask_dir) sub-folders, or give those four as absolute paths."
    ),
    "builtin": (
        "The built-in dataset is generated automatically by the pipeline "
        "(evaluation.datasets.builtin.make_builtin_dataset) before validation, so this folder should exist; "
        "check that dataset.root points where the pipeline generated it, or generate it by calling "
        "make_builtin_dataset(root)."
    ),
}


# Below this many files, a thread pool costs more than it saves.
_PARALLEL_MIN_FILES = 32


class DatasetError(UserError, ValueError):
    """The dataset name, category or on-disk layout is wrong; the message says what and how to fix it."""


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

    root = Path(root).expanduser()
    if not root.is_dir():
        problem = "is a file, not a folder" if root.exists() else "does not exist"
        raise DatasetError(f"Dataset root {root} {problem} (dataset {name!r}). {_WHERE_TO_GET[name]}")

    if name == "visa":
        return _validate_visa(root, category)
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
        return _validate_loco(folder)
    if name == "mvtec_ad2":
        return _validate_mvtec_ad2(folder)
    return _validate_mvtec(folder, name)


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
            _check_same_size(candidates[0], image, sizes)
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


def _validate_mvtec_ad2(folder: Path) -> Path:
    """MVTec AD 2 as anomalib's ``MVTecAD2`` reads it (``.png`` only, masks paired by name)::

        <category>/train/good/*.png
        <category>/test_public/{good,bad}/*.png
        <category>/test_public/ground_truth/bad/<stem>_mask.png

    Only the public test split has ground truth; the private ones (``test_private*``) are not read.
    ``validation/`` holds normals only and is not needed: we validate on training normals + synthetic
    anomalies, as for the other datasets.
    """
    test = folder / "test_public"
    for sub, what in ((folder / "train" / "good", "normal training images"), (test / "good", "normal test images"),
                      (test / "bad", "anomalous test images"),
                      (test / "ground_truth" / "bad", "the masks of test_public/bad, <stem>_mask.png")):
        if not sub.is_dir() or not _images(sub):
            raise DatasetError(
                f"{'Empty' if sub.is_dir() else 'Missing'} folder {sub} ({what}). MVTec AD 2's layout is "
                f"<root>/<category>/train/good, test_public/good, test_public/bad and "
                f"test_public/ground_truth/bad; re-extract the dataset.")
    sizes: dict[Path, tuple[int, int]] = {}
    for sub in (folder / "train", test):
        _check_formats(sub, (".png", ".PNG"), "mvtec_ad2")
        sizes.update(_check_readable(sub))
    masks_dir = test / "ground_truth" / "bad"
    images = _images(test / "bad")
    for image in images:
        mask = masks_dir / f"{image.stem}_mask{image.suffix}"
        if not mask.is_file():
            raise DatasetError(f"No mask for anomalous test image {image}: expected {mask}. Add the mask or "
                               f"remove the image (anomalib stops at the first missing mask).")
        _check_same_size(mask, image, sizes)
    stems = {image.stem for image in images}
    for mask in _images(masks_dir):
        if mask.stem.removesuffix("_mask") not in stems:
            raise DatasetError(f"Stray mask {mask}: no test image {test / 'bad' / mask.stem.removesuffix('_mask')}"
                               f"{mask.suffix} belongs to it, so the extraction is incomplete; restore the image "
                               f"or delete the mask.")
    return folder


FOLDER_KEYS = ("normal_dir", "abnormal_dir", "normal_test_dir", "mask_dir")


def validate_folder(root: str | Path | None, normal_dir, abnormal_dir, normal_test_dir=None, mask_dir=None) -> Path:
    """Images in anomalib's ``Folder`` layout: each ``*_dir`` a folder (or list of folders) relative to
    ``root`` or absolute, read recursively; ``mask_dir`` is optional (without it, image-level metrics only).

    anomalib pairs masks with abnormal images by sorted path and only then checks that each image's
    stem is part of its mask's, so with ``mask_dir`` every abnormal image needs exactly one mask named
    like it (``<stem>.png`` or ``<stem>_mask.png``, same sub-folders) and no mask may be left over.
    """
    if root is not None:
        root = Path(root).expanduser()
        if not root.is_dir():
            problem = "is a file, not a folder" if root.exists() else "does not exist"
            raise DatasetError(f"Dataset root {root} {problem} (dataset 'folder'). {_WHERE_TO_GET['folder']}")
    for key, value, why in (("normal_dir", normal_dir, "the normal training images"),
                            ("abnormal_dir", abnormal_dir, "the anomalous test images; without them image AUROC "
                                                           "is undefined")):
        if not value:
            raise DatasetError(f"dataset.{key} is not set: it names the folder of {why}. Set dataset.{key}=<folder> "
                               f"(relative to dataset.root).")
    dirs: dict[str, list[Path]] = {}
    for key, value in zip(FOLDER_KEYS, (normal_dir, abnormal_dir, normal_test_dir, mask_dir)):
        if not value:
            continue
        dirs[key] = []
        for entry in [value] if isinstance(value, (str, Path)) else list(value):
            path = Path(entry).expanduser()
            path = path if path.is_absolute() or root is None else root / path
            if not path.is_dir():
                problem = "is a file, not a folder" if path.exists() else "does not exist"
                raise DatasetError(f"Folder {path} {problem} (dataset.{key}={entry}). Set dataset.{key} to a folder "
                                   f"relative to dataset.root ({root}) or an absolute path.")
            if not _all_images(path):
                raise DatasetError(f"Folder {path} (dataset.{key}) holds no images "
                                   f"({'/'.join(e[1:] for e in IMAGE_EXTENSIONS)}, searched recursively as anomalib "
                                   f"does). Put the images there or point dataset.{key} at the right folder.")
            dirs[key].append(path)
    flat = [(key, path.resolve()) for key, paths in dirs.items() for path in paths]
    for i, (key_a, a) in enumerate(flat):
        for key_b, b in flat[i + 1:]:
            if a == b or a in b.parents or b in a.parents:
                raise DatasetError(
                    f"dataset.{key_a} ({a}) and dataset.{key_b} ({b}) overlap. anomalib reads folders recursively, "
                    f"so the same images would be used twice (e.g. for training and for testing); give each its "
                    f"own folder.")
    sizes: dict[Path, tuple[int, int]] = {}
    for paths in dirs.values():
        for path in paths:
            sizes.update(_check_readable(path))
    if "mask_dir" in dirs:
        images = sorted((p for d in dirs["abnormal_dir"] for p in _all_images(d)), key=str)
        masks = sorted((p for d in dirs["mask_dir"] for p in _all_images(d)), key=str)
        mask_stems = {m.stem.removesuffix("_mask") for m in masks}
        image_stems = {i.stem for i in images}
        for image in images:
            if image.stem not in mask_stems:
                raise DatasetError(
                    f"No mask for abnormal image {image}: expected {image.stem}.png or {image.stem}_mask.png in "
                    f"dataset.mask_dir. anomalib pairs masks with images by position, so one missing mask "
                    f"misaligns all others; add the mask, remove the image, or drop mask_dir (image-level "
                    f"metrics only).")
        for mask in masks:
            if mask.stem.removesuffix("_mask") not in image_stems:
                raise DatasetError(
                    f"Mask {mask} has no abnormal image ({mask.stem.removesuffix('_mask')}.* in dataset.abnormal_dir). "
                    f"anomalib pairs masks with images by position, so a mask without an image misaligns the "
                    f"others; delete it or restore its image.")
        for image, mask in zip(images, masks):
            if mask.stem not in (image.stem, f"{image.stem}_mask") or len(images) != len(masks):
                raise DatasetError(
                    f"anomalib pairs masks with abnormal images by sorted path: image {image} would get mask "
                    f"{mask} ({len(images)} images, {len(masks)} masks). Give each mask its image's file name "
                    f"(<stem>.png or <stem>_mask.png) in the same sub-folder structure.")
            _check_same_size(mask, image, sizes)
    return root if root is not None else dirs["normal_dir"][0]


REAL_IAD_RESOLUTIONS = ("256", "512", "1024", "raw")


def validate_real_iad(root: str | Path, category: str, resolution: str | int = 256,
                      json_path: str = "realiad_jsons/realiad_jsons/{category}.json") -> Path:
    """Real-IAD as anomalib's ``RealIAD`` reads it: the JSON at ``<root>/<json_path>`` lists ``train`` and
    ``test`` entries (``image_path``, ``mask_path`` relative to ``<root>/realiad_<resolution>/<category>``,
    ``anomaly_class`` ``OK`` or a defect code). Every listed file must exist and decode, every anomalous
    test image needs its mask (anomalib would fail reading an empty path), and training holds normals only.
    """
    if category not in DATASETS["real_iad"]:
        raise DatasetError(f"Unknown category {category!r} for dataset 'real_iad'. Valid categories: "
                           f"{', '.join(DATASETS['real_iad'])}. Set dataset.category to one of them.")
    resolution = str(resolution)
    if resolution not in REAL_IAD_RESOLUTIONS:
        raise DatasetError(f"dataset.datamodule.resolution={resolution!r} is not a Real-IAD resolution; use one "
                           f"of {', '.join(REAL_IAD_RESOLUTIONS)} (the realiad_<resolution>/ folder you have).")
    root = Path(root).expanduser()
    if not root.is_dir():
        problem = "is a file, not a folder" if root.exists() else "does not exist"
        raise DatasetError(f"Dataset root {root} {problem} (dataset 'real_iad'). {_WHERE_TO_GET['real_iad']}")
    folder = root / f"realiad_{resolution}" / category
    if not folder.is_dir():
        present = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise DatasetError(f"Category folder {folder} not found (dataset 'real_iad', resolution {resolution}). Folders "
                           f"in {root}: {', '.join(present) or 'none'}. Extract realiad_{resolution}/{category} there, "
                           f"or set dataset.datamodule.resolution to the resolution you have.")
    json_file = root / str(json_path).format(category=category)
    if not json_file.is_file():
        raise DatasetError(f"Missing Real-IAD split file {json_file} (dataset.datamodule.json_path={json_path}). It "
                           f"ships in realiad_jsons.zip; extract it into {root}.")
    import json

    try:
        meta = json.loads(json_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"Cannot parse {json_file} ({exc}); restore it from realiad_jsons.zip.") from None
    if not isinstance(meta, dict) or not all(isinstance(meta.get(k), list) and meta[k] for k in ("train", "test")):
        raise DatasetError(f"{json_file} must hold non-empty 'train' and 'test' lists; restore it from "
                           f"realiad_jsons.zip.")
    pairs, labels = [], []
    for split in ("train", "test"):
        for i, entry in enumerate(meta[split]):
            where = f"{json_file} {split}[{i}]"
            if not isinstance(entry, dict) or not entry.get("image_path") or "anomaly_class" not in entry:
                raise DatasetError(f"{where} lacks image_path or anomaly_class ({entry!r}); restore the file.")
            image = folder / entry["image_path"]
            anomalous = entry["anomaly_class"] != "OK"
            if split == "train" and anomalous:
                raise DatasetError(f"{where} is an anomalous image ({entry['anomaly_class']}) in the training split; "
                                   f"the detectors train on normals only. Restore the original split file.")
            mask = folder / entry["mask_path"] if entry.get("mask_path") else None
            if split == "test" and anomalous and mask is None:
                raise DatasetError(f"{where}: anomalous test image {image} has no mask_path; anomalib needs a mask "
                                   f"for every anomalous test image. Restore the original split file.")
            for path in (image, mask):
                if path is not None and not path.is_file():
                    raise DatasetError(f"{where} names {path}, which does not exist. Re-extract "
                                       f"realiad_{resolution}/{category}.")
            pairs.append((image, mask))
            labels.append((split, anomalous))
    if not any(split == "test" and not bad for split, bad in labels) or not any(bad for _, bad in labels):
        raise DatasetError(f"{json_file}: the test split needs both normal (OK) and anomalous images, or image AUROC "
                           f"is undefined. Restore the original split file.")
    paths = sorted({p for pair in pairs for p in pair if p is not None})
    sizes = _decode_all(paths, json_file.parent)
    for image, mask in pairs:
        if mask is not None:
            _check_same_size(mask, image, sizes)
    return folder


def _check_same_size(mask: Path, image: Path, sizes: dict[Path, tuple[int, int]]) -> None:
    image_size, mask_size = sizes.get(image) or _size(image), sizes.get(mask) or _size(mask)
    if image_size != mask_size:
        raise DatasetError(
            f"Mask {mask} is {mask_size[0]}x{mask_size[1]} but its image {image} is {image_size[0]}x{image_size[1]} "
            f"(width x height); a mask must match its image. Replace the mask (or re-download the dataset).")


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
    return _decode_all(_all_images(folder), folder)


def _decode_all(paths: list[Path], folder: Path) -> dict[Path, tuple[int, int]]:
    """Decode ``paths`` (in parallel); raise on the first unreadable one; return their sizes."""
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

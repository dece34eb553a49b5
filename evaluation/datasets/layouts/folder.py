"""anomalib's ``Folder`` layout: the user's own normal, abnormal, normal-test and mask folders."""

from __future__ import annotations

from pathlib import Path

from evaluation.datasets.layouts.common import (
    IMAGE_EXTENSIONS,
    DatasetError,
    all_images,
    check_readable,
    check_same_size,
    dataset_root,
)

FOLDER_KEYS = ("normal_dir", "abnormal_dir", "normal_test_dir", "mask_dir")


def validate_folder(root: str | Path | None, normal_dir, abnormal_dir, normal_test_dir=None, mask_dir=None) -> Path:
    """Images in anomalib's ``Folder`` layout: each ``*_dir`` a folder (or list of folders) relative to
    ``root`` or absolute, read recursively; ``mask_dir`` is optional (without it, image-level metrics only).

    anomalib pairs masks with abnormal images by sorted path and only then checks that each image's
    stem is part of its mask's, so with ``mask_dir`` every abnormal image needs exactly one mask named
    like it (``<stem>.png`` or ``<stem>_mask.png``, same sub-folders) and no mask may be left over.
    """
    if root is not None:
        root = dataset_root(root, "folder")
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
            if not all_images(path):
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
            sizes.update(check_readable(path))
    if "mask_dir" in dirs:
        images = sorted((p for d in dirs["abnormal_dir"] for p in all_images(d)), key=str)
        masks = sorted((p for d in dirs["mask_dir"] for p in all_images(d)), key=str)
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
            check_same_size(mask, image, sizes)
    return root if root is not None else dirs["normal_dir"][0]

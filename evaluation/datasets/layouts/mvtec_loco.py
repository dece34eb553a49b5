"""MVTec LOCO AD: the MVTec layout with a folder of masks per defect image."""

from __future__ import annotations

from pathlib import Path

from evaluation.datasets.layouts.common import (
    DatasetError,
    check_formats,
    check_readable,
    check_train_test,
    images_in,
    size_of,
)


def validate_mvtec_loco(folder: Path) -> Path:
    """MVTec LOCO AD: several masks per defect image, in ground_truth/<defect>/<stem>/000.png, ..."""
    check_train_test(folder)
    check_formats(folder, (".png",), "mvtec_loco")
    sizes = check_readable(folder)
    ground_truth = folder / "ground_truth"
    defects = [d for d in sorted((folder / "test").iterdir()) if d.is_dir() and d.name != "good" and images_in(d)]
    for defect_dir in defects:
        for image in images_in(defect_dir):
            masks_dir = ground_truth / defect_dir.name / image.stem
            masks = images_in(masks_dir) if masks_dir.is_dir() else []
            if not masks:
                raise DatasetError(
                    f"No mask for defect image {image}: expected one or more masks in {masks_dir}/ "
                    f"(000.png, ...). Re-extract the dataset, or remove the image.")
            for mask in masks:
                if sizes.get(mask, size_of(mask)) != sizes.get(image, size_of(image)):
                    w, h = sizes.get(mask, size_of(mask))
                    iw, ih = sizes.get(image, size_of(image))
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

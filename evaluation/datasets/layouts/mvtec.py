"""The MVTec AD layout (also the built-in dataset's and converted VisA's)."""

from __future__ import annotations

from pathlib import Path

from evaluation.datasets.layouts.common import (
    DatasetError,
    all_images,
    check_formats,
    check_readable,
    check_same_size,
    check_train_test,
    images_in,
)


def validate_mvtec(folder: Path, name: str, extensions: tuple[str, ...] = (".png",),
                    mask_dir: str | None = None) -> Path:
    """MVTec AD layout, as anomalib's loader reads it (also the built-in dataset and converted VisA).

    anomalib pairs masks with defect images by sorted position and reads only ``extensions``, so
    every defect image needs exactly one mask, no mask may be left over, and other formats are
    silently skipped (then positions shift): all three are errors here.
    """
    check_train_test(folder)
    check_formats(folder, extensions, name)
    sizes = check_readable(folder)
    test_dirs = sorted(d for d in (folder / "test").iterdir() if d.is_dir() and images_in(d))
    ground_truth = folder / "ground_truth"
    defects = [d for d in test_dirs if d.name != "good"]
    for defect_dir in defects:
        masks_dir = ground_truth / (mask_dir or defect_dir.name)
        if not masks_dir.is_dir():
            raise DatasetError(
                f"Missing folder {masks_dir}: the defect images in {defect_dir} need ground-truth masks there "
                f"(<stem>_mask.png or <stem>.png, one per image). Re-extract the dataset, or remove {defect_dir}.")
        for image in images_in(defect_dir):
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
            check_same_size(candidates[0], image, sizes)
    if ground_truth.is_dir():
        expected = {(ground_truth / (mask_dir or d.name)) for d in defects}
        stems = {d.name: {p.stem for p in images_in(d)} for d in defects}
        for masks_dir in sorted(p for p in ground_truth.iterdir() if p.is_dir()):
            for mask in all_images(masks_dir):
                stem = mask.stem.removesuffix("_mask")
                owners = [d for d in defects if (ground_truth / (mask_dir or d.name)) == masks_dir]
                if masks_dir not in expected or not any(stem in stems[d.name] for d in owners):
                    raise DatasetError(
                        f"Stray mask {mask}: no test image {folder / 'test' / masks_dir.name / stem}.* belongs to "
                        f"it. anomalib pairs masks with images by position, so an extra mask misaligns the "
                        f"others; delete it (or restore its image).")
    return folder

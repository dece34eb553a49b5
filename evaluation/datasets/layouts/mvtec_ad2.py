"""MVTec AD 2: ``train/good``, ``test_public/{good,bad}`` and its ``ground_truth``."""

from __future__ import annotations

from pathlib import Path

from evaluation.datasets.layouts.common import DatasetError, check_formats, check_readable, check_same_size, images_in


def validate_mvtec_ad2(folder: Path) -> Path:
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
        if not sub.is_dir() or not images_in(sub):
            raise DatasetError(
                f"{'Empty' if sub.is_dir() else 'Missing'} folder {sub} ({what}). MVTec AD 2's layout is "
                f"<root>/<category>/train/good, test_public/good, test_public/bad and "
                f"test_public/ground_truth/bad; re-extract the dataset.")
    sizes: dict[Path, tuple[int, int]] = {}
    for sub in (folder / "train", test):
        check_formats(sub, (".png", ".PNG"), "mvtec_ad2")
        sizes.update(check_readable(sub))
    masks_dir = test / "ground_truth" / "bad"
    images = images_in(test / "bad")
    for image in images:
        mask = masks_dir / f"{image.stem}_mask{image.suffix}"
        if not mask.is_file():
            raise DatasetError(f"No mask for anomalous test image {image}: expected {mask}. Add the mask or "
                               f"remove the image (anomalib stops at the first missing mask).")
        check_same_size(mask, image, sizes)
    stems = {image.stem for image in images}
    for mask in images_in(masks_dir):
        if mask.stem.removesuffix("_mask") not in stems:
            raise DatasetError(f"Stray mask {mask}: no test image {test / 'bad' / mask.stem.removesuffix('_mask')}"
                               f"{mask.suffix} belongs to it, so the extraction is incomplete; restore the image "
                               f"or delete the mask.")
    return folder

"""What every layout's validator shares: the official category lists, where to get each dataset,
the one error type, and the checks of image files (readable, sizes, the train/test folders)."""

from __future__ import annotations

import os
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from anomalib.data.datasets.image import mvtec_loco, mvtecad, mvtecad2, realiad, visa
from PIL import Image

from console.errors import UserError
from evaluation.datasets.builtin import CATEGORIES as BUILTIN_CATEGORIES

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

# torchvision's list, which anomalib's Folder reads; any of them counts as an image for the checks.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".webp")

WHERE_TO_GET = {
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
PARALLEL_MIN_FILES = 32


class DatasetError(UserError, ValueError):
    """The dataset name, category or on-disk layout is wrong; the message says what and how to fix it."""


def check_train_test(folder: Path, extra_splits: tuple[str, ...] = ()) -> None:
    train_good = folder / "train" / "good"
    if not train_good.is_dir():
        raise DatasetError(
            f"Missing folder {train_good} (normal training images). The dataset is incomplete or not in "
            f"MVTec layout (<root>/<category>/train/good/*.png); re-extract or re-download it."
        )
    if not images_in(train_good):
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
    test_dirs = sorted(d for d in test.iterdir() if d.is_dir() and images_in(d))
    if not test_dirs:
        raise DatasetError(
            f"Folder {test} holds no sub-folder with images (expected test/good/ and test/<defect>/). "
            f"The dataset is incomplete; re-extract or re-download it."
        )
    if not (test / "good").is_dir() or not images_in(test / "good"):
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


def check_formats(folder: Path, extensions: tuple[str, ...], name: str) -> None:
    """anomalib matches suffixes exactly; an image in another format would be silently dropped."""
    for path in all_images(folder):
        if path.suffix not in extensions and not path.name.startswith("._"):
            raise DatasetError(
                f"Unsupported image format: {path}. anomalib's {name} loader reads only "
                f"{', '.join(extensions)} files and would silently skip this one; convert it "
                f"(e.g. PIL: Image.open(p).save(p.with_suffix('.png'))) and delete the original.")


def check_same_size(mask: Path, image: Path, sizes: dict[Path, tuple[int, int]]) -> None:
    image_size, mask_size = sizes.get(image) or size_of(image), sizes.get(mask) or size_of(mask)
    if image_size != mask_size:
        raise DatasetError(
            f"Mask {mask} is {mask_size[0]}x{mask_size[1]} but its image {image} is {image_size[0]}x{image_size[1]} "
            f"(width x height); a mask must match its image. Replace the mask (or re-download the dataset).")


def images_in(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted (extensions matched case-insensitively)."""
    with os.scandir(folder) as entries:
        return sorted(
            Path(e.path) for e in entries if e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS
        )


def all_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def probe(path: Path) -> tuple[tuple[int, int] | None, str | None]:
    """Fully decode one image; return (size, None) or (None, error). PIL releases the GIL while decoding."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.size, None
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
        return None, f"{type(exc).__name__}: {exc}"


def size_of(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


def check_readable(folder: Path) -> dict[Path, tuple[int, int]]:
    """Decode every image under ``folder`` (in parallel); raise on the first unreadable one (sorted)."""
    return decode_all(all_images(folder), folder)


def dataset_root(root: str | Path, name: str) -> Path:
    """``dataset.root`` of dataset ``name`` as a folder that exists and anomalib can read, or the error
    that says where to get the data."""
    root = Path(root).expanduser()
    check_printable(root)
    if not root.is_dir():
        problem = "is a file, not a folder" if root.exists() else "does not exist"
        raise DatasetError(f"Dataset root {root} {problem} (dataset {name!r}). {WHERE_TO_GET[name]}")
    return root


def check_printable(path: Path) -> None:
    """anomalib 2.7 stops on any path with a character outside printable ASCII ("Path contains
    non-printable characters", ``anomalib.data.utils.path``): name the first folder or file that has
    one, and the fix, before any model work."""
    parts = Path(path).parts
    for i, part in enumerate(parts):
        odd = sorted({c for c in part if not " " <= c <= "~"})
        if odd:
            where = Path(*parts[:i + 1])
            is_file = i == len(parts) - 1 and where.is_file()
            ascii_name = unicodedata.normalize("NFKD", part).encode("ascii", "ignore").decode() or "data"
            fix = ("rename the files to ASCII names" if is_file else
                   f"rename that folder to an ASCII name (mv '{where}' '{where.with_name(ascii_name)}') or copy "
                   f"the data into one; a symbolic link does not help, anomalib resolves it to this name")
            raise DatasetError(f"{'File' if is_file else 'Folder'} name {part!r} in {path} has "
                               f"{', '.join(repr(c) for c in odd)}: anomalib 2.7 reads only paths of printable "
                               f"ASCII characters. Fix: {fix}.")


def decode_all(paths: list[Path], folder: Path) -> dict[Path, tuple[int, int]]:
    """Decode ``paths`` (in parallel); raise on the first unreadable one; return their sizes."""
    for path in paths:
        check_printable(path)
    if len(paths) < PARALLEL_MIN_FILES:
        results = [probe(p) for p in paths]
    else:
        with ThreadPoolExecutor(max_workers=min(32, (os.cpu_count() or 1) + 4)) as pool:
            results = list(pool.map(probe, paths))
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

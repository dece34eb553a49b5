"""Real-IAD: the split JSON and every file it names."""

from __future__ import annotations

from pathlib import Path

from evaluation.datasets.layouts.common import DATASETS, DatasetError, check_same_size, dataset_root, decode_all

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
    root = dataset_root(root, "real_iad")
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
    sizes = decode_all(paths, json_file.parent)
    for image, mask in pairs:
        if mask is not None:
            check_same_size(mask, image, sizes)
    return folder

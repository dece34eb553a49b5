"""MVTec AD, VisA (raw download + split CSV) and MVTec LOCO AD in miniature, in their real layouts.

Nothing is downloaded: each test writes a few 64 px images in the exact folder structure of the real
dataset, then checks that validation accepts it, that anomalib's own datamodule loads it (VisA: its
conversion of the raw split CSV runs), that detection runs on it end to end, and that each kind of
broken input fails up front with a message naming the file and the fix.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import compose_config, datamodule_of, run_detect
from PIL import Image

from evaluation.datasets.layouts import DatasetError, validate_layout
from detectors.backbone import IMAGENET_MEAN, IMAGENET_STD, Backbone

SIZE = 64
N_TRAIN, N_TEST_GOOD = 10, 3


def _image(path: Path, seed: int, defect: bool = False, size: int = SIZE) -> np.ndarray | None:
    """A striped texture with noise; a defect is a bright square. Returns the defect mask."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size]
    base = 120 + 60 * np.sin((x + rng.integers(8)) / 3.0)[..., None] + rng.normal(0, 8, (size, size, 3))
    mask = None
    if defect:
        cy, cx = rng.integers(10, size - 20, 2)
        mask = np.zeros((size, size), np.uint8)
        mask[cy:cy + 10, cx:cx + 10] = 255
        base[mask > 0] = 250
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).save(path)
    return mask


def _mask(path: Path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask).save(path)


def make_mvtec(root: Path, category: str = "bottle") -> Path:
    c = root / category
    for i in range(N_TRAIN):
        _image(c / "train/good" / f"{i:03d}.png", i)
    for i in range(N_TEST_GOOD):
        _image(c / "test/good" / f"{i:03d}.png", 100 + i)
    for k, defect in enumerate(("broken_large", "contamination")):
        for i in range(2):
            m = _image(c / "test" / defect / f"{i:03d}.png", 200 + 10 * k + i, defect=True)
            _mask(c / "ground_truth" / defect / f"{i:03d}_mask.png", m)
    (c / "license.txt").write_text("CC BY-NC-SA 4.0\n")
    return root


def make_visa_raw(root: Path, category: str = "pcb1") -> Path:
    """The VisA download: <cat>/Data/Images/{Normal,Anomaly}/*.JPG, Data/Masks/Anomaly/*.png, split_csv/1cls.csv."""
    rows = ["object,split,label,image,mask"]
    data = root / category / "Data"
    for i in range(N_TRAIN + N_TEST_GOOD):
        _image(data / "Images/Normal" / f"{i:04d}.JPG", i)
        split = "train" if i < N_TRAIN else "test"
        rows.append(f"{category},{split},normal,{category}/Data/Images/Normal/{i:04d}.JPG,")
    for i in range(3):
        m = _image(data / "Images/Anomaly" / f"{i:03d}.JPG", 300 + i, defect=True)
        _mask(data / "Masks/Anomaly" / f"{i:03d}.png", (m > 0).astype(np.uint8))  # VisA masks are 0/1-ish
        rows.append(f"{category},test,anomaly,{category}/Data/Images/Anomaly/{i:03d}.JPG,"
                    f"{category}/Data/Masks/Anomaly/{i:03d}.png")
    (root / category / "image_anno.csv").write_text("image,label,mask\n")
    (root / "split_csv").mkdir(parents=True, exist_ok=True)
    (root / "split_csv/1cls.csv").write_text("\n".join(rows) + "\n")
    return root


def make_loco(root: Path, category: str = "breakfast_box") -> Path:
    c = root / category
    for i in range(N_TRAIN):
        _image(c / "train/good" / f"{i:03d}.png", i)
    for i in range(2):
        _image(c / "validation/good" / f"{i:03d}.png", 50 + i)
    for i in range(N_TEST_GOOD):
        _image(c / "test/good" / f"{i:03d}.png", 100 + i)
    for k, defect in enumerate(("logical_anomalies", "structural_anomalies")):
        for i in range(2):
            m = _image(c / "test" / defect / f"{i:03d}.png", 200 + 10 * k + i, defect=True)
            _mask(c / "ground_truth" / defect / f"{i:03d}" / "000.png", m)
            if defect == "logical_anomalies":  # LOCO: several masks per image, one per defect region
                _mask(c / "ground_truth" / defect / f"{i:03d}" / "001.png", np.zeros_like(m))
    return root


LAYOUTS = {  # dataset name -> (generator, category, test images, anomalous test images)
    "mvtec": (make_mvtec, "bottle", N_TEST_GOOD + 4, 4),
    "visa": (make_visa_raw, "pcb1", N_TEST_GOOD + 3, 3),
    "mvtec_loco": (make_loco, "breakfast_box", N_TEST_GOOD + 4, 4),
}


def dataset_config(tmp_path: Path, name: str, root: Path, *overrides: str):
    category = LAYOUTS[name][1]
    return compose_config(tmp_path, f"dataset={name}", f"dataset.root={root}", f"dataset.category={category}",
                          "dataset.image_size=64", "dataset.datamodule.num_workers=0",
                          "dataset.datamodule.train_batch_size=8", "dataset.datamodule.eval_batch_size=8",
                          "detector.max_epochs=1", *overrides)


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_miniature_layout_validates_and_anomalib_loads_it(name, tmp_path):
    make, category, n_test, n_bad = LAYOUTS[name]
    root = make(tmp_path / name)
    cfg = dataset_config(tmp_path, name, root)
    validate_layout(name, root, category)
    datamodule = datamodule_of(cfg)
    datamodule.prepare_data()  # VisA: anomalib converts the raw split CSV; nothing may download
    datamodule.setup()
    assert len(datamodule.train_data) + len(datamodule.val_data) == N_TRAIN
    assert len(datamodule.test_data) == n_test
    assert sum(int(datamodule.test_data[i].gt_label) for i in range(n_test)) == n_bad
    for i in range(n_test):
        item = datamodule.test_data[i]
        assert (int(item.gt_mask.sum()) > 0) == bool(item.gt_label), item.image_path
        assert "/train/" not in str(item.image_path)
    if name == "visa":
        assert (root / "visa_pytorch/pcb1/ground_truth/bad/000.png").is_file()
        validate_layout(name, root, category)  # the converted folder validates too


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_detection_runs_on_each_layout(name, tmp_path):
    root = LAYOUTS[name][0](tmp_path / name)
    cfg = dataset_config(tmp_path, name, root, "detector=padim")
    backbone = Backbone("random", "resnet18", "resnet18", False, IMAGENET_MEAN, IMAGENET_STD, "random init")
    record = run_detect(cfg, backbone, tmp_path / "detect")
    for key in ("image_AUROC", "image_F1Score", "pixel_AUROC", "pixel_AUPRO"):
        assert 0.0 <= record.metrics[key] <= 1.0, (key, record.metrics)
    assert (tmp_path / "detect/roc.png").is_file() and record.metrics_csv.is_file()


# ---------------------------------------------------------------------------------------------
# Bad inputs: each fails before any model work, naming the file and the fix
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,where", [("mvtec", "MVTec website"), ("visa", "spot-diff"),
                                        ("mvtec_loco", "MVTec LOCO AD")])
def test_missing_root_names_where_to_get_the_data(name, where, tmp_path):
    with pytest.raises(DatasetError, match=rf"(?s)nowhere does not exist.*{where}.*dataset\.root="):
        validate_layout(name, tmp_path / "nowhere", LAYOUTS[name][1])


def test_missing_root_fails_detect_before_anything_downloads(tmp_path):
    cfg = dataset_config(tmp_path, "visa", tmp_path / "nowhere")
    backbone = Backbone("random", "resnet18", "resnet18", False, IMAGENET_MEAN, IMAGENET_STD, "random init")
    with pytest.raises(DatasetError, match="nowhere does not exist"):
        run_detect(cfg, backbone, tmp_path / "detect")
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("name,valid", [("visa", r"candle, capsules.*pcb1.*pipe_fryum"),
                                        ("mvtec_loco", r"breakfast_box, juice_bottle.*splicing_connectors")])
def test_unknown_category_lists_the_valid_ones(name, valid, tmp_path):
    with pytest.raises(DatasetError, match=rf"Unknown category 'pcb9'.*{valid}"):
        validate_layout(name, tmp_path, "pcb9")


def _drop_visa_test_rows(root: Path) -> None:
    csv = root / "split_csv/1cls.csv"
    csv.write_text("".join(line for line in csv.read_text().splitlines(keepends=True) if ",test," not in line))


def _blank_mask(path: Path) -> None:
    _mask(path, np.zeros((SIZE, SIZE), np.uint8))


# One row per broken layout: (layout, what breaks it, what the message must say). Each starts from a
# fresh valid miniature (MAKERS) and is checked with validate_layout on its category.
MAKERS = {"mvtec": (make_mvtec, "bottle"), "visa": (make_visa_raw, "pcb1"), "mvtec_loco": (make_loco, "breakfast_box")}
BROKEN = {
    "mvtec-missing-split": ("mvtec", lambda r: shutil.rmtree(r / "bottle/test"), r"Missing folder .*bottle/test"),
    "mvtec-corrupt-image": ("mvtec", lambda r: (r / "bottle/test/contamination/001.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated"),
                            r"(?s)Cannot read image .*contamination/001\.png.*re-download"),
    "mvtec-mask-size": ("mvtec", lambda r: Image.new("L", (32, 16)).save(r / "bottle/ground_truth/broken_large/001_mask.png"),
                        r"(?s)001_mask\.png is 32x16.*broken_large/001\.png is 64x64"),
    "mvtec-missing-mask": ("mvtec", lambda r: (r / "bottle/ground_truth/contamination/000_mask.png").unlink(),
                           r"(?s)No mask for defect image .*contamination/000\.png.*000_mask\.png"),
    "mvtec-stray-mask": ("mvtec", lambda r: _blank_mask(r / "bottle/ground_truth/contamination/007_mask.png"),
                         r"(?s)Stray mask .*contamination/007_mask\.png.*delete it"),
    "mvtec-mask-folder-without-test-folder": ("mvtec", lambda r: _blank_mask(r / "bottle/ground_truth/crack/000_mask.png"),
                                              r"Stray mask .*crack/000_mask\.png"),
    "mvtec-two-masks-for-one-image": ("mvtec", lambda r: shutil.copy(r / "bottle/ground_truth/broken_large/000_mask.png",
                                                                     r / "bottle/ground_truth/broken_large/000.png"),
                                      r"broken_large/000\.png has two masks"),
    "mvtec-png-only": ("mvtec", lambda r: Image.open(r / "bottle/train/good/000.png").save(r / "bottle/train/good/010.jpg"),
                       r"(?s)Unsupported image format: .*train/good/010\.jpg.*only \.png"),
    "visa-missing-split-csv": ("visa", lambda r: (r / "split_csv/1cls.csv").unlink(),
                               r"Missing VisA split file .*split_csv/1cls\.csv"),
    "visa-csv-names-a-missing-image": ("visa", lambda r: (r / "pcb1/Data/Images/Normal/0004.JPG").unlink(),
                                       r"1cls\.csv line 6 names image .*Normal/0004\.JPG, which does not exist"),
    "visa-missing-test-split": ("visa", _drop_visa_test_rows, r"lists no test images for category 'pcb1'"),
    "visa-corrupt-image": ("visa", lambda r: (r / "pcb1/Data/Images/Anomaly/001.JPG").write_bytes(b"\xff\xd8\xff garbage"),
                           r"Cannot read image .*Anomaly/001\.JPG.*line 16"),
    "visa-mask-size": ("visa", lambda r: Image.new("L", (10, 10)).save(r / "pcb1/Data/Masks/Anomaly/002.png"),
                       r"Mask .*Masks/Anomaly/002\.png is 10x10 but its image .*002\.JPG is 64x64"),
    "loco-missing-split": ("mvtec_loco", lambda r: shutil.rmtree(r / "breakfast_box/train"),
                           r"Missing folder .*breakfast_box/train/good"),
    "loco-missing-mask-folder": ("mvtec_loco", lambda r: shutil.rmtree(r / "breakfast_box/ground_truth/structural_anomalies/001"),
                                 r"No mask for defect image .*structural_anomalies/001\.png.*structural_anomalies/001/"),
    "loco-stray-mask-folder": ("mvtec_loco", lambda r: _blank_mask(r / "breakfast_box/ground_truth/logical_anomalies/005/000.png"),
                               r"Stray mask folder .*logical_anomalies/005"),
    "loco-mask-size": ("mvtec_loco", lambda r: Image.new("L", (8, 8)).save(r / "breakfast_box/ground_truth/logical_anomalies/001/001.png"),
                       r"Mask .*logical_anomalies/001/001\.png is 8x8 .* is 64x64"),
    "loco-corrupt-image": ("mvtec_loco", lambda r: (r / "breakfast_box/validation/good/001.png").write_bytes(b"nope"),
                           r"Cannot read image .*validation/good/001\.png"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_layout_is_named_with_the_fix(case, tmp_path):
    layout, breaks, message = BROKEN[case]
    make, category = MAKERS[layout]
    root = make(tmp_path)
    validate_layout(layout, root, category)  # the miniature is valid before it is broken
    breaks(root)
    with pytest.raises(DatasetError, match=message):
        validate_layout(layout, root, category)


def test_visa_category_folder_missing(tmp_path):
    root = make_visa_raw(tmp_path)
    with pytest.raises(DatasetError, match=r"(?s)Category folder .*candle not found.*visa_pytorch.*pcb1"):
        validate_layout("visa", root, "candle")

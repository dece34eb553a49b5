"""MVTec AD, VisA (raw download + split CSV) and MVTec LOCO AD in miniature, in their real layouts.

Nothing is downloaded: each test writes a few 64 px images in the exact folder structure of the real
dataset, then checks that validation accepts it, that anomalib's own datamodule loads it (VisA: its
conversion of the raw split CSV runs), that detection runs on it end to end, and that each kind of
broken input fails up front with a message naming the file and the fix.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import hydra
import numpy as np
import pytest
from conftest import compose_config
from PIL import Image

from anomaly_data.datasets import DatasetError, validate_layout
from detection.backbone import IMAGENET_MEAN, IMAGENET_STD, Backbone
from pipeline.detect import detect

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
    datamodule = hydra.utils.instantiate(cfg.dataset.datamodule, seed=0)
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
    record = detect(cfg, backbone, tmp_path / "detect")
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
        detect(cfg, backbone, tmp_path / "detect")
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("name,valid", [("visa", r"candle, capsules.*pcb1.*pipe_fryum"),
                                        ("mvtec_loco", r"breakfast_box, juice_bottle.*splicing_connectors")])
def test_unknown_category_lists_the_valid_ones(name, valid, tmp_path):
    with pytest.raises(DatasetError, match=rf"Unknown category 'pcb9'.*{valid}"):
        validate_layout(name, tmp_path, "pcb9")


def test_mvtec_missing_split(tmp_path):
    root = make_mvtec(tmp_path)
    shutil.rmtree(root / "bottle/test")
    with pytest.raises(DatasetError, match=r"Missing folder .*bottle/test"):
        validate_layout("mvtec", root, "bottle")


def test_mvtec_corrupt_image(tmp_path):
    root = make_mvtec(tmp_path)
    (root / "bottle/test/contamination/001.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(DatasetError, match=r"(?s)Cannot read image .*contamination/001\.png.*re-download"):
        validate_layout("mvtec", root, "bottle")


def test_mvtec_mask_size_mismatch(tmp_path):
    root = make_mvtec(tmp_path)
    Image.new("L", (32, 16)).save(root / "bottle/ground_truth/broken_large/001_mask.png")
    with pytest.raises(DatasetError, match=r"(?s)001_mask\.png is 32x16.*broken_large/001\.png is 64x64"):
        validate_layout("mvtec", root, "bottle")


def test_mvtec_missing_mask(tmp_path):
    root = make_mvtec(tmp_path)
    (root / "bottle/ground_truth/contamination/000_mask.png").unlink()
    with pytest.raises(DatasetError, match=r"(?s)No mask for defect image .*contamination/000\.png.*000_mask\.png"):
        validate_layout("mvtec", root, "bottle")


def test_mvtec_stray_mask(tmp_path):
    root = make_mvtec(tmp_path)
    _mask(root / "bottle/ground_truth/contamination/007_mask.png", np.zeros((SIZE, SIZE), np.uint8))
    with pytest.raises(DatasetError, match=r"(?s)Stray mask .*contamination/007_mask\.png.*delete it"):
        validate_layout("mvtec", root, "bottle")


def test_mvtec_mask_folder_without_test_folder_is_stray(tmp_path):
    root = make_mvtec(tmp_path)
    _mask(root / "bottle/ground_truth/crack/000_mask.png", np.zeros((SIZE, SIZE), np.uint8))
    with pytest.raises(DatasetError, match=r"Stray mask .*crack/000_mask\.png"):
        validate_layout("mvtec", root, "bottle")


def test_mvtec_two_masks_for_one_image(tmp_path):
    root = make_mvtec(tmp_path)
    shutil.copy(root / "bottle/ground_truth/broken_large/000_mask.png", root / "bottle/ground_truth/broken_large/000.png")
    with pytest.raises(DatasetError, match=r"broken_large/000\.png has two masks"):
        validate_layout("mvtec", root, "bottle")


def test_mvtec_reads_png_only(tmp_path):
    root = make_mvtec(tmp_path)
    Image.open(root / "bottle/train/good/000.png").save(root / "bottle/train/good/010.jpg")
    with pytest.raises(DatasetError, match=r"(?s)Unsupported image format: .*train/good/010\.jpg.*only \.png"):
        validate_layout("mvtec", root, "bottle")


def test_visa_missing_split_csv(tmp_path):
    root = make_visa_raw(tmp_path)
    (root / "split_csv/1cls.csv").unlink()
    with pytest.raises(DatasetError, match=r"Missing VisA split file .*split_csv/1cls\.csv"):
        validate_layout("visa", root, "pcb1")


def test_visa_csv_names_a_missing_image(tmp_path):
    root = make_visa_raw(tmp_path)
    (root / "pcb1/Data/Images/Normal/0004.JPG").unlink()
    with pytest.raises(DatasetError, match=r"1cls\.csv line 6 names image .*Normal/0004\.JPG, which does not exist"):
        validate_layout("visa", root, "pcb1")


def test_visa_missing_test_split(tmp_path):
    root = make_visa_raw(tmp_path)
    csv = root / "split_csv/1cls.csv"
    csv.write_text("".join(line for line in csv.read_text().splitlines(keepends=True) if ",test," not in line))
    with pytest.raises(DatasetError, match=r"lists no test images for category 'pcb1'"):
        validate_layout("visa", root, "pcb1")


def test_visa_corrupt_image_and_mask_size(tmp_path):
    root = make_visa_raw(tmp_path)
    (root / "pcb1/Data/Images/Anomaly/001.JPG").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(DatasetError, match=r"Cannot read image .*Anomaly/001\.JPG.*line 16"):
        validate_layout("visa", root, "pcb1")
    _image(root / "pcb1/Data/Images/Anomaly/001.JPG", 1)
    Image.new("L", (10, 10)).save(root / "pcb1/Data/Masks/Anomaly/002.png")
    with pytest.raises(DatasetError, match=r"Mask .*Masks/Anomaly/002\.png is 10x10 but its image .*002\.JPG is 64x64"):
        validate_layout("visa", root, "pcb1")


def test_visa_category_folder_missing(tmp_path):
    root = make_visa_raw(tmp_path)
    with pytest.raises(DatasetError, match=r"(?s)Category folder .*candle not found.*visa_pytorch.*pcb1"):
        validate_layout("visa", root, "candle")


def test_loco_missing_split(tmp_path):
    root = make_loco(tmp_path)
    shutil.rmtree(root / "breakfast_box/train")
    with pytest.raises(DatasetError, match=r"Missing folder .*breakfast_box/train/good"):
        validate_layout("mvtec_loco", root, "breakfast_box")


def test_loco_missing_mask_folder(tmp_path):
    root = make_loco(tmp_path)
    shutil.rmtree(root / "breakfast_box/ground_truth/structural_anomalies/001")
    with pytest.raises(DatasetError, match=r"No mask for defect image .*structural_anomalies/001\.png.*structural_anomalies/001/"):
        validate_layout("mvtec_loco", root, "breakfast_box")


def test_loco_stray_mask_folder(tmp_path):
    root = make_loco(tmp_path)
    _mask(root / "breakfast_box/ground_truth/logical_anomalies/005/000.png", np.zeros((SIZE, SIZE), np.uint8))
    with pytest.raises(DatasetError, match=r"Stray mask folder .*logical_anomalies/005"):
        validate_layout("mvtec_loco", root, "breakfast_box")


def test_loco_mask_size_and_corrupt_image(tmp_path):
    root = make_loco(tmp_path)
    Image.new("L", (8, 8)).save(root / "breakfast_box/ground_truth/logical_anomalies/001/001.png")
    with pytest.raises(DatasetError, match=r"Mask .*logical_anomalies/001/001\.png is 8x8 .* is 64x64"):
        validate_layout("mvtec_loco", root, "breakfast_box")
    (root / "breakfast_box/validation/good/001.png").write_bytes(b"nope")
    with pytest.raises(DatasetError, match=r"Cannot read image .*validation/good/001\.png"):
        validate_layout("mvtec_loco", root, "breakfast_box")

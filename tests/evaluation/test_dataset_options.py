"""Datasets beyond the study's: the user's own categories in MVTec layout, anomalib ``Folder`` data with
and without masks, MVTec AD 2 and Real-IAD, each on a generated miniature (tests/miniatures.py).

Each option is composed from its real config, validated, loaded by anomalib's own datamodule and run
through the detect stage; each kind of broken input fails up front naming the file and the fix.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
from conftest import CONF_DIR, compose_config, datamodule_of, run_detect
from miniatures import N_BAD, blank_mask, break_image, make_folder, make_mvtec_ad2, make_real_iad
from test_dataset_layouts import N_TEST_GOOD, N_TRAIN, make_mvtec

from evaluation.datasets.layouts import DATASETS, DatasetError, validate_layout
from detectors.backbone import IMAGENET_MEAN, IMAGENET_STD, Backbone
from pipeline.detect import dataset_has_masks, validate_dataset

PIXEL = ("pixel_AUROC", "pixel_AUPRO")
RANDOM = Backbone("random", "resnet18", "resnet18", False, IMAGENET_MEAN, IMAGENET_STD, "random init")


def config(tmp_path: Path, name: str, root: Path, *overrides: str):
    return compose_config(tmp_path, f"dataset={name}", f"dataset.root={root}", "dataset.image_size=64",
                          "dataset.datamodule.num_workers=0", "dataset.datamodule.train_batch_size=8",
                          "dataset.datamodule.eval_batch_size=8", *overrides)


def folder_config(tmp_path: Path, root: Path, masks: bool = True, *overrides: str):
    return config(tmp_path, "folder", root, "dataset.category=parts", "dataset.normal_dir=good",
                  "dataset.abnormal_dir=defect", "dataset.normal_test_dir=good_test",
                  f"dataset.mask_dir={'masks' if masks else 'null'}", *overrides)


def loaded(cfg):
    """anomalib's own datamodule, set up as the detect stage sets it up."""
    validate_dataset(cfg.dataset)
    datamodule = datamodule_of(cfg)
    datamodule.setup()
    return datamodule


def test_every_dataset_option_composes(tmp_path):
    options = sorted(p.stem for p in Path(CONF_DIR, "dataset").glob("*.yaml"))
    assert options == sorted(DATASETS)
    for name in options:
        cfg = compose_config(tmp_path, f"dataset={name}")
        assert cfg.dataset.name == name and cfg.dataset.datamodule.val_split_mode == "synthetic"


# ---------------------------------------------------------------------------------------------
# Own categories in MVTec layout
# ---------------------------------------------------------------------------------------------


def test_own_category_in_mvtec_layout_runs(tmp_path):
    root = make_mvtec(tmp_path / "mine", "brick")
    cfg = config(tmp_path, "mvtec", root, "dataset.category=brick", "detector=padim")
    assert validate_layout("mvtec", root, "brick") == root / "brick"
    record = run_detect(cfg, RANDOM, tmp_path / "detect")
    for key in ("image_AUROC", *PIXEL):
        assert 0.0 <= record.metrics[key] <= 1.0, (key, record.metrics)
    assert "brick" in record.metrics_csv.read_text()


def test_unknown_own_category_lists_the_categories_found(tmp_path):
    root = make_mvtec(tmp_path / "mine", "brick")
    make_mvtec(root, "tile")
    (root / "notes").mkdir()  # not a category: no train/ and test/
    with pytest.raises(DatasetError) as err:
        validate_layout("mvtec", root, "bricks")
    message = str(err.value)
    assert "Unknown category 'bricks'" in message and "brick, tile." in message and "notes" not in message
    assert "MVTec AD's categories are bottle, cable" in message and "(14 missing here)" in message
    shutil.rmtree(root / "tile")
    with pytest.raises(DatasetError) as err:
        validate_layout("mvtec", root, "bricks")
    assert "found under" in str(err.value) and "brick." in str(err.value) and "bottle" not in str(err.value)
    with pytest.raises(DatasetError, match="itself looks like a category folder.*dataset.category=brick"):
        validate_layout("mvtec", root / "brick", "bricks")
    with pytest.raises(DatasetError, match="not a folder name"):
        validate_layout("mvtec", root, "../mine")


def test_own_category_layout_stays_strict(tmp_path):
    root = make_mvtec(tmp_path / "mine", "brick")
    (root / "brick/ground_truth/contamination/001_mask.png").unlink()
    with pytest.raises(DatasetError, match=r"No mask for defect image .*brick/test/contamination/001\.png"):
        validate_layout("mvtec", root, "brick")


# ---------------------------------------------------------------------------------------------
# dataset=folder
# ---------------------------------------------------------------------------------------------


def test_folder_with_masks_loads_and_pairs_masks(tmp_path):
    root = make_folder(tmp_path / "parts")
    cfg = folder_config(tmp_path, root)
    assert dataset_has_masks(cfg.dataset)
    datamodule = loaded(cfg)
    assert len(datamodule.train_data) + len(datamodule.val_data) == N_TRAIN
    assert len(datamodule.test_data) == N_TEST_GOOD + N_BAD
    for i in range(len(datamodule.test_data)):
        item = datamodule.test_data[i]
        assert (int(item.gt_mask.sum()) > 0) == bool(item.gt_label), item.image_path
        if item.gt_label:
            assert Path(item.mask_path).relative_to(root / "masks") == Path(item.image_path).relative_to(root / "defect")


def test_folder_detect_with_masks_reports_pixel_metrics(tmp_path):
    cfg = folder_config(tmp_path, make_folder(tmp_path / "parts"), True, "detector=padim")
    record = run_detect(cfg, RANDOM, tmp_path / "detect")
    for key in ("image_AUROC", *PIXEL):
        assert 0.0 <= record.metrics[key] <= 1.0, (key, record.metrics)


def test_folder_without_masks_reports_image_metrics_only(tmp_path, caplog):
    """A real PatchCore run (random init, tiny): image AUROC and F1, no pixel metric at all, and a note."""
    cfg = folder_config(tmp_path, make_folder(tmp_path / "parts", masks=False), False)
    assert cfg.detector.name == "patchcore" and not dataset_has_masks(cfg.dataset)
    datamodule = loaded(cfg)
    assert datamodule.test_data.task == "classification" and len(datamodule.test_data) == N_TEST_GOOD + N_BAD
    with caplog.at_level(logging.WARNING, logger="evaluation.datasets.layouts"):
        record = run_detect(cfg, RANDOM, tmp_path / "detect")
    assert 0.0 <= record.metrics["image_AUROC"] <= 1.0 and "image_F1Score" in record.metrics
    assert not [k for k in record.metrics if k.startswith("pixel_")], record.metrics
    header = record.metrics_csv.read_text().splitlines()[0]
    # test pixel metrics are absent; the validation split's pixel AUROC stays (synthetic anomalies have masks)
    assert "image_AUROC" in header and not [c for c in header.split(",") if c.startswith("pixel_")], header
    assert "image-level metrics only" in caplog.text


def test_folder_without_normal_test_dir_holds_out_training_normals(tmp_path):
    root = make_folder(tmp_path / "parts", masks=False)
    datamodule = loaded(folder_config(tmp_path, root, False, "dataset.normal_test_dir=null"))
    normals = [p for p in datamodule.test_data.samples.image_path if "/good/" in p]
    assert normals and len(datamodule.test_data) == len(normals) + N_BAD
    train = set(datamodule.train_data.samples.image_path)
    assert train and not train & set(normals)


@pytest.mark.parametrize("breakage,error", [
    (lambda r: shutil.rmtree(r / "good_test"), r"Folder .*good_test does not exist \(dataset\.normal_test_dir=good_test\)"),
    (lambda r: [p.unlink() for p in (r / "good").glob("*.png")], r"Folder .*parts/good \(dataset\.normal_dir\) holds no images"),
    (lambda r: break_image(r / "defect/hole/001.png"), r"(?s)Cannot read image .*defect/hole/001\.png.*corrupt"),
    (lambda r: (r / "masks/crack/002.png").unlink(), r"No mask for abnormal image .*defect/crack/002\.png"),
    (lambda r: blank_mask(r / "masks/hole/009.png", (64, 64)), r"Mask .*masks/hole/009\.png has no abnormal image"),
    (lambda r: blank_mask(r / "masks/hole/001.png", (32, 64)), r"masks/hole/001\.png is 32x64 but its image"),
    (lambda r: shutil.move(r / "masks/hole/001.png", r / "masks/crack/001.png"),
     r"pairs masks with abnormal images by sorted path: image .*crack/002\.png would get mask .*crack/001\.png"),
])
def test_folder_bad_input_fails_naming_the_file(breakage, error, tmp_path):
    root = make_folder(tmp_path / "parts")
    breakage(root)
    with pytest.raises(DatasetError, match=error):
        validate_dataset(folder_config(tmp_path, root).dataset)


def test_folder_settings_errors(tmp_path):
    root = make_folder(tmp_path / "parts")
    with pytest.raises(DatasetError, match=r"(?s)nowhere does not exist.*normal_dir"):
        validate_dataset(folder_config(tmp_path, tmp_path / "nowhere").dataset)
    with pytest.raises(DatasetError, match=r"dataset\.abnormal_dir is not set"):
        validate_dataset(folder_config(tmp_path, root, True, "dataset.abnormal_dir=null").dataset)
    with pytest.raises(DatasetError, match=r"dataset\.normal_dir .* and dataset\.normal_test_dir .* overlap"):
        validate_dataset(folder_config(tmp_path, root, True, "dataset.normal_test_dir=good").dataset)


# ---------------------------------------------------------------------------------------------
# MVTec AD 2 and Real-IAD
# ---------------------------------------------------------------------------------------------


def test_mvtec_ad2_tests_on_the_whole_public_split(tmp_path, monkeypatch):
    root = make_mvtec_ad2(tmp_path / "MVTecAD2")
    cfg = config(tmp_path, "mvtec_ad2", root)
    datamodule = loaded(cfg)
    labels = datamodule.test_data.samples.label_index.tolist()
    assert sorted(labels) == [0] * N_TEST_GOOD + [1] * N_BAD  # anomalib's own split mode drops the normals
    assert all("/test_public/" in p for p in datamodule.test_data.samples.image_path)
    assert len(datamodule.train_data) + len(datamodule.val_data) == N_TRAIN  # validation: synthetic, from train
    assert datamodule.val_data.samples.label_index.tolist().count(1) > 0

    def no_download(*args, **kwargs):
        raise AssertionError("prepare_data tried to download")
    monkeypatch.setattr("anomalib.data.datamodules.image.mvtecad2.download_and_extract", no_download)
    datamodule.prepare_data()  # the data is there (validated): nothing to fetch


def test_mvtec_ad2_detect(tmp_path):
    cfg = config(tmp_path, "mvtec_ad2", make_mvtec_ad2(tmp_path / "MVTecAD2"), "detector=padim")
    record = run_detect(cfg, RANDOM, tmp_path / "detect")
    for key in ("image_AUROC", *PIXEL):
        assert 0.0 <= record.metrics[key] <= 1.0, (key, record.metrics)


@pytest.mark.parametrize("breakage,error", [
    (lambda c: shutil.rmtree(c / "test_public/good"), r"Missing folder .*test_public/good \(normal test images\)"),
    (lambda c: (c / "test_public/ground_truth/bad/002_regular_mask.png").unlink(),
     r"No mask for anomalous test image .*bad/002_regular\.png: expected .*002_regular_mask\.png"),
    (lambda c: blank_mask(c / "test_public/ground_truth/bad/007_regular_mask.png", (64, 64)), r"Stray mask .*007_regular_mask"),
    (lambda c: break_image(c / "train/good/003_regular.png"), r"Cannot read image .*train/good/003_regular\.png"),
    (lambda c: shutil.move(c / "train/good/001_regular.png", c / "train/good/001_regular.jpg"),
     r"Unsupported image format: .*001_regular\.jpg"),
])
def test_mvtec_ad2_bad_input(breakage, error, tmp_path):
    root = make_mvtec_ad2(tmp_path / "MVTecAD2")
    breakage(root / "sheet_metal")
    with pytest.raises(DatasetError, match=error):
        validate_layout("mvtec_ad2", root, "sheet_metal")
    with pytest.raises(DatasetError, match=r"Unknown category 'screw'.*can, fabric"):
        validate_layout("mvtec_ad2", root, "screw")


def test_real_iad_loads_the_json_split(tmp_path):
    cfg = config(tmp_path, "real_iad", make_real_iad(tmp_path / "Real-IAD"))
    datamodule = loaded(cfg)
    assert sorted(datamodule.test_data.samples.label_index.tolist()) == [0] * N_TEST_GOOD + [1] * N_BAD
    assert len(datamodule.train_data) + len(datamodule.val_data) == N_TRAIN
    datamodule.prepare_data()  # anomalib's RealIAD only checks the folders (it cannot download)


def test_real_iad_detect(tmp_path):
    cfg = config(tmp_path, "real_iad", make_real_iad(tmp_path / "Real-IAD"), "detector=padim")
    record = run_detect(cfg, RANDOM, tmp_path / "detect")
    for key in ("image_AUROC", *PIXEL):
        assert 0.0 <= record.metrics[key] <= 1.0, (key, record.metrics)


def _edit_json(root: Path, edit) -> None:
    import json

    path = root / "realiad_jsons/realiad_jsons/audiojack.json"
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))


@pytest.mark.parametrize("breakage,error", [
    (lambda r: (r / "realiad_jsons/realiad_jsons/audiojack.json").unlink(), r"Missing Real-IAD split file .*audiojack\.json"),
    (lambda r: (r / "realiad_jsons/realiad_jsons/audiojack.json").write_text("{"), r"Cannot parse .*audiojack\.json"),
    (lambda r: _edit_json(r, lambda m: m["test"][-1].update(mask_path=None)), r"test\[6\]: anomalous test image .* has no mask_path"),
    (lambda r: _edit_json(r, lambda m: m["train"].append(m["test"][-1])), r"train\[10\] is an anomalous image \(QS\)"),
    (lambda r: _edit_json(r, lambda m: m.update(test=m["test"][N_TEST_GOOD:])), r"needs both normal \(OK\) and anomalous"),
    (lambda r: (r / "realiad_256/audiojack/OK/S0001/audiojack_0001_OK_C2.jpg").unlink(), r"train\[1\] names .*_C2\.jpg, which does not exist"),
    (lambda r: break_image(r / "realiad_256/audiojack/NG/AK/S0030/audiojack_0030_AK_C1.png"), r"Cannot read image .*S0030/audiojack_0030_AK_C1\.png"),
    (lambda r: shutil.rmtree(r / "realiad_256"), r"(?s)realiad_256/audiojack not found.*dataset\.datamodule\.resolution"),
])
def test_real_iad_bad_input(breakage, error, tmp_path):
    root = make_real_iad(tmp_path / "Real-IAD")
    breakage(root)
    with pytest.raises(DatasetError, match=error):
        validate_dataset(config(tmp_path, "real_iad", root).dataset)


def test_real_iad_category_and_resolution_are_checked(tmp_path):
    root = make_real_iad(tmp_path / "Real-IAD")
    with pytest.raises(DatasetError, match=r"Unknown category 'brick' for dataset 'real_iad'.*audiojack, bottle_cap"):
        validate_dataset(config(tmp_path, "real_iad", root, "dataset.category=brick").dataset)
    with pytest.raises(DatasetError, match=r"resolution='128' is not a Real-IAD resolution"):
        validate_dataset(config(tmp_path, "real_iad", root, "dataset.datamodule.resolution=128").dataset)
    with pytest.raises(DatasetError, match=r"(?s)nowhere does not exist.*REAL-IAD/Real-IAD"):
        validate_dataset(config(tmp_path, "real_iad", tmp_path / "nowhere").dataset)


def test_a_folder_name_anomalib_cannot_read_is_refused_up_front_with_a_fix_that_works(tmp_path):
    """anomalib 2.7 stops on any path outside printable ASCII ("Path contains non-printable
    characters"), and resolves symbolic links first, so a link under an ASCII name does not help. The
    layout check names the folder, the character and the fix; the fix it gives (the folder renamed)
    loads."""
    from anomalib.data import Folder

    root = make_folder(tmp_path / "prüfteile")

    def anomalib_folder(path):
        return Folder(name="parts", root=path, normal_dir="good", abnormal_dir="defect",
                      normal_test_dir="good_test", mask_dir="masks", num_workers=0)

    with pytest.raises(ValueError, match="non-printable"):  # what anomalib itself does with it
        anomalib_folder(root).setup()
    (tmp_path / "link").symlink_to(root, target_is_directory=True)
    with pytest.raises(ValueError, match="non-printable"):  # ... also through a link
        anomalib_folder(tmp_path / "link").setup()
    with pytest.raises(DatasetError, match=r"Folder name 'prüfteile'.*'ü'.*mv '.*prüfteile' '.*prufteile'"):
        validate_dataset(folder_config(tmp_path, f"'{root}'").dataset)  # quoted: Hydra's override grammar
    root.rename(tmp_path / "prufteile")
    datamodule = loaded(folder_config(tmp_path, tmp_path / "prufteile"))
    assert len(datamodule.train_data) + len(datamodule.val_data) == N_TRAIN


def test_an_image_file_name_anomalib_cannot_read_is_named(tmp_path):
    root = make_folder(tmp_path / "parts")
    (root / "good" / "000.png").rename(root / "good" / "prüf_000.png")
    with pytest.raises(DatasetError, match=r"File name 'prüf_000.png'.*rename the files to ASCII names"):
        validate_dataset(folder_config(tmp_path, root).dataset)

"""Built-in procedural dataset (evaluation.datasets.builtin) and layout validation (evaluation.datasets.layouts).

CPU only, no network, a few seconds: every test generates small datasets under pytest's tmp_path.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from evaluation.datasets.builtin import CATEGORIES, DEFECTS, make_builtin_dataset
from evaluation.datasets.layouts import DATASETS, DatasetError, validate_layout

SMALL = dict(image_size=64, n_train=3, n_test_good=2, n_test_defect=2)
N_TRAIN = inspect.signature(make_builtin_dataset).parameters["n_train"].default  # the default build's normals


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """The default-sized built-in dataset, generated once for the read-only tests."""
    return make_builtin_dataset(tmp_path_factory.mktemp("builtin") / "ds", seed=0)


@pytest.fixture
def small(tmp_path) -> Path:
    """A small private copy for tests that damage it."""
    return make_builtin_dataset(tmp_path / "ds", seed=3, **SMALL)


# ---------------------------------------------------------------------------------------------
# evaluation.datasets.builtin
# ---------------------------------------------------------------------------------------------


def test_layout_and_counts(dataset):
    assert json.loads((dataset / "builtin.json").read_text())["seed"] == 0
    assert sorted(p.name for p in dataset.iterdir()) == sorted([*CATEGORIES, "builtin.json"])
    assert not list(dataset.parent.glob("*.tmp-*")), "temporary build folder left behind"
    for category in CATEGORIES:
        c = dataset / category
        assert sorted(p.name for p in c.iterdir()) == ["ground_truth", "test", "train"]
        assert sorted(p.name for p in (c / "train").iterdir()) == ["good"]
        assert sorted(p.name for p in (c / "test").iterdir()) == sorted(["good", *DEFECTS])
        assert sorted(p.name for p in (c / "ground_truth").iterdir()) == sorted(DEFECTS)
        assert [p.name for p in sorted((c / "train/good").iterdir())] == [f"{i:03d}.png" for i in range(N_TRAIN)]
        assert [p.name for p in sorted((c / "test/good").iterdir())] == [f"{i:03d}.png" for i in range(8)]
        for defect in DEFECTS:
            assert [p.name for p in sorted((c / "test" / defect).iterdir())] == [f"{i:03d}.png" for i in range(4)]
            masks = sorted((c / "ground_truth" / defect).iterdir())
            assert [p.name for p in masks] == [f"{i:03d}_mask.png" for i in range(4)]
        with Image.open(c / "train/good/000.png") as image:
            assert (image.mode, image.size) == ("RGB", (128, 128))


def test_same_seed_is_byte_identical_other_seed_differs(tmp_path):
    a = _files(make_builtin_dataset(tmp_path / "a", seed=7, **SMALL))
    b = _files(make_builtin_dataset(tmp_path / "b", seed=7, **SMALL))
    c = _files(make_builtin_dataset(tmp_path / "c", seed=8, **SMALL))
    assert a == b
    assert a.keys() == c.keys()
    images = [k for k in a if k.endswith(".png") and "/ground_truth/" not in k]
    assert all(a[k] != c[k] for k in images), "a different seed must change every image"


def test_normal_images_vary(dataset):
    for category in CATEGORIES:
        digests = {hashlib.sha256(p.read_bytes()).hexdigest() for p in (dataset / category / "train/good").iterdir()}
        assert len(digests) == N_TRAIN


def test_masks_are_exact_and_binary(dataset):
    for category in CATEGORIES:
        c = dataset / category
        for defect in DEFECTS:
            for image_path in sorted((c / "test" / defect).iterdir()):
                mask_path = c / "ground_truth" / defect / f"{image_path.stem}_mask.png"
                with Image.open(image_path) as image, Image.open(mask_path) as mask:
                    assert mask.mode == "L" and mask.size == image.size
                    m = np.asarray(mask)
                assert set(np.unique(m).tolist()) == {0, 255}, mask_path
                assert 0.005 <= (m > 0).mean() <= 0.05, f"{mask_path}: coverage {(m > 0).mean():.4f}"


def test_mask_marks_exactly_the_altered_pixels(tmp_path):
    """Regenerating the normal image a defect image started from shows the mask is pixel-exact."""
    from evaluation.datasets import builtin

    root = make_builtin_dataset(tmp_path / "ds", seed=5, **SMALL)
    for c, category in enumerate(CATEGORIES):
        for k, defect in enumerate(DEFECTS):
            rng = np.random.default_rng([5, c, 2 + k, 0])
            normal, shape = builtin._NORMALS[category](rng, SMALL["image_size"])
            image = np.asarray(Image.open(root / category / "test" / defect / "000.png"))
            mask = np.asarray(Image.open(root / category / "ground_truth" / defect / "000_mask.png")) > 0
            np.testing.assert_array_equal(mask, (image != normal).any(axis=2))
            assert not (mask & ~shape.allowed).any(), "defect outside the object"


def test_subtle_defects_stay_subtle_and_exact(tmp_path):
    """The subtle types alter what their docstrings say: ``misplaced`` only rearranges pixels of the
    same image, ``faint_scratch`` moves them by 10-18 grey levels, ``tint`` shifts colour at (nearly)
    constant brightness; every mask equals the altered pixels."""
    from evaluation.datasets import builtin

    root = make_builtin_dataset(tmp_path / "ds", seed=4, **SMALL)
    for c, category in enumerate(CATEGORIES):
        for i in range(SMALL["n_test_defect"]):
            for defect in ("misplaced", "faint_scratch", "tint"):
                normal, _ = builtin._NORMALS[category](
                    np.random.default_rng([4, c, 2 + DEFECTS.index(defect), i]), SMALL["image_size"])
                image = np.asarray(Image.open(root / category / "test" / defect / f"{i:03d}.png")).astype(int)
                mask = np.asarray(Image.open(root / category / "ground_truth" / defect / f"{i:03d}_mask.png")) > 0
                np.testing.assert_array_equal(mask, (image != normal).any(axis=2))
                diff = image[mask] - normal[mask].astype(int)
                if defect == "misplaced":  # every new pixel value occurs in the normal image
                    palette = {tuple(v) for v in normal.reshape(-1, 3)}
                    assert all(tuple(v) in palette for v in image[mask])
                elif defect == "faint_scratch":
                    assert np.abs(diff).max() <= 18 and len(np.unique(np.sign(diff))) == 1
                else:  # tint: a chroma shift of at most 16 levels, brightness within rounding
                    assert np.abs(diff).max() <= 16 and np.abs(diff.sum(axis=1)).max() <= 3


def duplicate_neighbours(image: np.ndarray) -> np.ndarray:
    """Pixels equal (all channels) to their right, left, upper or lower neighbour."""
    dup = np.zeros(image.shape[:2], bool)
    across, down = (image[:, 1:] == image[:, :-1]).all(-1), (image[1:] == image[:-1]).all(-1)
    dup[:, :-1] |= across
    dup[:, 1:] |= across
    dup[:-1] |= down
    dup[1:] |= down
    return dup


@pytest.mark.parametrize("category", CATEGORIES)
def test_misplaced_leaves_no_resampling_fingerprint(category):
    """``misplaced`` moves pixels without resampling: inside its masks, pixels equal to a neighbour are
    no more common than elsewhere in the same images (at most 1.5 times; measured 0.7-0.95 over 30
    images). The nearest-neighbour rotation it replaced left 16-29% of the defect's pixels equal to a
    neighbour against 0.1-1.4% elsewhere (12 to 280 times)."""
    from evaluation.datasets import builtin

    c, k = CATEGORIES.index(category), 2 + DEFECTS.index("misplaced")
    inside = elsewhere = 0
    n_inside = n_elsewhere = 0
    for i in range(30):
        rng = np.random.default_rng([0, c, k, i])  # the built-in dataset's stream of this image
        normal, shape = builtin._NORMALS[category](rng, 128)
        image, mask = builtin._add_defect(rng, normal, shape, "misplaced")
        dup = duplicate_neighbours(image)
        inside, n_inside = inside + dup[mask].sum(), n_inside + mask.sum()
        elsewhere, n_elsewhere = elsewhere + dup[~mask].sum(), n_elsewhere + (~mask).sum()
    assert n_inside > 30 * 0.005 * 128**2  # every image got its defect (at least 0.5% of the image)
    assert inside / n_inside <= 1.5 * elsewhere / n_elsewhere, (inside / n_inside, elsewhere / n_elsewhere)


def test_a_build_of_an_older_format_is_regenerated(tmp_path):
    from evaluation.datasets import builtin

    root = make_builtin_dataset(tmp_path / "ds", seed=1, **SMALL)
    params = json.loads((root / "builtin.json").read_text())
    (root / "builtin.json").write_text(json.dumps({**params, "format_version": builtin.FORMAT_VERSION - 1,
                                                   "defects": ["scratch", "hole", "stain"]}))
    shutil.rmtree(root / "weave/test/tint")  # as an older build lacks the new types
    assert make_builtin_dataset(tmp_path / "ds", seed=1, **SMALL) == root
    assert json.loads((root / "builtin.json").read_text()) == params
    assert (root / "weave/test/tint/000.png").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "ds.lock"]  # nothing left aside


def _build_and_report_inode(root: str) -> int:
    make_builtin_dataset(root, seed=1, **SMALL)
    return Path(root, "weave").stat().st_ino


@pytest.mark.slow  # three processes building a dataset
def test_parallel_jobs_build_the_dataset_once():
    """Parallel sweep jobs that all find no dataset: one builds it, the others wait and use that build.
    (Each used to build its own and swap it into place, deleting the folder under a job reading it.)"""
    import multiprocessing as mp
    import tempfile

    with tempfile.TemporaryDirectory() as tmp, mp.get_context("spawn").Pool(3) as pool:
        inodes = pool.map(_build_and_report_inode, [str(Path(tmp) / "ds")] * 3)
        assert len(set(inodes)) == 1
        assert sorted(p.name for p in Path(tmp).iterdir()) == ["ds", "ds.lock"]


def test_good_test_images_have_no_mask(dataset):
    for category in CATEGORIES:
        gt = dataset / category / "ground_truth"
        # MVTec convention: masks exist only for defect folders; nothing for test/good.
        assert not (gt / "good").exists()
        assert sorted(p.name for p in gt.iterdir()) == sorted(DEFECTS)
        n_masks = sum(1 for _ in gt.rglob("*.png"))
        assert n_masks == sum(1 for d in DEFECTS for _ in (dataset / category / "test" / d).iterdir())


def test_reuses_matching_folder_and_rejects_mismatch(tmp_path):
    root = make_builtin_dataset(tmp_path / "ds", seed=1, **SMALL)
    marker = root / "weave/train/good/000.png"
    before = marker.stat().st_mtime_ns
    assert make_builtin_dataset(tmp_path / "ds", seed=1, **SMALL) == root
    assert marker.stat().st_mtime_ns == before, "matching dataset must be reused, not rewritten"
    with pytest.raises(FileExistsError, match=r"(?s)ds.*seed.*dataset\.root"):
        make_builtin_dataset(tmp_path / "ds", seed=2, **SMALL)
    with pytest.raises(FileExistsError, match="n_train"):
        make_builtin_dataset(tmp_path / "ds", seed=1, **{**SMALL, "n_train": 4})
    other = tmp_path / "not_builtin"
    other.mkdir()
    (other / "something.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not_builtin"):
        make_builtin_dataset(other, **SMALL)


def test_builtin_datamodule_builds_its_data_in_prepare_data_and_loads_it_with_anomalib(dataset, tmp_path):
    """evaluation.datasets.datamodules.Builtin: anomalib's MVTecAD loader; prepare_data (which Lightning calls
    before fitting) builds the data where MVTecAD's would download, and reuses a matching build."""
    from evaluation.datasets.datamodules import Builtin

    fresh = Builtin(root=tmp_path / "fresh", category="tiles", num_workers=0,
                    generation={"image_size": 64, "n_train": 4, "n_test_good": 2, "n_test_defect": 1})
    fresh.prepare_data()
    fresh.setup()
    assert len(fresh.train_data) == 4 and tuple(fresh.train_data[0].image.shape) == (3, 64, 64)
    stamp = (dataset / "weave").stat().st_mtime_ns
    datamodule = Builtin(root=dataset, category="weave", train_batch_size=4, eval_batch_size=4, num_workers=0,
                         generation={"seed": 0})
    datamodule.prepare_data()
    assert (dataset / "weave").stat().st_mtime_ns == stamp, "a matching build is reused, not rebuilt"
    datamodule.setup()
    assert len(datamodule.train_data) == N_TRAIN
    assert len(datamodule.test_data) == 8 + 4 * len(DEFECTS)
    n_defect = 0
    for i in range(len(datamodule.test_data)):
        item = datamodule.test_data[i]
        assert tuple(item.image.shape) == (3, 128, 128)
        if Path(item.image_path).parent.name == "good":
            assert int(item.gt_label) == 0 and int(item.gt_mask.sum()) == 0
        else:
            n_defect += 1
            assert int(item.gt_label) == 1
            assert Path(item.mask_path).name == f"{Path(item.image_path).stem}_mask.png"
            assert Path(item.mask_path).parent.name == Path(item.image_path).parent.name
            assert int(item.gt_mask.sum()) > 0
    assert n_defect == 4 * len(DEFECTS)
    batch = next(iter(datamodule.train_dataloader()))
    assert tuple(batch.image.shape) == (4, 3, 128, 128)


# ---------------------------------------------------------------------------------------------
# evaluation.datasets.layouts
# ---------------------------------------------------------------------------------------------


def test_every_dataset_config_names_a_registered_dataset_and_category(tmp_path):
    """The registry (anomalib's category lists, ours for the built-in data) and conf/dataset agree."""
    from conftest import CONF_DIR, compose_config

    options = sorted(p.stem for p in Path(CONF_DIR, "dataset").glob("*.yaml"))
    for option in options:
        d = compose_config(tmp_path, f"dataset={option}").dataset
        assert d.name in DATASETS, option
        assert d.category in DATASETS[d.name] or not DATASETS[d.name], option
    assert len(options) == len(DATASETS)


def test_validate_builtin_ok(dataset):
    for category in CATEGORIES:
        assert validate_layout("builtin", dataset, category) == dataset / category


def test_unknown_dataset(tmp_path):
    with pytest.raises(DatasetError, match=r"Unknown dataset name 'mvtecc'.*mvtec, visa, mvtec_loco, builtin"):
        validate_layout("mvtecc", tmp_path, "bottle")


def test_unknown_category(tmp_path):
    (tmp_path / "bottle" / "train").mkdir(parents=True)  # a root that looks like MVTec AD
    (tmp_path / "bottle" / "test").mkdir()
    with pytest.raises(DatasetError, match=r"Unknown category 'botle'.*found .*: bottle\..*bottle, cable, capsule.*zipper"):
        validate_layout("mvtec", tmp_path, "botle")
    with pytest.raises(DatasetError, match=r"weave, tiles, washer"):
        validate_layout("builtin", tmp_path, "bottle")


def test_missing_root(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError, match=r"(?s)nowhere does not exist.*MVTec website.*dataset\.root="):
        validate_layout("mvtec", missing, "bottle")
    with pytest.raises(DatasetError, match=r"(?s)spot-diff.*anomalib"):
        validate_layout("visa", missing, "pcb1")
    with pytest.raises(DatasetError, match=r"generated automatically"):
        validate_layout("builtin", missing, "weave")


def test_missing_category_folder(small):
    import shutil

    shutil.rmtree(small / "tiles")
    with pytest.raises(DatasetError, match=r"Category folder .*tiles not found"):
        validate_layout("builtin", small, "tiles")
    with pytest.raises(DatasetError, match=r"looks like a category folder"):
        validate_layout("builtin", small / "weave", "weave")


def test_missing_or_empty_train_good(small):
    import shutil

    for p in (small / "weave/train/good").iterdir():
        p.unlink()
    with pytest.raises(DatasetError, match=r"train/good holds no images"):
        validate_layout("builtin", small, "weave")
    shutil.rmtree(small / "weave/train/good")
    with pytest.raises(DatasetError, match=r"Missing folder .*train/good"):
        validate_layout("builtin", small, "weave")


def test_missing_test(small):
    import shutil

    shutil.rmtree(small / "washer/test")
    with pytest.raises(DatasetError, match=r"Missing folder .*washer/test"):
        validate_layout("builtin", small, "washer")


def test_corrupt_image(small):
    bad = small / "tiles/test/hole/001.png"
    bad.write_bytes(b"this is not a png at all")
    with pytest.raises(DatasetError, match=r"(?s)tiles/test/hole/001\.png.*re-download"):
        validate_layout("builtin", small, "tiles")


def test_truncated_image(small):
    bad = small / "weave/train/good/002.png"
    bad.write_bytes(bad.read_bytes()[:-200])
    with pytest.raises(DatasetError, match=r"weave/train/good/002\.png"):
        validate_layout("builtin", small, "weave")


def test_mask_size_mismatch(small):
    mask = small / "washer/ground_truth/stain/000_mask.png"
    Image.new("L", (32, 40), 0).save(mask)
    with pytest.raises(DatasetError, match=r"(?s)000_mask\.png is 32x40.*test/stain/000\.png is 64x64"):
        validate_layout("builtin", small, "washer")


def test_plain_mask_name_is_checked_too(small):
    gt = small / "washer/ground_truth/stain"
    (gt / "001_mask.png").unlink()
    Image.new("L", (10, 10), 0).save(gt / "001.png")
    with pytest.raises(DatasetError, match=r"ground_truth/stain/001\.png is 10x10"):
        validate_layout("builtin", small, "washer")

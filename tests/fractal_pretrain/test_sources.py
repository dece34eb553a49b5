"""Pre-training sources beside fractals: procedural generators (dead leaves, spectral noise) and image
folders, checked for what each must be: bit-exact per key, the generator's defining property,
held-out validation files, clear errors; and each pre-trains through the real stage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose_config, run_pretrain
from PIL import Image
from skimage import data as skimage_data

from console.errors import ConfigError
from fractal_pretrain.datasets import PREVIEW, TRAIN, VAL
from fractal_pretrain.procedural import dead_leaves_class, render_dead_leaves, render_spectral, spectral_class
from fractal_pretrain.sources import FolderSource, ProceduralSource
from pipeline.config import pretrain_hash, source_label


@pytest.mark.parametrize("name", ["dead_leaves", "spectral_noise"])
def test_procedural_images_are_a_function_of_seed_and_key(name):
    """Two sources drawn from one seed give the same bytes item by item; another seed draws other
    classes; the training, validation and preview streams differ; every epoch renders afresh."""
    a, b = (ProceduralSource.draw(name, 4, 32, seed=0) for _ in range(2))
    assert a == b and ProceduralSource.draw(name, 4, 32, seed=1).classes != a.classes
    train, again = a.images(0, 3, TRAIN), b.images(0, 3, TRAIN)
    assert len(train) == 12 and [train[k][1] for k in range(12)] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    for k in (0, 5, 11, 12 + 5):  # the last: item 5 of epoch 1
        assert torch.equal(train[k][0], again[k][0])
    assert not torch.equal(train[5][0], train[12 + 5][0])  # epoch 1 renders item 5 afresh
    val, preview = a.images(0, 3, VAL), a.images(0, 3, PREVIEW)
    assert not torch.equal(train[0][0], val[0][0]) and not torch.equal(val[0][0], preview[0][0])
    assert a.preview(0).shape == (4 * 32, 8 * 32, 3)


def radial_slope(img: np.ndarray) -> float:
    """Slope of log amplitude against log frequency of a grey image (an independent measurement)."""
    grey = img.astype(float).mean(axis=2)
    amp = np.abs(np.fft.fft2(grey - grey.mean()))
    fy, fx = np.meshgrid(np.fft.fftfreq(grey.shape[0]), np.fft.fftfreq(grey.shape[1]), indexing="ij")
    f = np.hypot(fx, fy)
    band = (f > 2 / grey.shape[0]) & (f < 0.25)
    return float(np.polyfit(np.log(f[band]), np.log(amp[band]), 1)[0])


def test_spectral_noise_has_its_classs_spectral_slope():
    """The amplitude spectrum of a render falls as 1/f^alpha with the class's alpha (measured on the
    image, not read from the generator)."""
    for alpha in (1.0, 2.0):
        p = {**spectral_class(7), "alpha": alpha, "anisotropy": 1.0, "contrast": 0.15}
        slopes = [radial_slope(render_spectral(p, key, 128)) for key in range(6)]
        assert np.mean(slopes) == pytest.approx(-alpha, abs=0.25)


def test_dead_leaves_cover_the_image_with_the_classs_shapes():
    """A class of large shapes gives images of few shapes (few colours, long runs of equal pixels);
    a class of small shapes, many; every pixel is painted; hues stay in the class's band."""
    base = {**dead_leaves_class(3), "texture_p": 0.0, "hue_spread": 0.05, "sat_min": 0.9, "val_min": 0.9}
    large = [render_dead_leaves({**base, "alpha": 1.5, "r_max": 0.4}, k, 64) for k in range(4)]
    small = [render_dead_leaves({**base, "alpha": 3.5, "r_max": 0.1}, k, 64) for k in range(4)]
    colours = lambda imgs: np.mean([len(np.unique(i.reshape(-1, 3), axis=0)) for i in imgs])  # noqa: E731
    assert colours(small) > 3 * colours(large)
    assert all(i.max(axis=2).min() >= 0.9 * 255 - 1 for i in large + small)  # value >= 0.9 everywhere: no gap
    hue = np.asarray(Image.fromarray(large[0]).convert("HSV"))[..., 0] / 255.0
    assert np.abs(((hue - base["hue"] + 0.5) % 1.0) - 0.5).max() < 0.05 + 0.02


@pytest.fixture
def photo_folder(tmp_path):
    """Real photographs shipped with scikit-image, two per class (loading code only)."""
    root = tmp_path / "photos"
    for cls, names in {"cats": ("chelsea", "cat"), "things": ("coffee", "rocket"), "people": ("astronaut",)}.items():
        (root / cls).mkdir(parents=True)
        for name in names:
            Image.fromarray(getattr(skimage_data, name)()).save(root / cls / f"{name}.jpg")
    return root


def test_an_image_folder_is_indexed_split_and_loaded(photo_folder):
    """Classes are the sub-folders; one image of each class of two is held out (seeded), a class of
    one keeps it; validation images are the centre view, training items random crops that are
    reproducible per key and fresh per epoch."""
    source = FolderSource.scan(photo_folder, "folders", 48, 0.1, seed=0)
    assert source.classes == ("cats", "people", "things") and source.num_classes == 3
    assert source.val.tolist() == FolderSource.scan(photo_folder, "folders", 48, 0.1, seed=0).val.tolist()
    held = [f for f, v in zip(source.files, source.val) if v]
    assert len(held) == 2 and {f.split("/")[0] for f in held} == {"cats", "things"}

    val = source.images(0, 5, VAL)
    assert len(val) == 2
    img, label = val.render_index(0, 0)
    with Image.open(photo_folder / held[0]) as photo:  # the centre view, computed independently
        from torchvision.transforms import v2
        x = torch.from_numpy(np.asarray(photo.convert("RGB")).copy()).permute(2, 0, 1)
        expected = v2.CenterCrop(48)(v2.Resize(48, antialias=True)(x)).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(img, expected)
    assert label == source.classes.index(held[0].split("/")[0])

    train = source.images(0, 2, TRAIN)
    assert len(train) == 2 * 3 and train[0][0].shape == (3, 48, 48)
    assert torch.equal(train[1][0], source.images(0, 2, TRAIN)[1][0])
    assert not torch.equal(train[1][0], train[len(train) + 1][0])


def test_image_folder_errors_name_the_problem_and_the_fix(photo_folder, tmp_path):
    with pytest.raises(ConfigError, match="is not a folder"):
        FolderSource.scan(tmp_path / "nowhere", "folders", 32, 0.1, 0)
    Image.fromarray(skimage_data.camera()).save(photo_folder / "loose.png")
    with pytest.raises(ConfigError, match=r"lie directly in .*labels=none with pretrain/objective=simclr"):
        FolderSource.scan(photo_folder, "folders", 32, 0.1, 0)
    (photo_folder / "loose.png").unlink()
    (photo_folder / "things" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(ConfigError, match="broken.png is not a readable image"):
        FolderSource.scan(photo_folder, "folders", 32, 0.1, 0)
    one = tmp_path / "one" / "only"
    one.mkdir(parents=True)
    Image.fromarray(skimage_data.coffee()).save(one / "a.png")
    with pytest.raises(ConfigError, match="one class folder"):
        FolderSource.scan(one.parent, "folders", 32, 0.1, 0)
    with pytest.raises(ConfigError, match="no class has two images"):
        FolderSource.scan(one.parent, "none", 32, 0.1, 0)


def test_each_source_is_its_own_arm(tmp_path):
    """Report arms: the source names the arm; a source's hash ignores fractal settings it does not
    read, and fractal arms hash as they did before sources existed (no pretrain.source in them)."""
    import hashlib
    import json

    from omegaconf import OmegaConf

    fractal = compose_config(tmp_path)
    leaves = compose_config(tmp_path, "pretrain/source=dead_leaves")
    assert (source_label(fractal), source_label(leaves)) == ("fractal", "dead_leaves")
    assert source_label(compose_config(tmp_path, "pretrain/source=dead_leaves", "pretrain/objective=simclr")) \
        == "dead_leaves-simclr"
    assert pretrain_hash(leaves) != pretrain_hash(fractal)
    assert pretrain_hash(compose_config(tmp_path, "pretrain/source=dead_leaves", "fractal.sampler=fractaldb")) \
        == pretrain_hash(leaves)
    assert pretrain_hash(compose_config(tmp_path, "pretrain/source=dead_leaves", "fractal.num_classes=5")) \
        != pretrain_hash(leaves)  # read through pretrain.source.num_classes

    resolved = OmegaConf.to_container(fractal, resolve=True)
    del resolved["pretrain"]["source"]
    from pipeline.config import BOOKKEEPING
    picked = {g: {k: v for k, v in resolved[g].items() if k not in BOOKKEEPING}
              for g in ("backbone", "fractal", "pretrain", "optim")}
    assert pretrain_hash(fractal) == hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()[:12]


@pytest.mark.parametrize("overrides", [["pretrain/source=dead_leaves"], ["pretrain/source=spectral_noise"]])
def test_procedural_sources_pretrain_and_export(tmp_path, overrides):
    """The generate stage stores the classes and a preview; the pretrain stage trains on them and
    exports a backbone; a second run of the same seed exports the same weights."""
    from safetensors.torch import load_file

    cfg = compose_config(tmp_path, *overrides)
    first = run_pretrain(cfg, tmp_path / "a")
    name = cfg.pretrain.source.name
    assert (tmp_path / "a" / "fractals" / "classes.json").is_file()
    assert first.global_step == cfg.pretrain.max_steps
    again = run_pretrain(compose_config(tmp_path, *overrides), tmp_path / "b")
    w1, w2 = (load_file(r.export_dir / "model.safetensors") for r in (first, again))
    assert all(torch.equal(w1[k], w2[k]) for k in w1), name


def test_an_image_folder_pretrains_self_supervised_without_labels(tmp_path, photo_folder):
    """labels: none trains SimCLR on the photos; the classification objective is refused up front."""
    from pipeline.pretrain import pretrain_spec

    base = ["pretrain/source=image_folder", f"pretrain.source.root={photo_folder}", "pretrain.source.labels=none"]
    with pytest.raises(ConfigError, match="no classes to learn; use pretrain/objective=simclr"):
        pretrain_spec(compose_config(tmp_path, *base))
    record = run_pretrain(compose_config(tmp_path, *base, "pretrain/objective=simclr"), tmp_path / "run")
    assert record.global_step == 4 and (record.export_dir / "model.safetensors").is_file()
    assert (tmp_path / "run" / "fractals" / "images.json").is_file()


def test_a_sources_images_written_to_a_folder_load_back_as_an_image_folder(tmp_path):
    """scripts/write_source_images.py: one sub-folder per class, PNGs equal to the source's own
    training renders; the folder then scans as an image_folder source with those classes; bad input
    exits 2 and writes nothing."""
    import subprocess
    import sys

    from conftest import CONF_DIR

    from pipeline.generate import generate_spec, make_source

    script = Path(CONF_DIR).parent / "scripts" / "write_source_images.py"
    out = tmp_path / "leaves"
    overrides = ["pretrain/source=dead_leaves", "fractal.num_classes=3", "fractal.render.size=24", "seed=5"]
    subprocess.run([sys.executable, str(script), "--out", str(out), "--per-class", "4", *overrides], check=True)
    assert sorted(p.name for p in out.iterdir()) == ["class_000", "class_001", "class_002"]
    source = make_source(generate_spec(compose_config(tmp_path, *overrides)))
    data = source.images(5, 4, TRAIN)
    np.testing.assert_array_equal(np.asarray(Image.open(out / "class_001" / "00002.png")),
                                  data.render_index(data.index_of(1, 2), 0)[0])
    folder = FolderSource.scan(out, "folders", 24, 0.25, seed=0)
    assert folder.classes == ("class_000", "class_001", "class_002") and len(folder.files) == 12

    bad = subprocess.run([sys.executable, str(script), "--out", str(tmp_path / "none"), "pretrain/source=image_folder"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "pretrain.source.root" in bad.stderr and not (tmp_path / "none").exists()

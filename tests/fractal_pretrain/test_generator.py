"""Fractal generator: the formulas' properties, the renderer's options, the families, and
bit-exact reproducibility (two runs, two processes, num_workers 0 vs 2, batch sizes).

CPU only, offline; small images and point counts keep the file well under a minute once the numba
cache is warm (the first run after a change to render.py compiles for ~15 s).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image
from torch.utils.data import DataLoader

from fractal_pretrain.fractals import render as R
from fractal_pretrain.fractals.families import MultiFormulaConfig, multi_formula_layout
from fractal_pretrain.fractals.ifs import (
    FORMAT_VERSION,
    SystemBank,
    fill_ratio,
    sample_bank,
    sample_singular_values,
)
from fractal_pretrain.fractals.render import RenderConfig, derive_key, render, render_key
from pipeline.generate import generate, generate_spec
from fractal_pretrain.datamodule import EpochSampler
from fractal_pretrain.datasets import (
    PREVIEW,
    TRAIN,
    VAL,
    FractalImages,
    MultiFormulaImages,
    OneImagePerClass,
    make_dataset,
    preview_grid,
)

ROOT = Path(__file__).resolve().parents[2]

SMALL = RenderConfig(size=32, n_points=4000, patch=True, blur_p=0.5)
GREY = RenderConfig(size=48, n_points=20_000, color=False, flip=False, blur_p=0.0)


@pytest.fixture(scope="module")
def bank() -> SystemBank:
    return sample_bank(6, 3, seed=11)


def family_args(family: str, **render) -> dict:
    """``make_dataset``'s family keywords at test sizes."""
    args = {"family": family, "render_cfg": RenderConfig(size=32, n_points=4000, patch=True, blur_p=0.5, **render)}
    if family == "multi_formula":
        args["multi_formula"] = MultiFormulaConfig(min_fractals=4, max_fractals=10, min_scale=0.15, max_scale=0.6)
    if family == "ofdb":
        args["augment"] = {"enabled": True, "crop_scale": [0.3, 1.0], "auto_augment": True, "random_erasing": 0.25}
    return args


def map_probabilities(A: np.ndarray) -> np.ndarray:
    """The reference's rule: p_k proportional to |det A_k|."""
    det = np.abs(np.linalg.det(A))
    return det / det.sum()


def choice_probabilities(A: np.ndarray) -> np.ndarray:
    """The probability with which the kernel picks each map of ``A``: its lookup table's shares."""
    table = R.map_table(np.ascontiguousarray(A, dtype=np.float64))
    return np.bincount(table, minlength=len(A)) / len(table)


def ofdb_bank() -> SystemBank:
    return sample_bank(6, 1, seed=11, meta={"family": "ofdb"})


# ---------------------------------------------------------------------------------------------
# IFS sampling: Anderson & Farrell's formulas
# ---------------------------------------------------------------------------------------------


def test_anderson_farrell_systems_have_the_papers_properties():
    bank = sample_bank(100, 2, seed=0)
    assert set(bank.n_maps.tolist()) == {2, 3, 4}
    for i in range(len(bank)):
        A, b = bank.system(i)
        n = len(A)
        s = np.linalg.svd(A, compute_uv=False)
        assert np.all(s[:, 0] <= 1.0 + 1e-12), "every map is a contraction (s1 <= 1)"
        assert np.all(s[:, 1] <= s[:, 0] + 1e-12)
        sigma = (s[:, 0] + 2 * s[:, 1]).sum()  # Anderson & Farrell's sigma factor (eq. 3)
        assert (5 + n) / 2 - 1e-9 <= sigma <= (6 + n) / 2 + 1e-9
        # A = R diag(s1, s2) R D: |det A| = s1 s2
        np.testing.assert_allclose(np.abs(np.linalg.det(A)), s[:, 0] * s[:, 1], atol=1e-12)
        assert np.all(np.abs(b) < 1.0)
        assert not bank.A[i, n:].any() and not bank.b[i, n:].any(), "padding maps are zero"
    np.testing.assert_array_equal(bank.labels, np.repeat(np.arange(100), 2))


def test_singular_values_hit_the_sigma_factor_exactly():
    rng = np.random.default_rng(3)
    for _ in range(500):
        n = int(rng.integers(2, 5))
        alpha = rng.uniform((5 + n) / 2, (6 + n) / 2)
        sv = sample_singular_values(n, alpha, rng)
        assert np.all((0 <= sv[:, 1]) & (sv[:, 1] <= sv[:, 0] + 1e-12) & (sv[:, 0] <= 1 + 1e-12))
        assert sv[:, 0].sum() + 2 * sv[:, 1].sum() == pytest.approx(alpha, abs=1e-9)
    with pytest.raises(ValueError, match="unreachable"):
        sample_singular_values(2, 6.5, rng)


def test_every_map_is_reachable_and_each_probability_within_1_1024():
    """The reference picks map k with p_k proportional to |det A_k| exactly; the kernel's table
    must stay within 1/1024 of that and never drop a map (a 1024-entry table lost one in 6.6% of
    3000 systems)."""
    systems = [sample_bank(1, 1, seed=s).system(0)[0] for s in range(1000)]
    rng = np.random.default_rng(0)
    systems += [rng.uniform(-1, 1, (int(rng.integers(2, 9)), 2, 2)) for _ in range(500)]  # FractalDB-like
    degenerate = np.stack([np.diag([0.9, 0.8]), np.diag([0.5, 0.0]), np.diag([0.7, 1e-9])])
    for A in systems + [degenerate]:
        p = map_probabilities(A)
        q = choice_probabilities(A)
        assert np.all(q > 0), "every map is reachable"
        assert np.abs(q - p).max() <= 1 / 1024
    np.testing.assert_allclose(map_probabilities(degenerate), [0.72 / 0.72, 0, 0.7e-9 / 0.72], atol=1e-9)
    # the walk really follows the table: map frequencies of a recorded walk
    A = np.stack([np.diag([0.5, 0.4]), np.diag([0.3, 0.3]), np.diag([0.9, 0.05])])
    table = R.map_table(A)
    state, n, hits = np.uint64(7), 40_000, np.zeros(3)
    for _ in range(n // 4):
        state, r = R._splitmix64(np.uint64(state))  # uint64, as in the kernel (int64 would bias the bits)
        for w in range(4):
            hits[table[((int(r) >> (16 * w)) & 0xFFFF) >> (16 - R.TABLE_BITS)]] += 1
    np.testing.assert_allclose(hits / n, map_probabilities(A), atol=0.01)
def test_jitter_scales_one_map_with_up_to_four_tries_and_never_breaks_contractivity():
    # maps with s1 close to 1: a factor > 1 often breaks contractivity, and a try is then redrawn
    A = np.stack([np.diag([0.97, 0.5]), np.diag([0.6, 0.3]), np.diag([0.99, 0.9])])
    b = np.full((3, 2), 0.5)
    applied = 0
    for seed in range(2000):
        A2, b2 = R.jittered(A, b, True, np.uint64(seed))
        assert max(np.linalg.norm(M, 2) for M in A2) <= 1.0 + 1e-12
        changed = [k for k in range(3) if not np.array_equal(A2[k], A[k])]
        assert len(changed) <= 1
        if changed:
            f = A2[changed[0], 0, 0] / A[changed[0], 0, 0]
            assert 0.8 <= f <= 1.1
            np.testing.assert_allclose(b2[changed[0]], b[changed[0]] * f)
        applied += bool(changed)
    # one try is rejected with probability ~0.18 here: a single draw would apply 82%, four 99.9%
    assert applied / 2000 > 0.99
    # every map at s1 = 0.999: a try fails with probability 0.33, all four with ~1.2%: unjittered
    A = np.stack([np.diag([0.999, 0.5])] * 3)
    kept = sum(np.array_equal(R.jittered(A, b, True, np.uint64(s))[0], A) for s in range(3000))
    assert 0.003 < kept / 3000 < 0.03
    np.testing.assert_array_equal(R.jittered(A, b, False, np.uint64(1))[0], A)
def test_fill_ratio_is_in_a_sane_range():
    af = sample_bank(40, 1, seed=5)
    fills = np.array([fill_ratio(*af.system(i), size=128, n_points=30_000, seed=i) for i in range(len(af))])
    assert np.all(fills > 0.005) and np.all(fills < 0.9)
    assert 0.03 < np.median(fills) < 0.5
    # a Sierpinski triangle in its bounding box fills a known share (dimension 1.585 < 2)
    A = np.stack([np.eye(2) * 0.5] * 3)
    b = np.array([[0.0, 0.0], [0.5, 0.0], [0.25, 0.5]])
    assert 0.15 < fill_ratio(A, b, size=128, n_points=100_000) < 0.45
    # a diverging system fills nothing (and does not crash the kernel)
    assert fill_ratio(np.stack([np.eye(2) * 1.5] * 2), b[:2], size=64, n_points=1000) == 0.0


def test_fractaldb_sampler_uniform_parameters_accepted_by_fill_ratio():
    db = sample_bank(8, 1, seed=2, sampler="fractaldb", fill_rate=0.2, maps=(2, 7), fill_size=128,
                     fill_points=20_000)
    assert db.meta["sampler"] == "fractaldb"
    for i in range(len(db)):
        A, b = db.system(i)
        assert 2 <= len(A) <= 7
        assert np.all(np.abs(A) < 1) and np.all(np.abs(b) < 1)
        # accepted on the search's own seed; any walk of the same system fills about as much
        assert fill_ratio(A, b, size=128, n_points=20_000, seed=99) > 0.1
    img = render_key(*db.system(0), 1, SMALL)
    assert img.any()
    with pytest.raises(ValueError, match="sampler"):
        sample_bank(2, 1, seed=0, sampler="nope")


def test_bank_roundtrip_with_metadata_and_no_pickle(tmp_path, bank):
    b2 = SystemBank(bank.A, bank.b, bank.n_maps, bank.labels, meta={"family": "fractals", "x": [1, 2]})
    path = b2.save(tmp_path / "bank.npz")
    loaded = SystemBank.load(path)
    for name in ("A", "b", "n_maps", "labels"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(bank, name))
    assert loaded.meta == {"family": "fractals", "x": [1, 2]} and loaded.family == "fractals"
    with np.load(path, allow_pickle=False) as f:
        assert int(f["format_version"]) == FORMAT_VERSION
        assert all(f[k].dtype != object for k in f.files)
    # a version-1 bank (no metadata) still loads
    np.savez(tmp_path / "v1.npz", format_version=1, A=bank.A, b=bank.b, n_maps=bank.n_maps, labels=bank.labels)
    assert SystemBank.load(tmp_path / "v1.npz").meta == {}
    np.savez(tmp_path / "v9.npz", format_version=9, A=bank.A, b=bank.b, n_maps=bank.n_maps, labels=bank.labels)
    with pytest.raises(ValueError, match="format 9"):
        SystemBank.load(tmp_path / "v9.npz")


def test_systems_do_not_depend_on_bank_size():
    small, large = sample_bank(3, 2, seed=4), sample_bank(5, 2, seed=4)
    np.testing.assert_array_equal(small.A, large.A[:6])


# ---------------------------------------------------------------------------------------------
# the renderer
# ---------------------------------------------------------------------------------------------


def test_render_is_a_pure_function_of_the_key(bank):
    a = render_key(*bank.system(0), 123, SMALL)
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, render_key(*bank.system(0), 123, SMALL))
    assert not np.array_equal(a, render_key(*bank.system(0), 124, SMALL))
    r1, r2 = np.random.default_rng(5), np.random.default_rng(5)
    np.testing.assert_array_equal(render(*bank.system(1), r1, SMALL), render(*bank.system(1), r2, SMALL))
    assert derive_key(1, 2, 3) != derive_key(1, 3, 2) and derive_key(-1) == derive_key(2**64 - 1)


def test_hue_follows_density_binary_and_log(bank):
    A, b = bank.system(2)
    cfg = RenderConfig(size=48, n_points=20_000, flip=False, blur_p=0.0)
    graded = render_key(A, b, 7, cfg)
    lit = graded.any(axis=2)
    assert len(np.unique(graded[lit], axis=0)) > 5, "hue varies with the density"
    binary = render_key(A, b, 7, replace(cfg, binary=True))
    np.testing.assert_array_equal(binary.any(axis=2), lit)
    assert len(np.unique(binary[lit], axis=0)) == 1, "binary: one colour"
    log = render_key(A, b, 7, replace(cfg, log_density=True))
    np.testing.assert_array_equal(log.any(axis=2), lit)
    grey = render_key(A, b, 7, replace(cfg, color=False))
    assert grey.ndim == 2 and len(np.unique(grey[grey > 0])) == 1 and grey.max() >= 127
def test_flip_is_one_of_the_eight_dihedral_transforms(bank):
    A, b = bank.system(0)
    seen = set()
    for key in range(48):
        plain = render_key(A, b, key, replace(GREY, size=24, n_points=3000))
        flipped = render_key(A, b, key, replace(GREY, size=24, n_points=3000, flip=True))
        variants = [np.rot90(plain, k) for k in range(4)] + [np.rot90(plain.T, k) for k in range(4)]
        matches = [k for k, v in enumerate(variants) if np.array_equal(v, flipped)]
        assert matches, f"key {key}: not a dihedral transform of the unflipped render"
        seen.add(matches[0])
    assert len(seen) == 8


def test_patch_is_a_random_3x3_stamp_with_each_cell_on_half_the_time(bank):
    A, b = bank.system(3)
    cfg = replace(GREY, binary=True)
    grow = [(render_key(A, b, k, replace(cfg, patch=True)) > 0).sum() / (render_key(A, b, k, cfg) > 0).sum()
            for k in range(20)]
    assert np.mean(grow) > 1.3, "the same window: the stamp lights more pixels than the points"
    masks = np.stack([R.patch_mask(np.uint64(derive_key(k)), True) for k in range(4000)])
    assert masks.reshape(len(masks), 9).any(axis=1).all(), "never an empty stamp"
    np.testing.assert_allclose(masks.mean(axis=0), 0.5, atol=0.03)
    np.testing.assert_array_equal(R.patch_mask(np.uint64(123), False), [[0, 0, 0], [0, 1, 0], [0, 0, 0]])
    # the kernel's stamp (a 3x3 correlation of the hit grid) equals stamping point by point
    rng = np.random.default_rng(0)
    size = 16
    hist = rng.poisson(0.3, (size + 4, size + 4)).astype(np.int32)
    mask = (rng.random((3, 3)) < 0.5).astype(np.uint8)
    brute = np.zeros((size + 4, size + 4))
    for py, px in zip(*np.nonzero(hist)):
        for dy in range(3):
            for dx in range(3):
                if mask[dy, dx] and 0 <= py + dy - 1 < size + 4 and 0 <= px + dx - 1 < size + 4:
                    brute[py + dy - 1, px + dx - 1] += hist[py, px]
    np.testing.assert_array_equal(R._stamp(hist, mask, size), brute[2:size + 2, 2:size + 2])


def test_window_is_the_bounding_box_stretched_per_axis():
    """With no shift and no scale the reference's window is the bounding box of all points,
    each axis stretched to the square: the attractor touches all four borders, also when it is
    much wider than tall (one scale factor for both axes would leave bands empty)."""
    bank = sample_bank(30, 1, seed=4)
    cfg = RenderConfig(size=64, n_points=20_000, color=False, flip=False, jitter=False,
                       window_shift=0.0, window_scale_min=1.0, window_scale_max=1.0)
    for s in range(len(bank)):
        img = render_key(*bank.system(s), derive_key(s), cfg) > 0
        assert img[0].any() and img[-1].any() and img[:, 0].any() and img[:, -1].any()
    # the two axes are scaled independently: their ratio spreads over U(0.5, 2) / U(0.5, 2)
    A, b = bank.system(0)
    ratios = []
    for k in range(200):
        d = R.render_draws(k)
        ratios.append((0.5 + 1.5 * d[R.DRAW_SCALE]) / (0.5 + 1.5 * d[R.DRAW_SCALE_Y]))
    assert min(ratios) < 0.5 and max(ratios) > 2.0
def test_blur_happens_with_probability_p(bank):
    A, b = bank.system(1)
    cfg = replace(SMALL, size=16, n_points=500)
    blurred = sum(not np.array_equal(render_key(A, b, k, replace(cfg, blur_p=0.5)),
                                     render_key(A, b, k, replace(cfg, blur_p=0.0))) for k in range(300))
    assert 110 < blurred < 190  # binomial(300, 0.5): +-4.6 sigma
    assert all(not np.array_equal(render_key(A, b, k, replace(cfg, blur_p=1.0)),
                                  render_key(A, b, k, replace(cfg, blur_p=0.0))) for k in range(20))


def test_lit_pixels_have_the_references_constant_value_and_saturation():
    """The reference colours every lit pixel with the render's V in [0.5, 1] and S in [0.3, 1]
    (only the hue follows the density): no dim pixels, whatever the hit count."""
    bank = sample_bank(20, 1, seed=3)
    cfg = RenderConfig(size=96, n_points=30_000, blur_p=0.0)
    values = []
    for s in range(20):
        img = render_key(*bank.system(s), derive_key(3, s), cfg)
        lit = img.max(axis=2) > 0
        assert lit.mean() < 0.9 and not img[~lit].any(), "black background"
        v = img.max(axis=2)[lit]
        assert v.min() == v.max() >= 127, "one value V >= 0.5 for every lit pixel"
        sat = 1 - img.min(axis=2)[lit] / v
        assert sat.max() - sat.min() < 0.02 and 0.29 <= sat.mean() <= 1.0
        values.append(int(v[0]))
    assert np.median(values) > 160 and max(values) - min(values) > 50, "V drawn in [0.5, 1] per render"
def test_diamond_square_background_keeps_the_fractal_on_top(bank):
    A, b = bank.system(0)
    cfg = RenderConfig(size=48, n_points=20_000, blur_p=0.0)
    plain = render_key(A, b, 3, cfg)
    bg = render_key(A, b, 3, replace(cfg, background=True))
    lit = plain.any(axis=2)
    np.testing.assert_array_equal(bg[lit], plain[lit])
    assert (bg[~lit].max(axis=1) > 0).mean() > 0.9, "the plasma fills the black"
    # plasma is smooth: neighbours differ far less than in white noise (mean |diff| ~ 1.13 std)
    grey = bg.astype(float).mean(axis=2)
    assert np.abs(np.diff(grey, axis=1))[~lit[:, 1:] & ~lit[:, :-1]].mean() < 0.3 * grey[~lit].std()
    assert R.render_background(5, cfg).shape == (48, 48, 3)


def test_render_config_validates():
    for bad in (dict(size=4), dict(n_points=10), dict(blur_p=1.5), dict(window_scale_min=3.0)):
        with pytest.raises(ValueError):
            RenderConfig(**bad)


def test_numba_cache_is_reused_by_a_new_process(bank, tmp_path):
    """DataLoader workers and later processes load the compiled kernel instead of compiling."""
    render_key(*bank.system(0), 1, SMALL)  # make sure this process wrote the cache
    code = ("import numpy as np; from fractal_pretrain.fractals import render as R; "
            "from fractal_pretrain.fractals.ifs import sample_bank; b = sample_bank(6, 3, seed=11); "
            "img = R.render_key(*b.system(0), 1, R.RenderConfig(size=32, n_points=4000, patch=True, blur_p=0.5)); "
            "import hashlib, json; print(json.dumps({'misses': sum(R._render_kernel.stats.cache_misses.values()), "
            "'hits': sum(R._render_kernel.stats.cache_hits.values()), 'dir': R.CACHE_DIR, "
            "'sha': hashlib.sha256(img.tobytes()).hexdigest()}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["misses"] == 0 and res["hits"] >= 1
    assert Path(res["dir"]).is_relative_to(ROOT) or "NUMBA_CACHE_DIR" in __import__("os").environ
    # the second process renders the same bytes
    assert res["sha"] == hashlib.sha256(render_key(*bank.system(0), 1, SMALL).tobytes()).hexdigest()


# ---------------------------------------------------------------------------------------------
# families
# ---------------------------------------------------------------------------------------------


def test_multi_formula_layout_follows_the_study():
    bank = sample_bank(4, 12, seed=11)
    mf = MultiFormulaConfig()
    counts = []
    for key in range(300):
        label = key % bank.num_classes
        layout = multi_formula_layout(bank, label, key, 256, mf)
        counts.append(len(layout))
        for p in layout:
            assert bank.labels[p.system] == label, "every pasted fractal is of the image's class"
            assert int(0.15 * 256) <= p.size < int(0.6 * 256) + 1
            # fractal4AD: the corner in [-(s // 2), canvas - s // 2): a tile may stick out
            assert -(p.size // 2) <= p.y < 256 - p.size // 2 and -(p.size // 2) <= p.x < 256 - p.size // 2
    assert min(counts) == 4 and max(counts) == 10
    assert any(p.y < 0 or p.x < 0 or p.y + p.size > 256 for key in range(50)
               for p in multi_formula_layout(bank, 0, key, 256, mf)), "tiles stick out"
    # as many fractals as the class has systems at most (fractal4AD: n = min(n, len(class)))
    small = sample_bank(2, 3, seed=11)
    assert max(len(multi_formula_layout(small, 0, k, 256, mf)) for k in range(50)) == 3
    data = MultiFormulaImages(small, replace(SMALL, size=64), 0, 2, TRAIN)
    img, label = data.render_uint8(5)
    assert img.shape == (64, 64, 3) and label == small.labels[5 // 2]
    with pytest.raises(ValueError):
        MultiFormulaConfig(min_fractals=5, max_fractals=4)
def test_ofdb_one_fixed_image_per_class_augmented_reproducibly():
    bank = ofdb_bank()
    args = family_args("ofdb")
    train = make_dataset(bank, seed=0, renders_per_system=4, stream=TRAIN, **args)
    val = make_dataset(bank, seed=0, renders_per_system=4, stream=VAL, **args)
    assert isinstance(train, OneImagePerClass)
    np.testing.assert_array_equal(train.base_image(2), val.base_image(2))
    x0, y0 = train[8]
    x1, y1 = train[8 + len(train)]  # same item, next epoch
    assert y0 == y1 == 2 and x0.shape == (3, 32, 32)
    assert not torch.equal(x0, x1), "each epoch augments differently"
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    assert torch.equal(train[8][0], x0)
    assert torch.equal(torch.rand(1), before), "augmentation leaves torch's global generator alone"
    plain = make_dataset(bank, seed=0, renders_per_system=4, **{**args, "augment": {"enabled": False}})
    np.testing.assert_array_equal(plain.render_index(9, 0)[0], train.base_image(2))
    with pytest.raises(ValueError, match="one system per class"):
        OneImagePerClass(sample_bank(3, 2, seed=0), SMALL, 0, 1)


def test_make_dataset_checks_the_family(bank):
    assert isinstance(make_dataset(bank, seed=0, renders_per_system=2, **family_args("fractals")), FractalImages)
    tagged = SystemBank(bank.A, bank.b, bank.n_maps, bank.labels, meta={"family": "multi_formula"})
    with pytest.raises(ValueError, match="generated for family"):
        make_dataset(tagged, seed=0, renders_per_system=2, **family_args("fractals"))
    with pytest.raises(ValueError, match="unknown fractal family 'mandelbulb'"):
        make_dataset(bank, seed=0, renders_per_system=2, **family_args("mandelbulb"))
    with pytest.raises(ValueError, match="'fractals' family only"):
        make_dataset(bank, seed=0, renders_per_system=2, renderer="torch", **family_args("multi_formula"))


# ---------------------------------------------------------------------------------------------
# reproducibility through the DataLoader
# ---------------------------------------------------------------------------------------------


def _epochs(dataset, num_workers: int, batch_size: int, epochs: int = 2):
    sampler = EpochSampler(len(dataset), seed=3, shuffle=True)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                        persistent_workers=num_workers > 0)
    xs, ys = [], []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for x, y in loader:
            xs.append(x)
            ys.append(y)
    return torch.cat(xs), torch.cat(ys)


@pytest.mark.parametrize("family", ["fractals", "multi_formula", "ofdb"])
def test_bit_exact_across_runs_workers_and_batch_sizes(family, bank):
    b = ofdb_bank() if family == "ofdb" else bank
    args = family_args(family)
    x0, y0 = _epochs(make_dataset(b, seed=1, renders_per_system=2, **args), num_workers=0, batch_size=4)
    x1, y1 = _epochs(make_dataset(b, seed=1, renders_per_system=2, **args), num_workers=0, batch_size=4)
    x2, y2 = _epochs(make_dataset(b, seed=1, renders_per_system=2, **args), num_workers=2, batch_size=5)
    assert torch.equal(x0, x1) and torch.equal(y0, y1), "two runs"
    assert torch.equal(x0, x2) and torch.equal(y0, y2), "num_workers 0 vs 2, batch 4 vs 5"
    half = len(x0) // 2
    assert not torch.equal(x0[:half], x0[half:]), "epochs differ"
    x3, _ = _epochs(make_dataset(b, seed=2, renders_per_system=2, **args), num_workers=0, batch_size=4)
    assert not torch.equal(x0, x3), "the seed matters"


def test_streams_render_different_images_of_the_same_systems(bank):
    train = FractalImages(bank, SMALL, 0, 2, TRAIN)
    val = FractalImages(bank, SMALL, 0, 2, VAL)
    (a, la), (b, lb) = train.render_uint8(3), val.render_uint8(3)
    assert la == lb and not np.array_equal(a, b)


def test_renders_match_a_separate_process(bank):
    """'Two runs': hashes from a fresh interpreter equal this process's, for every family."""
    code = """
import hashlib, json
from fractal_pretrain.datasets import make_dataset
from fractal_pretrain.fractals.ifs import sample_bank
from fractal_pretrain.fractals.families import MultiFormulaConfig
from fractal_pretrain.fractals.render import RenderConfig
family_args = %s
out = {}
for family, b in [("fractals", sample_bank(6, 3, seed=11)), ("multi_formula", sample_bank(6, 3, seed=11)),
                  ("ofdb", sample_bank(6, 1, seed=11, meta={"family": "ofdb"}))]:
    d = make_dataset(b, seed=1, renders_per_system=2, **family_args[family])
    out[family] = hashlib.sha256(b"".join(d[k][0].numpy().tobytes() for k in (0, 5, 40))).hexdigest()
print(json.dumps(out))
""" % repr({f: family_args(f) for f in ("fractals", "multi_formula", "ofdb")})
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    theirs = json.loads(res.stdout.strip().splitlines()[-1])
    for family, b in [("fractals", bank), ("multi_formula", bank), ("ofdb", ofdb_bank())]:
        d = make_dataset(b, seed=1, renders_per_system=2, **family_args(family))
        ours = hashlib.sha256(b"".join(d[k][0].numpy().tobytes() for k in (0, 5, 40))).hexdigest()
        assert ours == theirs[family], family


# ---------------------------------------------------------------------------------------------
# the generate stage and the configs
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["fractals", "multi_formula", "ofdb", "fractals_study"])
def test_every_fractal_config_composes_and_generates(name, tmp_path):
    overrides = [f"fractal={name}", "fractal.num_classes=3", "fractal.render.size=32",
                 "fractal.render.n_points=3000"]
    if name == "fractals_study":
        overrides.append("fractal.systems_per_class=2")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    rec = generate(generate_spec(cfg), tmp_path)
    bank = SystemBank.load(rec.bank_path)
    assert bank.family == cfg.fractal.family and bank.meta["fractal"]["num_classes"] == 3
    grid = np.asarray(Image.open(rec.preview_path))
    assert grid.shape == (3 * 32, 8 * 32, 3) and grid.any()
    data = make_dataset(bank, seed=cfg.seed, renders_per_system=2, stream=TRAIN, **generate_spec(cfg).family)
    x, y = data[0]
    assert x.shape == (3, 32, 32) and y == 0


def test_patch_flags_per_family_are_the_studys():
    """fractal4AD: single fractals come from IFSGenerator (patch=False), Multi-Formula tiles from
    MultiGenerator (patch=True)."""
    def composed(name):
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            return compose(config_name="config", overrides=[f"fractal={name}"]).fractal

    assert composed("fractals_study").render.patch is False
    assert composed("multi_formula").render.patch is True


def test_generate_rejects_bad_family_settings(tmp_path):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        bad = compose(config_name="config", overrides=["fractal=ofdb", "fractal.systems_per_class=2"])
    with pytest.raises(ValueError, match="systems_per_class=1"):
        generate_spec(bad)
    assert not list(tmp_path.iterdir()), "nothing written before the checks"


def test_preview_grid_has_one_row_per_class(bank):
    grid = preview_grid(bank, SMALL, seed=0, per_class=4)
    assert grid.shape == (6 * 32, 4 * 32, 3)
    rows = grid.reshape(6, 32, 4 * 32, 3)
    assert all(r.any() for r in rows)
    # the preview uses its own stream: not a training image
    train0, _ = FractalImages(bank, SMALL, 0, 4, TRAIN).render_index(0, 0)
    assert not np.array_equal(grid[:32, :32], train0)
    assert PREVIEW not in (TRAIN, VAL)

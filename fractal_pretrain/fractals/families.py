"""Image families built on the single-system renderer (pure numpy + the numba kernel, no torch).

* ``fractals``: one system per image (Anderson & Farrell, WACV 2022; Ugwu et al., CVPR-W 2024),
  ``systems_per_class`` systems per class.
* ``multi_formula``: n ~ U{4..10} fractals, all from systems of one class, each resized to 15-60% of
  the canvas and pasted at a random position; the label is the class (Ugwu et al.: these clearly
  beat single-fractal images).
* multi-instance images (the ``multilabel`` pre-training objective, Anderson & Farrell): 2-4
  fractals of different classes on one canvas, one binary target per class present.
* ``ofdb``: one fixed image per class (Nakamura et al., ICCV 2023, "one fractal image per class";
  Ugwu et al.'s follow-up): the image is a function of (seed, class) only; the variety comes from
  heavy augmentation, applied by the Dataset layer (``data.OneImagePerClass``).

Every function takes a 64-bit key (``render.derive_key``), never a global generator.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from fractal_pretrain.fractals.ifs import SystemBank
from fractal_pretrain.fractals.render import RenderConfig, derive_key, maybe_blur, render_background, render_key, resize_paste

FAMILIES = ("fractals", "multi_formula", "ofdb")


@dataclass(frozen=True)
class MultiFormulaConfig:
    """Ugwu et al.'s Multi-Formula layout (``MultiGenerator`` in fractal4AD): n ~ U{min..max}
    fractals (at most as many as the class has systems), each a system of the class drawn with
    replacement, rendered at half the canvas size with ``n_points`` points, resized to
    U(min_scale, max_scale) of the canvas at a position that may stick out by up to half the tile."""

    min_fractals: int = 4
    max_fractals: int = 10
    min_scale: float = 0.15
    max_scale: float = 0.6

    def __post_init__(self):
        if not 1 <= self.min_fractals <= self.max_fractals:
            raise ValueError("need 1 <= min_fractals <= max_fractals")
        if not 0.0 < self.min_scale <= self.max_scale <= 1.0:
            raise ValueError("need 0 < min_scale <= max_scale <= 1")


@dataclass(frozen=True)
class Placement:
    system: int  # index into the bank
    size: int  # pixels, square
    y: int  # top-left corner; may be negative (the tile sticks out)
    x: int
    key: int


def multi_formula_layout(bank: SystemBank, label: int, key: int, canvas: int,
                         mf: MultiFormulaConfig) -> list[Placement]:
    """Which systems of class ``label`` go where, drawn from ``key`` only."""
    systems = bank.class_systems(label)
    if len(systems) == 0:
        raise ValueError(f"class {label} has no systems in the bank")
    rng = np.random.Generator(np.random.PCG64(key))
    n = min(int(rng.integers(mf.min_fractals, mf.max_fractals + 1)), len(systems))
    out = []
    for t in range(n):
        system = int(systems[rng.integers(len(systems))])
        size = max(1, int(rng.uniform(mf.min_scale, mf.max_scale) * canvas))
        x, y = (int(v) for v in rng.integers(-(size // 2), canvas - size // 2, size=2))
        out.append(Placement(system, size, y, x, derive_key(key, 0x5EED, t)))
    return out


def multi_instance_layout(bank: SystemBank, label: int, key: int, canvas: int,
                          mf: MultiFormulaConfig) -> list[Placement]:
    """Anderson & Farrell's multi-instance images: n ~ U{min..max} fractals of n different classes
    (the first of class ``label``, at most every class once), each a random system of its class,
    sized and placed as in Multi-Formula; drawn from ``key`` only."""
    rng = np.random.Generator(np.random.PCG64(key))
    n = min(int(rng.integers(mf.min_fractals, mf.max_fractals + 1)), bank.num_classes)
    others = rng.permutation([c for c in range(bank.num_classes) if c != label])[:n - 1]
    out = []
    for t, c in enumerate([label, *others.tolist()]):
        systems = bank.class_systems(c)
        system = int(systems[rng.integers(len(systems))])
        size = max(1, int(rng.uniform(mf.min_scale, mf.max_scale) * canvas))
        x, y = (int(v) for v in rng.integers(-(size // 2), canvas - size // 2, size=2))
        out.append(Placement(system, size, y, x, derive_key(key, 0x5EED, t)))
    return out


def render_tiles(bank: SystemBank, placements: list[Placement], key: int, cfg: RenderConfig) -> np.ndarray:
    """A canvas of pasted fractals (uint8, like ``render_key``). Each tile is a fractal rendered at
    half the canvas size in its bounding box (no window shift or scale), jittered, flipped and
    coloured on its own, resized and pasted where it is not black; one blur on the whole canvas."""
    canvas = np.zeros((cfg.size, cfg.size, cfg.channels), dtype=np.uint8)
    if cfg.background:
        render_background(derive_key(key, 0xB6), cfg, out=canvas)
    tile_cfg = replace(cfg, size=max(cfg.size // 2, 8), background=False, blur_p=0.0, window_shift=0.0,
                       window_scale_min=1.0, window_scale_max=1.0)
    for p in placements:
        tile = render_key(*bank.system(p.system), p.key, tile_cfg)
        resize_paste(canvas, tile.reshape(tile_cfg.size, tile_cfg.size, cfg.channels), p.size, p.y, p.x)
    maybe_blur(canvas, derive_key(key, 0xB1), cfg.blur_p)
    return canvas if cfg.color else canvas[..., 0]


def render_multi_formula(bank: SystemBank, label: int, key: int, cfg: RenderConfig,
                         mf: MultiFormulaConfig) -> np.ndarray:
    """One Multi-Formula canvas: fractals of class ``label`` only (``render_tiles``)."""
    return render_tiles(bank, multi_formula_layout(bank, label, key, cfg.size, mf), key, cfg)


def ofdb_image(bank: SystemBank, label: int, seed: int, cfg: RenderConfig) -> np.ndarray:
    """The one image of class ``label``: its first system rendered from (seed, class) only, so it
    is the same in every epoch, stream and process."""
    return render_key(*bank.system(int(bank.class_systems(label)[0])),
                      derive_key(seed, 0x0FDB, label), cfg)

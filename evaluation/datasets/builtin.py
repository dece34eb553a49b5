"""Built-in procedural anomaly-detection dataset, written in the exact MVTec AD folder layout.

Why this exists: MVTec AD and VisA cannot be downloaded in this environment, yet the pipeline, its
tests and smoke runs need a dataset with image labels *and* pixel-exact ground-truth masks. This
module draws one procedurally (numpy + PIL only) and writes it in the MVTec AD layout, so it is loaded
by the very same code path as the real benchmark (``anomalib.data.MVTecAD(root=..., category=...)``)
and nothing downstream needs to special-case it::

    <root>/builtin.json                                  generation parameters (reuse check)
    <root>/<category>/train/good/000.png                 normal training images
    <root>/<category>/test/good/000.png                  normal test images (no masks, as in MVTec)
    <root>/<category>/test/<defect>/000.png              anomalous test images
    <root>/<category>/ground_truth/<defect>/000_mask.png mode "L", 0/255, 255 exactly where altered

Categories: ``weave`` (woven fabric texture), ``tiles`` (tiled surface with grout), ``washer`` (an
object: a metal ring washer with an inner tab, centred on a plain background). Normal images vary
per image (phase, offset, rotation, colour jitter, lighting, noise) but stay one category.
Defects: ``scratch`` (thin bright or dark polyline), ``hole`` (dark filled ellipse), ``stain`` (soft
coloured blob), and three subtle ones that low-level features barely see: ``misplaced`` (a disc of the
same texture taken from elsewhere in the image, turned by a quarter turn or a diagonal flip, an exact
pixel permutation: threads or grout out of line; on ``washer`` a piece of the ring from another
angle, so its lighting does not fit), ``faint_scratch``
(a thin line a few grey levels off) and ``tint`` (a slight colour shift of a soft region, texture
kept). Each covers 0.5%-5% of the image, and on ``washer`` lies on the object only.

The mask is computed from the pixels themselves, ``mask = (defective != normal).any(channel)``, so it
is exact by construction. Everything is a pure function of the parameters: every image draws from
its own ``np.random.default_rng([seed, category_index, split_index, image_index])`` (split_index 0 =
train/good, 1 = test/good, 2 + k = test/DEFECTS[k]), and PIL writes PNGs without timestamps, so the
same seed gives byte-identical files.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from filelock import FileLock
from PIL import Image, ImageDraw

CATEGORIES = ("weave", "tiles", "washer")
DEFECTS = ("scratch", "hole", "stain", "misplaced", "faint_scratch", "tint")
FORMAT_VERSION = 3  # 2: the subtle defects; 3: `misplaced` an exact pixel permutation. Another version is regenerated
PARAMS_FILE = "builtin.json"

# A defect must cover this fraction of the image; candidates outside it are redrawn.
MIN_COVERAGE, MAX_COVERAGE = 0.005, 0.05
_MAX_DRAWS = 50

__all__ = ["CATEGORIES", "DEFECTS", "FORMAT_VERSION", "make_builtin_dataset"]


# ----------------------------------------------------------------------------------------------
# Public entry point
# ----------------------------------------------------------------------------------------------


def make_builtin_dataset(
    root: str | Path,
    seed: int = 0,
    image_size: int = 128,
    n_train: int = 64,
    n_test_good: int = 8,
    n_test_defect: int = 4,
) -> Path:
    """Write the built-in dataset (all categories) under ``root`` and return ``Path(root)``.

    ``n_test_defect`` is per defect type. If ``root`` already holds a dataset generated with the same
    parameters it is reused as is; if it holds anything else, ``FileExistsError`` is raised. The
    dataset is built in a temporary sibling folder and renamed into place, so an interrupted run never
    leaves a half-written dataset behind.
    """
    root = Path(root)
    params = _params(seed, image_size, n_train, n_test_good, n_test_defect)
    if _existing_matches(root, params):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    # one builder at a time (parallel sweep jobs): the second finds the first's build complete,
    # instead of retiring it as an older format while the first is reading it
    with FileLock(root.parent / f"{root.name}.lock"):
        if _existing_matches(root, params):
            return root
        _remove_stale_builds(root)
        tmp = root.parent / f"{root.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)  # leftover of an earlier, interrupted run of this pid
        try:
            tmp.mkdir()
            for c, category in enumerate(CATEGORIES):
                _write_category(tmp / category, c, params)
            # Written last: a folder holding builtin.json is complete.
            (tmp / PARAMS_FILE).write_text(json.dumps(params, indent=2, sort_keys=True) + "\n")
            _retire_older_format(root)
            os.rename(tmp, root)  # atomic; also replaces an empty folder at root
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def _retire_older_format(root: Path) -> None:
    """Move a build of an older FORMAT_VERSION out of the way (then delete it): it is derived data,
    regenerated rather than refused. Only reached, under the build lock, when ``root`` holds our
    own builtin.json of another format version."""
    if (root / PARAMS_FILE).is_file():
        aside = root.parent / f"{root.name}.old-{os.getpid()}"
        os.rename(root, aside)
        shutil.rmtree(aside, ignore_errors=True)


def _remove_stale_builds(root: Path) -> None:
    """Delete ``<root>.tmp-<pid>`` folders left by interrupted runs whose process is gone."""
    prefix = f"{root.name}.tmp-"
    for tmp in root.parent.iterdir():
        pid = tmp.name[len(prefix):]
        if not tmp.name.startswith(prefix) or not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)  # signal 0: only asks whether the process exists
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass  # exists but is not ours (PermissionError): leave it alone


def _params(seed: int, image_size: int, n_train: int, n_test_good: int, n_test_defect: int) -> dict:
    values = {
        "seed": seed,
        "image_size": image_size,
        "n_train": n_train,
        "n_test_good": n_test_good,
        "n_test_defect": n_test_defect,
    }
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"make_builtin_dataset: {key} must be an int, got {value!r}")
    if seed < 0:
        raise ValueError(f"make_builtin_dataset: seed must be >= 0, got {seed}")
    if image_size < 32:
        raise ValueError(f"make_builtin_dataset: image_size must be >= 32, got {image_size}")
    for key in ("n_train", "n_test_good", "n_test_defect"):
        if values[key] < 1:
            raise ValueError(f"make_builtin_dataset: {key} must be >= 1, got {values[key]}")
    return {
        "format_version": FORMAT_VERSION,
        **{key: int(value) for key, value in values.items()},
        "categories": list(CATEGORIES),
        "defects": list(DEFECTS),
    }


def _existing_matches(root: Path, params: dict) -> bool:
    """True if ``root`` holds a dataset with exactly ``params``; False if it is absent or empty."""
    if not root.exists():
        return False
    if root.is_dir() and not any(root.iterdir()):
        return False  # an empty folder is simply replaced
    fix = f"Delete {root} or choose another dataset.root."
    try:
        stored = json.loads((root / PARAMS_FILE).read_text())
    except (OSError, ValueError):
        raise FileExistsError(
            f"{root} exists but is not a built-in dataset folder (no readable {PARAMS_FILE}). {fix}"
        ) from None
    if stored.get("format_version") != FORMAT_VERSION:
        return False  # built by an older generator: regenerated (never another version's data)
    if stored != params:
        changed = sorted(k for k in set(stored) | set(params) if stored.get(k) != params.get(k))
        detail = ", ".join(f"{k}: {stored.get(k)!r} on disk vs {params.get(k)!r} requested" for k in changed)
        raise FileExistsError(
            f"{root} holds a built-in dataset generated with different parameters ({detail}). {fix}"
        )
    return True


def _write_category(folder: Path, category_index: int, params: dict) -> None:
    seed, size = params["seed"], params["image_size"]
    counts = {"train": params["n_train"], "good": params["n_test_good"], "defect": params["n_test_defect"]}
    width = max(3, len(str(max(counts.values()) - 1)))  # 000.png as in MVTec; wider if needed
    draw_normal = _NORMALS[CATEGORIES[category_index]]

    def rng(split_index: int, image_index: int) -> np.random.Generator:
        return np.random.default_rng([seed, category_index, split_index, image_index])

    for split_index, (sub, n) in enumerate((("train/good", counts["train"]), ("test/good", counts["good"]))):
        (folder / sub).mkdir(parents=True)
        for i in range(n):
            normal, _ = draw_normal(rng(split_index, i), size)
            _save(normal, folder / sub / f"{i:0{width}d}.png")

    for k, defect in enumerate(DEFECTS):
        (folder / "test" / defect).mkdir(parents=True)
        (folder / "ground_truth" / defect).mkdir(parents=True)
        for i in range(counts["defect"]):
            g = rng(2 + k, i)
            normal, shape = draw_normal(g, size)
            image, mask = _add_defect(g, normal, shape, defect)
            _save(image, folder / "test" / defect / f"{i:0{width}d}.png")
            _save(mask.astype(np.uint8) * 255, folder / "ground_truth" / defect / f"{i:0{width}d}_mask.png")


def _save(array: np.ndarray, path: Path) -> None:
    # RGB for HxWx3 uint8, "L" for HxW uint8. PIL adds no timestamp or other varying metadata.
    Image.fromarray(array).save(path, format="PNG")


# ----------------------------------------------------------------------------------------------
# Normal images. Each returns (uint8 HxWx3 image, _Shape saying where a defect may go).
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Shape:
    allowed: np.ndarray  # bool HxW: pixels a defect may alter (the object, for object categories)
    centre: tuple[float, float] | None = None  # (x, y) of an object's centre; None for textures


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    return y, x


def _finish(rgb: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    """Add fine sensor noise (mostly luminance, a little chroma) and quantise to uint8."""
    h, w, _ = rgb.shape
    noise = rng.normal(0.0, sigma, (h, w, 1)) + rng.normal(0.0, sigma / 3, (h, w, 3))
    return np.clip(np.rint(rgb + noise), 0, 255).astype(np.uint8)


def _weave(rng: np.random.Generator, size: int) -> tuple[np.ndarray, _Shape]:
    """Plain-weave fabric: blue warp and pale weft threads crossing over/under, like denim."""
    y, x = _grid(size)
    period = size / 13 * rng.uniform(0.96, 1.04)  # thread spacing in pixels
    angle = rng.uniform(-0.04, 0.04)  # slight misalignment of the cloth, radians
    xr = x * np.cos(angle) + y * np.sin(angle)
    yr = -x * np.sin(angle) + y * np.cos(angle)
    u = 2 * np.pi * xr / period + rng.uniform(0, 2 * np.pi)  # warp threads centred at u = 2*pi*k
    v = 2 * np.pi * yr / period + rng.uniform(0, 2 * np.pi)  # weft threads centred at v = 2*pi*m
    # +1 where the warp thread lies on top at a crossing, -1 where the weft does (checkerboard).
    over = 0.5 + 0.5 * np.tanh(3.0 * np.cos(u / 2) * np.cos(v / 2))
    warp_shade = 0.6 + 0.4 * (0.5 + 0.5 * np.cos(u)) + 0.05 * np.cos(5 * v)  # round thread + twist
    weft_shade = 0.6 + 0.4 * (0.5 + 0.5 * np.cos(v)) + 0.05 * np.cos(5 * u)
    warp_col = np.array([70, 95, 150], np.float32) * rng.uniform(0.95, 1.05, 3)
    weft_col = np.array([190, 192, 200], np.float32) * rng.uniform(0.97, 1.03, 3)
    rgb = (over * warp_shade)[..., None] * warp_col + ((1 - over) * weft_shade)[..., None] * weft_col
    rgb *= rng.uniform(0.93, 1.05)  # exposure
    return _finish(rgb, rng, 4.0), _Shape(np.ones((size, size), bool))


def _tiles(rng: np.random.Generator, size: int) -> tuple[np.ndarray, _Shape]:
    """Square ceramic tiles with grout lines, per-tile colour jitter and a slight bevel."""
    y, x = _grid(size)
    tile = size / 4  # tile pitch in pixels
    grout = max(2.0, size / 48)  # grout line width in pixels
    angle = rng.uniform(-0.01, 0.01)
    xr = x * np.cos(angle) + y * np.sin(angle) + rng.uniform(0, tile)
    yr = -x * np.sin(angle) + y * np.cos(angle) + rng.uniform(0, tile)
    tx, ty = np.floor(xr / tile).astype(int), np.floor(yr / tile).astype(int)
    dx = np.minimum(xr - tx * tile, (tx + 1) * tile - xr)  # distance to the nearest tile edge
    dy = np.minimum(yr - ty * tile, (ty + 1) * tile - yr)
    d = np.minimum(dx, dy)
    in_grout = np.clip(grout / 2 - d + 0.5, 0, 1)  # anti-aliased grout coverage

    n_y, n_x = ty.max() - ty.min() + 1, tx.max() - tx.min() + 1
    jitter = rng.normal(0, 5.0, (n_y, n_x, 1)) + rng.normal(0, 2.5, (n_y, n_x, 3))  # per tile
    tilt = rng.normal(0, 0.03, (n_y, n_x, 2))  # per-tile glaze gradient
    iy, ix = ty - ty.min(), tx - tx.min()
    fx, fy = xr / tile - tx - 0.5, yr / tile - ty - 0.5
    base = np.array([208, 200, 182], np.float32) * rng.uniform(0.96, 1.03)
    shade = 1 + tilt[iy, ix, 0] * fx + tilt[iy, ix, 1] * fy - 0.07 * np.exp(-(d - grout / 2) / 2.0)
    tile_rgb = base * shade[..., None] + jitter[iy, ix]
    grout_rgb = np.array([118, 112, 104], np.float32) * rng.uniform(0.95, 1.05)
    rgb = tile_rgb * (1 - in_grout[..., None]) + grout_rgb * in_grout[..., None]
    return _finish(rgb, rng, 3.0), _Shape(np.ones((size, size), bool))


def _washer(rng: np.random.Generator, size: int) -> tuple[np.ndarray, _Shape]:
    """A turned metal ring washer with one inner tab, centred on a plain dark background."""
    y, x = _grid(size)
    cx, cy = size / 2 + np.clip(rng.normal(0, 0.012 * size, 2), -0.03 * size, 0.03 * size)
    r = np.hypot(x - cx, y - cy)
    theta = np.arctan2(y - cy, x - cx)
    r_out = 0.36 * size * rng.uniform(0.99, 1.01)
    r_in = 0.15 * size
    rotation = rng.uniform(-np.pi, np.pi)  # where the tab points
    dtheta = np.angle(np.exp(1j * (theta - rotation)))
    tab = np.clip((0.22 - np.abs(dtheta)) * np.maximum(r, 1) + 0.5, 0, 1)  # anti-aliased in angle
    r_in_eff = r_in - 0.06 * size * tab
    cover = np.clip(r_out - r + 0.5, 0, 1) * np.clip(r - r_in_eff + 0.5, 0, 1)

    gain = rng.uniform(0.9, 1.08)  # lighting level
    light = rng.uniform(-0.4, 0.4) - 2.2  # lighting direction, from the upper left
    background = np.array([58, 60, 66], np.float32) * gain * (1 + 0.1 * (y / size - 0.5))[..., None]
    shadow = 1 - 0.25 * np.clip(1 - np.abs(r - r_out - 2.5) / 3, 0, 1)  # soft shadow outside the rim
    background = background * shadow[..., None]
    metal = (
        0.78
        + 0.14 * np.cos(theta - light)  # brighter on the lit side
        + 0.06 * np.cos(2 * (theta - light))  # anisotropic highlight of a turned surface
        + 0.025 * np.cos(2 * np.pi * r / 2.7)  # lathe marks
        - 0.12 * np.exp(-np.minimum(r_out - r, r - r_in_eff).clip(0) / 1.5)  # bevelled edges
    )
    metal_rgb = np.array([196, 198, 202], np.float32) * gain * metal[..., None]
    rgb = metal_rgb * cover[..., None] + background * (1 - cover[..., None])
    on_object = (r_out - r >= 1.5) & (r - r_in_eff >= 1.5)
    return _finish(rgb, rng, 3.0), _Shape(on_object, (float(cx), float(cy)))


_NORMALS = {"weave": _weave, "tiles": _tiles, "washer": _washer}


# ----------------------------------------------------------------------------------------------
# Defects. Each painter returns a modified copy of the normal image; the mask is derived from it.
# ----------------------------------------------------------------------------------------------


def _add_defect(
    rng: np.random.Generator, normal: np.ndarray, shape: _Shape, defect: str
) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``defect`` inside ``shape.allowed``; return (image, exact bool mask of altered pixels).

    Candidates are redrawn (from the same generator, so still deterministic) until the altered area
    covers MIN_COVERAGE..MAX_COVERAGE of the image.
    """
    size = normal.shape[0]
    # Possible defect centres: inside `allowed` and away from the image border.
    ys, xs = np.nonzero(shape.allowed)
    margin = 0.12 * size
    keep = (ys > margin) & (ys < size - 1 - margin) & (xs > margin) & (xs < size - 1 - margin)
    ys, xs = ys[keep], xs[keep]
    for _ in range(_MAX_DRAWS):
        j = rng.integers(len(ys))
        centre = (float(xs[j]), float(ys[j]))
        image = _PAINTERS[defect](rng, normal, shape, centre)
        mask = (image != normal).any(axis=2)
        if MIN_COVERAGE <= mask.mean() <= MAX_COVERAGE:
            break
    return image, mask


def _scratch_region(rng: np.random.Generator, size: int, shape: _Shape, centre: tuple[float, float],
                    width_scale: float = 1.0) -> np.ndarray:
    """Pixels of a thin polyline through ``centre``: straight and wobbly on textures, an arc on the washer."""
    if shape.centre is not None:  # object: an arc around the washer's centre, through `centre`
        n = int(rng.integers(6, 10))
        c = shape.centre
        r0 = np.hypot(centre[0] - c[0], centre[1] - c[1])
        a0 = np.arctan2(centre[1] - c[1], centre[0] - c[0])
        span = rng.uniform(1.2, 2.0) * rng.choice([-1, 1])
        angles = a0 + np.linspace(-span / 2, span / 2, n)
        radii = r0 + np.linspace(-1, 1, n) * rng.uniform(-0.03, 0.03) * size + rng.normal(0, 0.006 * size, n)
        pts = np.stack([c[0] + radii * np.cos(angles), c[1] + radii * np.sin(angles)], 1)
    else:  # texture: a slightly wobbly straight scratch
        n = int(rng.integers(3, 6))
        length = rng.uniform(0.4, 0.7) * size
        direction = rng.uniform(0, np.pi)
        t = np.linspace(-0.5, 0.5, n) * length
        wobble = rng.normal(0, 0.025 * size, n)  # sideways deviation of the vertices
        ux, uy = np.cos(direction), np.sin(direction)
        pts = np.stack([centre[0] + t * ux - wobble * uy, centre[1] + t * uy + wobble * ux], 1)
    width = max(round(2 * width_scale), round(size / 64 * rng.uniform(1.0, 1.6) * width_scale))
    canvas = Image.new("L", (size, size), 0)
    ImageDraw.Draw(canvas).line([tuple(p) for p in pts.tolist()], fill=255, width=width, joint="curve")
    return (np.asarray(canvas) > 0) & shape.allowed


def _scratch(rng: np.random.Generator, normal: np.ndarray, shape: _Shape, centre: tuple[float, float]) -> np.ndarray:
    """A thin bright (scraped) or dark (groove) polyline; on the washer it follows the ring."""
    region = _scratch_region(rng, normal.shape[0], shape, centre)
    target = 250.0 if rng.random() < 0.5 else 20.0
    strength = rng.uniform(0.75, 0.9)
    out = normal.astype(np.float32)
    out[region] += strength * (target - out[region])
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _hole(rng: np.random.Generator, normal: np.ndarray, shape: _Shape, centre: tuple[float, float]) -> np.ndarray:
    """A dark filled (rotated) ellipse, slightly darker towards its middle."""
    size = normal.shape[0]
    y, x = _grid(size)
    a = rng.uniform(0.045, 0.065 if shape.centre is not None else 0.09) * size  # smaller on the ring
    b = a * rng.uniform(0.55, 1.0)
    phi = rng.uniform(0, np.pi)
    dx, dy = x - centre[0], y - centre[1]
    rho2 = ((dx * np.cos(phi) + dy * np.sin(phi)) / a) ** 2 + ((-dx * np.sin(phi) + dy * np.cos(phi)) / b) ** 2
    region = (rho2 <= 1) & shape.allowed

    colour = np.array([24, 21, 19], np.float32) * rng.uniform(0.8, 1.2)
    value = colour * (0.75 + 0.35 * np.sqrt(rho2))[..., None] + rng.normal(0, 1.5, (size, size, 1))
    out = normal.copy()
    out[region] = np.clip(np.rint(value[region]), 0, 255).astype(np.uint8)
    return out


_STAIN_COLOURS = np.array([[150, 78, 28], [100, 62, 30], [95, 115, 40], [150, 40, 60]], np.float32)


def _stain(rng: np.random.Generator, normal: np.ndarray, shape: _Shape, centre: tuple[float, float]) -> np.ndarray:
    """A soft translucent coloured blob: irregular outline, visible rim, denser centre."""
    size = normal.shape[0]
    y, x = _grid(size)
    field = np.zeros((size, size), np.float32)
    spread = 0.03 * size
    for _ in range(int(rng.integers(3, 6))):  # a few overlapping Gaussians make an irregular blob
        cx, cy = centre[0] + rng.normal(0, spread), centre[1] + rng.normal(0, spread)
        sigma = rng.uniform(0.03, 0.045 if shape.centre is not None else 0.065) * size
        field += rng.uniform(0.6, 1.0) * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma**2))
    field /= max(float(field.max()), 1e-6)
    region = (field > 0.45) & shape.allowed

    colour = _STAIN_COLOURS[rng.integers(len(_STAIN_COLOURS))] * rng.uniform(0.85, 1.1)
    alpha = (0.4 + 0.45 * np.clip((field - 0.45) / 0.55, 0, 1) ** 0.7) * region
    out = normal.astype(np.float32) * (1 - alpha[..., None]) + colour * alpha[..., None]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


# The integer 90-degree turns and the axis-swapping flips: they map the pixel grid onto itself, so a
# piece moved with one is an exact permutation of pixels (no resampling, no duplicated pixels).
_TURNS = {90: np.array([[0, -1], [1, 0]]), 180: -np.eye(2, dtype=int), 270: np.array([[0, 1], [-1, 0]])}
_AXIS_SWAPS = (_TURNS[90], _TURNS[270], np.array([[0, 1], [1, 0]]), np.array([[0, -1], [-1, 0]]))


def _misplaced(rng: np.random.Generator, normal: np.ndarray, shape: _Shape, centre: tuple[float, float]) -> np.ndarray:
    """A disc of the same surface copied from elsewhere and turned: every pixel is a normal pixel of
    this image, only their arrangement is wrong (threads or grout running the other way, or on the
    washer a piece of ring whose lighting belongs to another angle).

    The turn is a multiple of 90 degrees or a flip across a diagonal, about integer pixel centres: an
    exact pixel permutation. (Format 2 turned by any angle with nearest-neighbour sampling, which
    duplicates source pixels: 16-27% of the defect's pixels equalled a neighbour, under 1.3%
    elsewhere, a fingerprint low-level features see; tests/test_datasets.py measures it.)"""
    size = normal.shape[0]
    y, x = _grid(size)
    cx, cy = round(centre[0]), round(centre[1])
    radius = rng.uniform(0.06, 0.09 if shape.centre is None else 0.07) * size
    region = (np.hypot(x - cx, y - cy) <= radius) & shape.allowed
    if shape.centre is not None:  # the ring a quarter, half or three quarters round, turned with it
        turn = _TURNS[int(rng.choice([90, 180, 270]))]
        c = np.rint(np.array(shape.centre)).astype(int)
        source_centre = c + turn @ (np.array([cx, cy]) - c)
    else:  # anywhere else in the texture, turned across its pattern
        turn = _AXIS_SWAPS[int(rng.integers(len(_AXIS_SWAPS)))]
        source_centre = rng.integers(int(np.ceil(radius)), size - int(np.ceil(radius)), 2)
    ys, xs = np.nonzero(region)
    sx, sy = source_centre[:, None] + turn @ np.stack([xs - cx, ys - cy])
    inside = (sx >= 0) & (sx < size) & (sy >= 0) & (sy < size)
    if not inside.all():
        return normal  # source leaves the image: no defect, the caller draws another candidate
    on_surface = shape.allowed[sy, sx]  # the washer's centre is not on the pixel grid: trim the rim
    out = normal.copy()
    out[ys[on_surface], xs[on_surface]] = normal[sy[on_surface], sx[on_surface]]
    return out


def _faint_scratch(rng: np.random.Generator, normal: np.ndarray, shape: _Shape, centre: tuple[float, float]) -> np.ndarray:
    """A thin line only a few grey levels lighter or darker than its surroundings (3-5 noise sigmas)."""
    region = _scratch_region(rng, normal.shape[0], shape, centre, width_scale=0.7)
    out = normal.astype(np.float32)
    out[region] += rng.uniform(10, 18) * rng.choice([-1, 1])
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _tint(rng: np.random.Generator, normal: np.ndarray, shape: _Shape, centre: tuple[float, float]) -> np.ndarray:
    """A slight colour shift of a soft region, brightness and texture kept (as a discoloured patch)."""
    size = normal.shape[0]
    y, x = _grid(size)
    sigma = rng.uniform(0.05, 0.075 if shape.centre is None else 0.05) * size
    field = np.exp(-((x - centre[0]) ** 2 + (y - centre[1]) ** 2) / (2 * sigma**2))
    region = (field > 0.3) & shape.allowed
    hue = rng.uniform(0, 2 * np.pi)  # a direction in the chroma plane, orthogonal to grey
    chroma = np.cos(hue) * np.array([2, -1, -1]) / np.sqrt(6) + np.sin(hue) * np.array([0, 1, -1]) / np.sqrt(2)
    shift = rng.uniform(10, 16) * chroma * np.clip((field - 0.3) / 0.4, 0, 1)[..., None]
    out = normal.astype(np.float32) + shift * region[..., None]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


_PAINTERS = {"scratch": _scratch, "hole": _hole, "stain": _stain, "misplaced": _misplaced,
             "faint_scratch": _faint_scratch, "tint": _tint}

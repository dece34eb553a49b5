"""Rendering IFS attractors by the chaos game (numba on CPU).

The walk and the histogram are fused: points are never stored. The map at each step is chosen by a
1024-entry lookup table built from the map probabilities, indexed by the top bits of a splitmix64
draw, so a step costs a handful of nanoseconds. Everything random about a render (window, jitter,
flip, colour, blur, the walk itself) comes from the one ``np.random.Generator`` passed in, so a
render is a pure function of (system, generator state).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# numba reads its cache location at import; keep compiled kernels in a folder we control so
# DataLoader workers and later processes load them instead of recompiling.
os.environ.setdefault("NUMBA_CACHE_DIR", str(Path(__file__).resolve().parent.parent / ".numba_cache"))

import numba  # noqa: E402
import numpy as np  # noqa: E402

from fractal_pretrain.ifs import jitter, map_probabilities  # noqa: E402

TABLE_BITS = 10


@dataclass(frozen=True)
class RenderConfig:
    size: int = 256
    n_points: int = 100_000
    binary: bool = False  # False: graded density (hits / max hits)
    color: bool = True  # HSV colour on black; False: one grey channel
    patch: bool = False  # stamp a random 3x3 pattern per point instead of a single pixel
    flip: bool = True  # random dihedral transform
    blur_p: float = 0.0  # probability of a 3x3 Gaussian blur, sigma in [0.5, 1]
    jitter: bool = True  # scale one map by U(0.8, 1.1) per render
    window_shift: float = 0.2  # window centre moves by up to this fraction of the extent
    window_scale_min: float = 0.5
    window_scale_max: float = 2.0

    def __post_init__(self):
        if self.size < 8:
            raise ValueError(f"render size must be >= 8 pixels, got {self.size}")
        if self.n_points < 100:
            raise ValueError(f"n_points must be >= 100, got {self.n_points}")
        if not 0.0 <= self.blur_p <= 1.0:
            raise ValueError(f"blur_p is a probability, got {self.blur_p}")
        if not 0 < self.window_scale_min <= self.window_scale_max:
            raise ValueError("need 0 < window_scale_min <= window_scale_max")


def choice_table(p: np.ndarray) -> np.ndarray:
    """Lookup table mapping a TABLE_BITS-bit random number to a map index with probability ~p."""
    edges = np.cumsum(p) * (1 << TABLE_BITS)
    return np.searchsorted(edges, np.arange(1 << TABLE_BITS) + 0.5).clip(0, len(p) - 1).astype(np.uint8)


@numba.njit(cache=True, inline="always")
def _splitmix64(state):
    state = state + np.uint64(0x9E3779B97F4A7C15)
    z = state
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return state, z ^ (z >> np.uint64(31))


@numba.njit(cache=True)
def _fixed_point(A, b):
    # x* = (I - A) ^ -1 b for the first map, a point on the attractor: no burn-in needed.
    m00, m01, m10, m11 = 1.0 - A[0, 0, 0], -A[0, 0, 1], -A[0, 1, 0], 1.0 - A[0, 1, 1]
    det = m00 * m11 - m01 * m10
    return (m11 * b[0, 0] - m01 * b[0, 1]) / det, (-m10 * b[0, 0] + m00 * b[0, 1]) / det


@numba.njit(cache=True)
def chaos_bbox(A, b, table, n_points, seed):
    """Bounding box (xmin, ymin, xmax, ymax) of the first ``n_points`` points of the walk."""
    x, y = _fixed_point(A, b)
    xmin, ymin, xmax, ymax = x, y, x, y
    state = np.uint64(seed)
    shift = np.uint64(64 - TABLE_BITS)
    for _ in range(n_points):
        state, r = _splitmix64(state)
        k = table[r >> shift]
        x, y = A[k, 0, 0] * x + A[k, 0, 1] * y + b[k, 0], A[k, 1, 0] * x + A[k, 1, 1] * y + b[k, 1]
        xmin, xmax = min(xmin, x), max(xmax, x)
        ymin, ymax = min(ymin, y), max(ymax, y)
    return xmin, ymin, xmax, ymax


@numba.njit(cache=True)
def chaos_histogram(A, b, table, n_points, seed, x0, y0, scale, patch, hist):
    """Walk ``n_points`` steps and count hits per pixel; pixel = (point - (x0, y0)) * scale.

    ``patch`` is a 3x3 uint8 mask stamped around each point (a single centre pixel for plain
    points). ``hist`` (size x size, uint32) is accumulated in place.
    """
    size = hist.shape[0]
    x, y = _fixed_point(A, b)
    state = np.uint64(seed)
    shift = np.uint64(64 - TABLE_BITS)
    for _ in range(n_points):
        state, r = _splitmix64(state)
        k = table[r >> shift]
        x, y = A[k, 0, 0] * x + A[k, 0, 1] * y + b[k, 0], A[k, 1, 0] * x + A[k, 1, 1] * y + b[k, 1]
        fx = (x - x0) * scale
        fy = (y - y0) * scale
        if fx < -1.0 or fy < -1.0 or fx >= size + 1.0 or fy >= size + 1.0:
            continue
        px, py = int(np.floor(fx)), int(np.floor(fy))
        for dy in range(3):
            for dx in range(3):
                if patch[dy, dx]:
                    qy, qx = py + dy - 1, px + dx - 1
                    if 0 <= qy < size and 0 <= qx < size:
                        hist[qy, qx] += 1


_POINT = np.zeros((3, 3), dtype=np.uint8)
_POINT[1, 1] = 1


def hsv_to_rgb(h: np.ndarray, s: float, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV -> RGB; h and v are arrays of the same shape, s a scalar."""
    out = np.empty(h.shape + (3,), dtype=np.float32)
    for c, n in enumerate((5.0, 3.0, 1.0)):
        k = (n + h * 6.0) % 6.0
        out[..., c] = v * (1.0 - s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0))
    return out


def gaussian_blur3(img: np.ndarray, sigma: float) -> np.ndarray:
    w = np.exp(-np.array([1.0, 0.0, 1.0]) / (2.0 * sigma * sigma))
    w /= w.sum()
    pad = np.pad(img, [(1, 1), (1, 1)] + [(0, 0)] * (img.ndim - 2), mode="edge")
    rows = w[0] * pad[:-2] + w[1] * pad[1:-1] + w[2] * pad[2:]
    return w[0] * rows[:, :-2] + w[1] * rows[:, 1:-1] + w[2] * rows[:, 2:]


def render(A: np.ndarray, b: np.ndarray, rng: np.random.Generator, cfg: RenderConfig) -> np.ndarray:
    """Render one image of the system (A, b): uint8, (size, size, 3) in colour, else (size, size)."""
    if cfg.jitter:
        A, b = jitter(A, b, rng)
    A = np.ascontiguousarray(A, dtype=np.float64)
    b = np.ascontiguousarray(b, dtype=np.float64)
    table = choice_table(map_probabilities(A))
    bbox_seed, walk_seed = (int(s) for s in rng.integers(0, 2**63, size=2))

    xmin, ymin, xmax, ymax = chaos_bbox(A, b, table, max(cfg.n_points // 10, 1000), bbox_seed)
    extent = max(xmax - xmin, ymax - ymin, 1e-6)
    cx = (xmin + xmax) / 2 + rng.uniform(-1, 1) * cfg.window_shift * extent
    cy = (ymin + ymax) / 2 + rng.uniform(-1, 1) * cfg.window_shift * extent
    extent *= rng.uniform(cfg.window_scale_min, cfg.window_scale_max)
    patch = (rng.random((3, 3)) < 0.5).astype(np.uint8) if cfg.patch else _POINT
    if cfg.patch:
        patch[1, 1] = 1

    hist = np.zeros((cfg.size, cfg.size), dtype=np.uint32)
    scale = cfg.size / extent
    chaos_histogram(A, b, table, cfg.n_points, walk_seed, cx - extent / 2, cy - extent / 2, scale,
                    patch, hist)

    peak = hist.max()
    density = (hist > 0).astype(np.float32) if cfg.binary else hist.astype(np.float32) / max(peak, 1)
    if cfg.color:
        hue = (rng.random() + 0.5 * density) % 1.0
        img = hsv_to_rgb(hue, rng.uniform(0.3, 1.0), density * rng.uniform(0.5, 1.0))
    else:
        img = density
    if cfg.flip:
        k = int(rng.integers(8))
        img = np.rot90(img, k % 4)
        if k >= 4:
            img = img[:, ::-1]
    if cfg.blur_p > 0 and rng.random() < cfg.blur_p:
        img = gaussian_blur3(img, rng.uniform(0.5, 1.0))
    return np.ascontiguousarray(np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8))

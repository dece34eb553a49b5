"""Rendering IFS attractors by the chaos game (numba on CPU).

One compiled kernel does a whole render: per-render jitter, the walk fused with the histogram
(points are never stored), the 3x3 patch, density, HSV colour, diamond-square background, blur,
written straight into a uint8 image. Python touches each render once, so the cost is the walk
(about 5 ns per point) plus a few passes over the pixels. Two tricks keep the pixel passes cheap:
the dihedral flip is folded into the point -> pixel transform (the histogram comes out flipped),
and a pixel's colour depends on its hit count only, so colouring is a lookup in a per-render table.

Randomness: a render is a pure function of (system, 64-bit key, config). The kernel expands the key
with splitmix64 into a fixed layout of draws (``_DRAW_*``), drawn whether or not the option using
them is on, so switching one option (flip, blur, ...) leaves every other draw, and the walk,
unchanged. The walk takes ten bits of a splitmix64 output per step, looked up in a 1024-entry table
built from the map probabilities (p_k proportional to |det A_k|).

Rendering choices follow Anderson & Farrell (WACV 2022) and Ugwu et al. (CVPR-W 2024), see
PAPER.md: walk from the fixed point of map 1; window = bounding box of the points (here of a
``bbox_fraction`` pre-walk), centre shifted by up to 20% of the extent, extent scaled by U(0.5, 2);
graded density hits / max hits, or binary; random 3x3 stamp per point; HSV on black with a random
hue offset, S in [0.3, 1], V in [0.5, 1]; 3x3 Gaussian blur with sigma in [0.5, 1] with
probability ``blur_p``; diamond-square plasma background; one map scaled by U(0.8, 1.1) unless that
breaks contractivity.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# Compiled kernels live in a folder the project controls, so DataLoader workers (fork or spawn)
# and later processes load them (~0.5 s) instead of recompiling (~15 s). numba reads the variable at
# import; if numba was imported earlier, the config attribute below still takes effect because the
# cache locator reads it when each ``cache=True`` function is decorated.
CACHE_DIR = os.environ.get("NUMBA_CACHE_DIR") or str(Path(__file__).resolve().parent.parent / ".numba_cache")
os.environ.setdefault("NUMBA_CACHE_DIR", CACHE_DIR)

import numba  # noqa: E402
import numpy as np  # noqa: E402

numba.config.CACHE_DIR = CACHE_DIR

TABLE_BITS = 10
_STEPS_PER_DRAW = 64 // TABLE_BITS  # map choices taken from one 64-bit draw
M64 = (1 << 64) - 1

# the fixed layout of per-render draws (see the module docstring)
(_DRAW_JITTER_MAP, _DRAW_JITTER_FACTOR, _DRAW_WALK, _DRAW_SHIFT_X, _DRAW_SHIFT_Y, _DRAW_SCALE,
 _DRAW_PATCH, _DRAW_FLIP, _DRAW_HUE, _DRAW_SAT, _DRAW_VAL, _DRAW_BLUR, _DRAW_SIGMA, _DRAW_BG,
 _DRAW_BG_HUE, _DRAW_BG_SAT, _DRAW_BG_VAL, _DRAW_BG_ROUGH, N_DRAWS) = range(19)


@dataclass(frozen=True)
class RenderConfig:
    """How one image is rendered. Defaults are the study's (PAPER.md) except ``patch`` and
    ``blur_p``, which the configs switch on."""

    size: int = 256
    n_points: int = 100_000
    binary: bool = False  # False: graded density (hits / max hits)
    log_density: bool = False  # graded density as log(1 + hits) / log(1 + max): brighter tails
    color: bool = True  # HSV colour on black; False: one grey channel
    patch: bool = False  # stamp a random 3x3 pattern per point instead of a single pixel
    flip: bool = True  # random dihedral transform
    blur_p: float = 0.0  # probability of a 3x3 Gaussian blur, sigma in [0.5, 1]
    jitter: bool = True  # scale one map by U(0.8, 1.1) per render
    background: bool = False  # diamond-square plasma behind the fractal (hurt AD in the journal)
    window_shift: float = 0.2  # window centre moves by up to this fraction of the extent
    window_scale_min: float = 0.5
    window_scale_max: float = 2.0
    bbox_fraction: float = 0.1  # the window comes from a pre-walk of this share of n_points

    def __post_init__(self):
        if self.size < 8:
            raise ValueError(f"render size must be >= 8 pixels, got {self.size}")
        if self.n_points < 100:
            raise ValueError(f"n_points must be >= 100, got {self.n_points}")
        if not 0.0 <= self.blur_p <= 1.0:
            raise ValueError(f"blur_p is a probability, got {self.blur_p}")
        if not 0 < self.window_scale_min <= self.window_scale_max:
            raise ValueError("need 0 < window_scale_min <= window_scale_max")
        if not 0.0 < self.bbox_fraction <= 1.0:
            raise ValueError(f"bbox_fraction must be in (0, 1], got {self.bbox_fraction}")

    @property
    def channels(self) -> int:
        return 3 if self.color else 1


# ---------------------------------------------------------------------------------------------
# keys: every random draw of a render derives from one 64-bit key
# ---------------------------------------------------------------------------------------------


def _mix64(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def derive_key(*parts: int) -> int:
    """Hash integers (seed, stream, class, index, epoch, ...) into a 64-bit render key. Order
    matters and negative parts are fine; a few hundred ns, unlike a SeedSequence."""
    h = 0x6A09E667F3BCC908
    for p in parts:
        h = _mix64(h ^ (int(p) & M64))
    return h


def choice_table(p: np.ndarray) -> np.ndarray:
    """Lookup table mapping a TABLE_BITS-bit random number to a map index with probability ~p
    (the kernel builds the same table; this is the reference)."""
    edges = np.cumsum(p) * (1 << TABLE_BITS)
    return np.searchsorted(edges, np.arange(1 << TABLE_BITS) + 0.5).clip(0, len(p) - 1).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# kernel pieces
# ---------------------------------------------------------------------------------------------


@numba.njit(cache=True, inline="always")
def _splitmix64(state):
    state = state + np.uint64(0x9E3779B97F4A7C15)
    z = state
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return state, z ^ (z >> np.uint64(31))


@numba.njit(cache=True, inline="always")
def _unit(r):
    """Uniform [0, 1) from the top 53 bits."""
    return (r >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@numba.njit(cache=True)
def _draws(key, n):
    out = np.empty(n, dtype=np.uint64)
    state = np.uint64(key)
    for i in range(n):
        state, out[i] = _splitmix64(state)
    return out


@numba.njit(cache=True)
def _spectral_norm2(a, b, c, d):
    t = a * a + b * b + c * c + d * d
    det = a * d - b * c
    return np.sqrt(0.5 * (t + np.sqrt(max(t * t - 4.0 * det * det, 0.0))))


@numba.njit(cache=True)
def _jittered(A, b, enabled, u_map, u_factor):
    """Copy of the system with one map scaled by U(0.8, 1.1), unless that map would stop being
    a contraction (then the system is kept as is)."""
    A2 = A.copy()
    b2 = b.copy()
    if enabled:
        n = A.shape[0]
        k = min(int(u_map * n), n - 1)
        f = 0.8 + 0.3 * u_factor
        if _spectral_norm2(A[k, 0, 0] * f, A[k, 0, 1] * f, A[k, 1, 0] * f, A[k, 1, 1] * f) < 1.0:
            for i in range(2):
                b2[k, i] = b[k, i] * f
                for j in range(2):
                    A2[k, i, j] = A[k, i, j] * f
    return A2, b2


@numba.njit(cache=True)
def _table(A):
    n = A.shape[0]
    w = np.empty(n)
    for k in range(n):
        w[k] = abs(A[k, 0, 0] * A[k, 1, 1] - A[k, 0, 1] * A[k, 1, 0]) + 1e-6
    w /= w.sum()
    edges = np.cumsum(w) * (1 << TABLE_BITS)
    table = np.empty(1 << TABLE_BITS, dtype=np.uint8)
    k = 0
    for t in range(1 << TABLE_BITS):
        while k < n - 1 and edges[k] < t + 0.5:
            k += 1
        table[t] = k
    return table


@numba.njit(cache=True)
def _start_point(A, b):
    # x* = (I - A_1)^-1 b_1 is on the attractor of a contractive system: no burn-in needed.
    m00, m01, m10, m11 = 1.0 - A[0, 0, 0], -A[0, 0, 1], -A[0, 1, 0], 1.0 - A[0, 1, 1]
    det = m00 * m11 - m01 * m10
    if abs(det) < 1e-12:
        return 0.0, 0.0
    return (m11 * b[0, 0] - m01 * b[0, 1]) / det, (-m10 * b[0, 0] + m00 * b[0, 1]) / det


@numba.njit(cache=True)
def _walk_bbox(A, b, table, n, x, y, state):
    """Walk ``n`` steps from (x, y); return the bounding box, the end point and the rng state."""
    xmin, ymin, xmax, ymax = x, y, x, y
    shift = np.uint64(64 - TABLE_BITS)
    r = np.uint64(0)
    for i in range(n):
        if i % _STEPS_PER_DRAW == 0:
            state, r = _splitmix64(state)
        k = table[r >> shift]
        r = r << np.uint64(TABLE_BITS)
        x, y = A[k, 0, 0] * x + A[k, 0, 1] * y + b[k, 0], A[k, 1, 0] * x + A[k, 1, 1] * y + b[k, 1]
        xmin, xmax = min(xmin, x), max(xmax, x)
        ymin, ymax = min(ymin, y), max(ymax, y)
    return xmin, ymin, xmax, ymax, x, y, state


@numba.njit(cache=True)
def _walk_hist(A, b, table, n, x, y, state, px, hist):
    """Walk ``n`` steps, counting hits in ``hist``. ``px`` (2x3) maps a point to (column, row)
    pixel coordinates; the dihedral flip is folded into it, so the image comes out flipped at no
    cost. ``hist`` is (size + 4)^2 with a 2-pixel margin, so points up to one pixel outside the
    window are kept (their 3x3 stamp reaches inside) without per-stamp bounds checks."""
    size = hist.shape[0] - 4
    lo, hi = -1.0, size + 1.0
    shift = np.uint64(64 - TABLE_BITS)
    r = np.uint64(0)
    c0, c1, c2, r0, r1, r2 = px[0, 0], px[0, 1], px[0, 2], px[1, 0], px[1, 1], px[1, 2]
    for i in range(n):
        if i % _STEPS_PER_DRAW == 0:
            state, r = _splitmix64(state)
        k = table[r >> shift]
        r = r << np.uint64(TABLE_BITS)
        x, y = A[k, 0, 0] * x + A[k, 0, 1] * y + b[k, 0], A[k, 1, 0] * x + A[k, 1, 1] * y + b[k, 1]
        fx = c0 * x + c1 * y + c2
        fy = r0 * x + r1 * y + r2
        # written so that NaN (a diverging FractalDB walk) fails the test and is skipped
        if fx >= lo and fx < hi and fy >= lo and fy < hi:
            hist[int(fy + 1.0) + 1, int(fx + 1.0) + 1] += 1
    return state


@numba.njit(cache=True)
def _pixel_transform(x0, y0, scale, size, flip_code):
    """(column, row) = px @ (x, y, 1): the window, then the dihedral element ``flip_code`` (three
    bits: swap axes, mirror rows, mirror columns; together all eight)."""
    px = np.array([[scale, 0.0, -x0 * scale], [0.0, scale, -y0 * scale]])
    if (flip_code >> 2) & 1:
        px = px[::-1].copy()
    if (flip_code >> 1) & 1:
        px[1] = -px[1]
        px[1, 2] += size
    if flip_code & 1:
        px[0] = -px[0]
        px[0, 2] += size
    return px


@numba.njit(cache=True)
def _stamp(hist, mask, size):
    """Counts per pixel after stamping ``mask`` at every point: a 3x3 correlation of the hit
    grid, identical to stamping point by point. One shifted, contiguous (SIMD) add per mask
    cell instead of up to nine scattered writes per point."""
    out = np.zeros((size, size), dtype=np.int32)
    for dy in range(3):
        for dx in range(3):
            if mask[dy, dx]:
                oy, ox = 3 - dy, 3 - dx
                for i in range(size):
                    row = hist[i + oy]
                    for j in range(size):
                        out[i, j] += row[j + ox]
    return out


@numba.njit(cache=True)
def _diamond_square(size, state, roughness):
    """Plasma in [0, 1] by the diamond-square algorithm on a (2^k + 1)^2 grid, top-left crop."""
    n = 1
    while n + 1 < size:
        n *= 2
    g = np.zeros((n + 1, n + 1))
    for (i, j) in ((0, 0), (0, n), (n, 0), (n, n)):
        state, r = _splitmix64(state)
        g[i, j] = _unit(r)
    step, amp = n, 1.0
    while step > 1:
        half = step // 2
        for i in range(half, n, step):  # diamond: centres of squares
            for j in range(half, n, step):
                state, r = _splitmix64(state)
                g[i, j] = 0.25 * (g[i - half, j - half] + g[i - half, j + half]
                                  + g[i + half, j - half] + g[i + half, j + half]) + amp * (_unit(r) - 0.5)
        for i in range(0, n + 1, half):  # square: edge midpoints
            for j in range((i + half) % step, n + 1, step):
                s, c = 0.0, 0
                if i >= half:
                    s += g[i - half, j]
                    c += 1
                if i + half <= n:
                    s += g[i + half, j]
                    c += 1
                if j >= half:
                    s += g[i, j - half]
                    c += 1
                if j + half <= n:
                    s += g[i, j + half]
                    c += 1
                state, r = _splitmix64(state)
                g[i, j] = s / c + amp * (_unit(r) - 0.5)
        step = half
        amp *= roughness
    out = g[:size, :size]
    lo, hi = out.min(), out.max()
    return (out - lo) / max(hi - lo, 1e-12)


@numba.njit(cache=True, inline="always")
def _hsv(h, s, v, n):
    """Channel ``n`` (5: red, 3: green, 1: blue) of HSV -> RGB, for h in [0, 1)."""
    k = n + h * 6.0
    if k >= 6.0:
        k -= 6.0
    return v * (1.0 - s * min(max(min(k, 4.0 - k), 0.0), 1.0))


@numba.njit(cache=True, inline="always")
def _density(h, peak, binary, log_density, log_peak):
    if binary:
        return 1.0 if h > 0 else 0.0
    if log_density:
        return np.log1p(h) / log_peak
    return h / peak


@numba.njit(cache=True, inline="always")
def _hue(hue0, v):
    h = hue0 + 0.5 * v  # hue drifts with density (Anderson & Farrell's colouring)
    return h - 1.0 if h >= 1.0 else h


@numba.njit(cache=True, inline="always")
def _byte(v):
    v = v * 255.0 + 0.5
    return np.uint8(255) if v >= 255.0 else (np.uint8(0) if v <= 0.0 else np.uint8(v))


@numba.njit(cache=True)
def _blur3(img, sigma):
    """Separable 3x3 Gaussian with edge padding, in place on (C, H, W)."""
    w1 = np.exp(-1.0 / (2.0 * sigma * sigma))
    w0 = np.float32(1.0 / (1.0 + 2.0 * w1))
    w1 = np.float32(w1 / (1.0 + 2.0 * w1))
    C, H, W = img.shape
    tmp = np.empty((H, W), dtype=np.float32)
    for c in range(C):
        for i in range(H):
            up, dn = max(i - 1, 0), min(i + 1, H - 1)
            for j in range(W):
                tmp[i, j] = w1 * img[c, up, j] + w0 * img[c, i, j] + w1 * img[c, dn, j]
        for i in range(H):
            # edges apart, so the inner loop has no clamping and vectorises
            img[c, i, 0] = w1 * tmp[i, 0] + w0 * tmp[i, 0] + w1 * tmp[i, 1]
            for j in range(1, W - 1):
                img[c, i, j] = w1 * tmp[i, j - 1] + w0 * tmp[i, j] + w1 * tmp[i, j + 1]
            img[c, i, W - 1] = w1 * tmp[i, W - 2] + w0 * tmp[i, W - 1] + w1 * tmp[i, W - 1]


@numba.njit(cache=True)
def _paint_background(img, counts, d):
    """Diamond-square plasma in a random colour wherever ``counts`` is 0 (the fractal stays on top)."""
    C, size = img.shape[0], img.shape[1]
    plasma = _diamond_square(size, d[_DRAW_BG], 0.45 + 0.25 * _unit(d[_DRAW_BG_ROUGH]))
    bh, bs = _unit(d[_DRAW_BG_HUE]), 0.3 + 0.7 * _unit(d[_DRAW_BG_SAT])
    bv = 0.2 + 0.4 * _unit(d[_DRAW_BG_VAL])
    for i in range(size):
        for j in range(size):
            if counts[i, j] == 0:
                p = plasma[i, j]
                if C == 3:
                    h = bh + 0.25 * p
                    h = h - 1.0 if h >= 1.0 else h
                    img[0, i, j] = _hsv(h, bs, p * bv, 5.0)
                    img[1, i, j] = _hsv(h, bs, p * bv, 3.0)
                    img[2, i, j] = _hsv(h, bs, p * bv, 1.0)
                else:
                    img[0, i, j] = p * bv


@numba.njit(cache=True)
def _to_uint8(img, out):
    """(C, H, W) float in [0, 1] -> (H, W, C) uint8."""
    C, size = img.shape[0], img.shape[1]
    for i in range(size):
        for j in range(size):
            for c in range(C):
                out[i, j, c] = _byte(img[c, i, j])


@numba.njit(cache=True)
def _background_kernel(key, out):
    d = _draws(key, N_DRAWS)
    size, C = out.shape[0], out.shape[2]
    img = np.zeros((C, size, size), dtype=np.float32)
    _paint_background(img, np.zeros((size, size), dtype=np.int32), d)
    _to_uint8(img, out)


@numba.njit(cache=True)
def _colour_table(peak, C, binary, log_density, hue0, sat, val):
    """Colour of every possible count 0..peak: a render has one hue offset, S and V, so a pixel's
    colour depends on its count only, and the pixel pass becomes a table lookup."""
    lut = np.zeros((peak + 1, C), dtype=np.float32)
    log_peak = np.log1p(peak)
    for h in range(1, peak + 1):
        v = _density(h, peak, binary, log_density, log_peak)
        if C == 3:
            hue = _hue(hue0, v)
            lut[h, 0] = _hsv(hue, sat, v * val, 5.0)
            lut[h, 1] = _hsv(hue, sat, v * val, 3.0)
            lut[h, 2] = _hsv(hue, sat, v * val, 1.0)
        else:
            lut[h, 0] = v
    return lut


@numba.njit(cache=True)
def _render_kernel(A, b, key, size, n_points, bbox_points, binary, log_density, color, patch,
                   flip, blur_p, jitter, background, window_shift, wmin, wmax, out):
    """The whole render into ``out`` (size, size, C) uint8. Returns the window scale (pixels per
    unit), 0 when the walk diverged (a black image)."""
    d = _draws(key, N_DRAWS)
    A, b = _jittered(A, b, jitter, _unit(d[_DRAW_JITTER_MAP]), _unit(d[_DRAW_JITTER_FACTOR]))
    table = _table(A)
    x, y = _start_point(A, b)
    xmin, ymin, xmax, ymax, x, y, state = _walk_bbox(A, b, table, bbox_points, x, y, d[_DRAW_WALK])
    extent = max(xmax - xmin, ymax - ymin, 1e-6)
    C = out.shape[2]
    if not (np.isfinite(extent) and extent < 1e12):
        out[:] = 0
        return 0.0
    cx = 0.5 * (xmin + xmax) + (2.0 * _unit(d[_DRAW_SHIFT_X]) - 1.0) * window_shift * extent
    cy = 0.5 * (ymin + ymax) + (2.0 * _unit(d[_DRAW_SHIFT_Y]) - 1.0) * window_shift * extent
    extent *= wmin + (wmax - wmin) * _unit(d[_DRAW_SCALE])
    scale = size / extent
    flip_code = np.int64(d[_DRAW_FLIP] >> np.uint64(61)) if flip else np.int64(0)
    px = _pixel_transform(cx - 0.5 * extent, cy - 0.5 * extent, scale, size, flip_code)
    hist = np.zeros((size + 4, size + 4), dtype=np.int32)
    _walk_hist(A, b, table, n_points, x, y, state, px, hist)

    mask = np.zeros((3, 3), dtype=np.uint8)
    mask[1, 1] = 1
    if patch:
        bits = d[_DRAW_PATCH]
        for t in range(9):
            if (bits >> np.uint64(63 - t)) & np.uint64(1):
                mask[t // 3, t % 3] = 1
    counts = _stamp(hist, mask, size)
    peak = max(counts.max(), 1)
    hue0, sat, val = _unit(d[_DRAW_HUE]), 0.3 + 0.7 * _unit(d[_DRAW_SAT]), 0.5 + 0.5 * _unit(d[_DRAW_VAL])
    blur = _unit(d[_DRAW_BLUR]) < blur_p
    # a walk piled into a few pixels has a huge peak: colour those pixels one by one instead
    if peak <= 4 * size * size:
        lut = _colour_table(peak, C, binary, log_density, hue0, sat, val)
    else:
        lut = np.zeros((0, C), dtype=np.float32)

    if not blur and not background and lut.shape[0] > 0:
        lut8 = np.empty((peak + 1, C), dtype=np.uint8)
        for h in range(peak + 1):
            for c in range(C):
                lut8[h, c] = _byte(lut[h, c])
        for i in range(size):
            for j in range(size):
                h = counts[i, j]
                for c in range(C):
                    out[i, j, c] = lut8[h, c]
        return scale

    img = np.zeros((C, size, size), dtype=np.float32)
    log_peak = np.log1p(peak)
    for i in range(size):
        for j in range(size):
            h = counts[i, j]
            if h == 0:
                continue
            if lut.shape[0] > 0:
                for c in range(C):
                    img[c, i, j] = lut[h, c]
            else:
                v = _density(h, peak, binary, log_density, log_peak)
                if C == 3:
                    hue = _hue(hue0, v)
                    img[0, i, j] = _hsv(hue, sat, v * val, 5.0)
                    img[1, i, j] = _hsv(hue, sat, v * val, 3.0)
                    img[2, i, j] = _hsv(hue, sat, v * val, 1.0)
                else:
                    img[0, i, j] = v
    if background:
        _paint_background(img, counts, d)
    if blur:
        _blur3(img, 0.5 + 0.5 * _unit(d[_DRAW_SIGMA]))
    _to_uint8(img, out)
    return scale


@numba.njit(cache=True)
def _fitted_fill_ratio(A, b, size, n_points, key):
    table = _table(A)
    x, y = _start_point(A, b)
    state = np.uint64(key)
    xmin, ymin, xmax, ymax, x, y, state = _walk_bbox(A, b, table, n_points, x, y, state)
    extent = max(xmax - xmin, ymax - ymin, 1e-6)
    if not (np.isfinite(extent) and extent < 1e12):
        return 0.0
    hist = np.zeros((size + 4, size + 4), dtype=np.int32)
    # the same walk again, so the window holds every point
    x, y = _start_point(A, b)
    _walk_hist(A, b, table, n_points, x, y, np.uint64(key),
               _pixel_transform(xmin, ymin, (size - 1e-9) / extent, size, np.int64(0)), hist)
    return (hist[2:size + 2, 2:size + 2] > 0).sum() / (size * size)


def fitted_fill_ratio(A, b, size: int = 256, n_points: int = 100_000, seed: int = 0) -> float:
    """FractalDB's filling rate: share of pixels hit when the window is the bounding box."""
    A = np.ascontiguousarray(A, dtype=np.float64)
    b = np.ascontiguousarray(b, dtype=np.float64)
    return float(_fitted_fill_ratio(A, b, size, n_points, np.uint64(seed & M64)))


# ---------------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------------


def render_key(A: np.ndarray, b: np.ndarray, key: int, cfg: RenderConfig,
               out: np.ndarray | None = None) -> np.ndarray:
    """Render one image of the system (A, b) from a 64-bit key: uint8, (size, size, 3) in colour,
    else (size, size). The same (A, b, key, cfg) gives the same bytes in any process."""
    A = np.ascontiguousarray(A, dtype=np.float64)
    b = np.ascontiguousarray(b, dtype=np.float64)
    if out is None:
        out = np.empty((cfg.size, cfg.size, cfg.channels), dtype=np.uint8)
    _render_kernel(A, b, np.uint64(key & M64), cfg.size, cfg.n_points,
                   max(int(cfg.n_points * cfg.bbox_fraction), 100), cfg.binary, cfg.log_density,
                   cfg.color, cfg.patch, cfg.flip, float(cfg.blur_p), cfg.jitter, cfg.background,
                   float(cfg.window_shift), float(cfg.window_scale_min), float(cfg.window_scale_max), out)
    return out if cfg.color else out[..., 0]


@numba.njit(cache=True)
def paste_nonblack(canvas, tile, y, x):
    """Copy ``tile`` (h, w, C) onto ``canvas`` at (y, x) wherever a tile pixel is not black."""
    h, w, C = tile.shape
    for i in range(h):
        for j in range(w):
            lit = False
            for c in range(C):
                lit = lit or tile[i, j, c] != 0
            if lit:
                for c in range(C):
                    canvas[y + i, x + j, c] = tile[i, j, c]


def render_background(key: int, cfg: RenderConfig, out: np.ndarray | None = None) -> np.ndarray:
    """The diamond-square background alone, (size, size, C) uint8 (Multi-Formula canvases)."""
    if out is None:
        out = np.empty((cfg.size, cfg.size, cfg.channels), dtype=np.uint8)
    _background_kernel(np.uint64(key & M64), out)
    return out


def render(A: np.ndarray, b: np.ndarray, rng: np.random.Generator, cfg: RenderConfig) -> np.ndarray:
    """Render one image; its randomness is one 64-bit draw from ``rng`` (see ``render_key``)."""
    return render_key(A, b, int(rng.integers(0, 2**63)), cfg)


def render_draws(key: int) -> np.ndarray:
    """The per-render uniforms in [0, 1) in ``_DRAW_*`` order (for the torch path and tests)."""
    return (_draws(np.uint64(key & M64), N_DRAWS) >> np.uint64(11)).astype(np.float64) / 2.0**53


def render_draw_bits(key: int) -> np.ndarray:
    return _draws(np.uint64(key & M64), N_DRAWS)

"""Rendering IFS attractors by the chaos game (numba on CPU), as the study's code renders them.

One compiled kernel does a whole render: per-render jitter, the walk, the histogram, the 3x3
patch, colour, diamond-square background and blur, written straight into a uint8 image. The walk
advances four independent walkers in lock-step (their dependency chains overlap in the CPU's
pipeline) and stores the points (float32) so that the window is the bounding box of all of them,
as in the reference; the dihedral flip is folded into the point -> pixel transform.

Randomness: a render is a pure function of (system, 64-bit key, config). The kernel expands the key
with splitmix64 into a fixed layout of draws (``DRAW_*``), drawn whether or not the option using
them is on, so switching one option (flip, blur, ...) leaves every other draw, and the walk,
unchanged. Each walker step takes 16 bits of a splitmix64 output and picks a map through an
8192-entry table: p_k proportional to |det A_k| to within 1/8192
(1/1024 at worst), every map reachable.

Rendering rules of the reference (Anderson & Farrell's ``fractal-pretraining``, as used by Ugwu et
al.'s ``fractal4AD``; PAPER.md): walk from the fixed point of map 1; window = bounding box of the
points, each axis's centre shifted by U(-0.2, 0.2) of its extent and its extent scaled by
U(0.5, 2) on its own, the box stretched to fill the square; graded density hits / max hits (or
binary); 3x3 stamp per point with each cell on with probability 1/2; colour: every lit pixel gets
the render's value V in [0.5, 1] and saturation S in [0.3, 1], the hue byte is (255 x density +
offset) mod 256 in OpenCV's 8-bit HSV; diamond-square background; 3x3 Gaussian blur with sigma in
[0.5, 1] with probability ``blur_p``; one random map scaled by U(0.8, 1.1), up to four tries,
a try rejected if it breaks contractivity. Grey renders (``color=False``) give every lit pixel V.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

# Compiled kernels live in a folder the project controls, so DataLoader workers (fork or spawn)
# and later processes load them (~0.5 s) instead of recompiling (~15 s). numba reads the variable at
# import; if numba was imported earlier, the config attribute below still takes effect because the
# cache locator reads it when each ``cache=True`` function is decorated.
CACHE_DIR = os.environ.get("NUMBA_CACHE_DIR") or str(Path(__file__).resolve().parents[2] / ".numba_cache")
os.environ.setdefault("NUMBA_CACHE_DIR", CACHE_DIR)

import numba  # noqa: E402
import numpy as np  # noqa: E402

numba.config.CACHE_DIR = CACHE_DIR

TABLE_BITS = 13  # map-choice table of 8192 entries, indexed by the top bits of a 16-bit field
_WALKERS = 4  # interleaved chaos-game walkers, one 16-bit field of each 64-bit draw apiece
M64 = (1 << 64) - 1
_LITTLE_ENDIAN = sys.byteorder == "little"
JITTER_TRIES = 4  # Anderson & Farrell / Ugwu et al.: up to four draws before rendering unjittered

# The public draw contract, shared with render_torch (the GPU renderer): every per-render choice is
# read from render_draws(key) at these fixed indices (see the module docstring), and the helpers
# jittered, map_table, start_point, pixel_transform, patch_mask, colour_params and colour_bytes are
# this module's API for it, not internals: change them and both renderers change together.
(DRAW_JITTER_MAP, DRAW_JITTER_FACTOR, DRAW_WALK, DRAW_SHIFT_X, DRAW_SHIFT_Y, DRAW_SCALE,
 DRAW_PATCH, DRAW_FLIP, DRAW_HUE, DRAW_SAT, DRAW_VAL, DRAW_BLUR, DRAW_SIGMA, DRAW_BG,
 DRAW_BG_HUE, DRAW_BG_SAT, DRAW_BG_VAL, DRAW_BG_ROUGH, DRAW_SCALE_Y, N_DRAWS) = range(20)


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

    def __post_init__(self):
        if self.size < 8:
            raise ValueError(f"render size must be >= 8 pixels, got {self.size}")
        if self.n_points < 100:
            raise ValueError(f"n_points must be >= 100, got {self.n_points}")
        if not 0.0 <= self.blur_p <= 1.0:
            raise ValueError(f"blur_p is a probability, got {self.blur_p}")
        if not 0 < self.window_scale_min <= self.window_scale_max:
            raise ValueError("need 0 < window_scale_min <= window_scale_max")

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
def jittered(A, b, enabled, seed):
    """Copy of the system with one random map (A_k and b_k) scaled by U(0.8, 1.1), as the
    reference does: up to ``JITTER_TRIES`` draws, a draw rejected if any map's largest singular
    value then exceeds 1; the system unchanged if all are rejected."""
    A2 = A.copy()
    b2 = b.copy()
    if not enabled:
        return A2, b2
    n = A.shape[0]
    base = 0.0
    for k in range(n):
        base = max(base, _spectral_norm2(A[k, 0, 0], A[k, 0, 1], A[k, 1, 0], A[k, 1, 1]))
    state = np.uint64(seed)
    for _ in range(JITTER_TRIES):
        state, r1 = _splitmix64(state)
        state, r2 = _splitmix64(state)
        k = min(int(_unit(r1) * n), n - 1)
        f = 0.8 + 0.3 * _unit(r2)
        top = base
        # the other maps are unchanged: only map k's norm can move the maximum up
        top = max(top, _spectral_norm2(A[k, 0, 0] * f, A[k, 0, 1] * f, A[k, 1, 0] * f, A[k, 1, 1] * f))
        if top <= 1.0:
            for i in range(2):
                b2[k, i] = b[k, i] * f
                for j in range(2):
                    A2[k, i, j] = A[k, i, j] * f
            return A2, b2
    return A2, b2


@numba.njit(cache=True)
def map_table(A):
    """Map-choice table: 2^13 entries holding map k in proportion to |det A_k| (largest-remainder
    rounding), each map with at least one entry. A map's probability is then within 1/8192 of
    p_k, and within 1/1024 even for the map that gives entries to degenerate (det = 0) maps; no
    map is ever unreachable. 8 KiB: it stays in L1."""
    n = A.shape[0]
    total = 1 << TABLE_BITS
    w = np.zeros(n)
    for k in range(n):
        w[k] = abs(A[k, 0, 0] * A[k, 1, 1] - A[k, 0, 1] * A[k, 1, 0])
    s = w.sum()
    if not (s > 0 and np.isfinite(s)):
        w[:] = 1.0
        s = float(n)
    exact = w / s * total
    units = np.floor(exact).astype(np.int64)
    rest = exact - units
    for _ in range(total - units.sum()):  # the leftover entries go to the largest remainders
        k = np.argmax(rest)
        units[k] += 1
        rest[k] = -1.0
    for k in range(n):
        if units[k] == 0:
            units[k] = 1
            units[np.argmax(units)] -= 1
    table = np.empty(total, dtype=np.uint8)
    t = 0
    for k in range(n):
        table[t:t + units[k]] = k
        t += units[k]
    return table


@numba.njit(cache=True)
def start_point(A, b):
    # x* = (I - A_1)^-1 b_1 is on the attractor of a contractive system: no burn-in needed.
    m00, m01, m10, m11 = 1.0 - A[0, 0, 0], -A[0, 0, 1], -A[0, 1, 0], 1.0 - A[0, 1, 1]
    det = m00 * m11 - m01 * m10
    if abs(det) < 1e-12:
        return 0.0, 0.0
    return (m11 * b[0, 0] - m01 * b[0, 1]) / det, (-m10 * b[0, 0] + m00 * b[0, 1]) / det


@numba.njit(cache=True, inline="always")
def _step(co, table, bits, x, y):
    # unsigned indices: numba then skips the negative-index fix-up (a third of the walk's time)
    k = np.uint64(table[bits >> np.uint64(16 - TABLE_BITS)])
    return (co[k, np.uint64(0)] * x + co[k, np.uint64(1)] * y + co[k, np.uint64(2)],
            co[k, np.uint64(3)] * x + co[k, np.uint64(4)] * y + co[k, np.uint64(5)])


@numba.njit(cache=True)
def _walk(A, b, n, state):
    """The chaos game from the fixed point of map 1: ``_WALKERS`` independent walkers advanced in
    lock-step (their dependency chains overlap in the CPU's pipeline), each taking 16 bits of one
    splitmix64 draw per step. Returns the points (float32, n rounded up to a multiple of the
    walker count) and their bounding box."""
    M = 8
    if A.shape[0] > M:
        raise ValueError("at most 8 maps per system")
    table = map_table(A)
    co = np.zeros((M, 6))
    for k in range(A.shape[0]):
        co[k, 0], co[k, 1], co[k, 2] = A[k, 0, 0], A[k, 0, 1], b[k, 0]
        co[k, 3], co[k, 4], co[k, 5] = A[k, 1, 0], A[k, 1, 1], b[k, 1]
    x, y = start_point(A, b)
    x0 = x1 = x2 = x3 = x
    y0 = y1 = y2 = y3 = y
    steps = (n + _WALKERS - 1) // _WALKERS
    pts = np.empty((steps * _WALKERS, 2), dtype=np.float32)
    inf = np.float32(np.inf)  # the box in float32, the points' precision: no conversions in the loop
    xmin, ymin, xmax, ymax = inf, inf, -inf, -inf
    m16 = np.uint64(0xFFFF)
    for s in range(steps):
        state, r = _splitmix64(state)
        x0, y0 = _step(co, table, r & m16, x0, y0)
        x1, y1 = _step(co, table, (r >> np.uint64(16)) & m16, x1, y1)
        x2, y2 = _step(co, table, (r >> np.uint64(32)) & m16, x2, y2)
        x3, y3 = _step(co, table, r >> np.uint64(48), x3, y3)
        # the box of the stored (float32) points, so the extreme points land on the border pixels
        a0, b0, a1, b1 = np.float32(x0), np.float32(y0), np.float32(x1), np.float32(y1)
        a2, b2, a3, b3 = np.float32(x2), np.float32(y2), np.float32(x3), np.float32(y3)
        i = 4 * s
        pts[i, 0], pts[i, 1], pts[i + 1, 0], pts[i + 1, 1] = a0, b0, a1, b1
        pts[i + 2, 0], pts[i + 2, 1], pts[i + 3, 0], pts[i + 3, 1] = a2, b2, a3, b3
        xmin = min(xmin, min(min(a0, a1), min(a2, a3)))
        xmax = max(xmax, max(max(a0, a1), max(a2, a3)))
        ymin = min(ymin, min(min(b0, b1), min(b2, b3)))
        ymax = max(ymax, max(max(b0, b1), max(b2, b3)))
    return pts, np.float64(xmin), np.float64(ymin), np.float64(xmax), np.float64(ymax)


@numba.njit(cache=True)
def _bin(pts, px, hist):
    """Count the points in ``hist``. ``px`` (2x3) maps a point to (column, row) pixel
    coordinates; the dihedral flip is folded into it, so the image comes out flipped at no cost.
    ``hist`` is (size + 4)^2 with a 2-pixel margin, so points up to one pixel outside the window
    are kept (their 3x3 stamp reaches inside) without per-stamp bounds checks; its outer ring
    (row or column 0 or size + 3) is never read."""
    # the window and flips give each pixel axis one point axis, the other coefficient +-0:
    # dropping that term changes no cell (adding +-0 leaves a non-zero sum as it is, and a
    # non-finite point stays non-finite on its own axis)
    if px[0, 1] == 0.0 and px[1, 0] == 0.0:
        jx, cx, ry = np.uint64(0), px[0, 0], px[1, 1]
    elif px[0, 0] == 0.0 and px[1, 1] == 0.0:
        jx, cx, ry = np.uint64(1), px[0, 1], px[1, 0]
    else:
        raise ValueError("_bin takes a window with a dihedral flip, as pixel_transform makes")
    jy = np.uint64(1) - jx
    c2, r2 = px[0, 2] + 2.0, px[1, 2] + 2.0  # shifted by the 2-pixel margin
    flat = hist.ravel()
    W = np.int32(hist.shape[1])
    top = np.float64(W - 1)
    for k in range(pts.shape[0]):
        u = np.uint64(k)  # unsigned indices: no negative-index fix-up
        fx = cx * np.float64(pts[u, jx]) + c2
        fy = ry * np.float64(pts[u, jy]) + r2
        # branch-free: a point outside the window (or NaN, from a diverging FractalDB walk: it
        # fails ``> 0``) is clamped onto the outer ring, which nothing reads; inside, the cast
        # of a positive coordinate truncates like floor
        fx = fx if fx > 0.0 else 0.0
        fx = fx if fx < top else top
        fy = fy if fy > 0.0 else 0.0
        fy = fy if fy < top else top
        flat[np.uint32(np.int32(fy) * W + np.int32(fx))] += 1


@numba.njit(cache=True)
def pixel_transform(x0, y0, sx, sy, size, flip_code):
    """(column, row) = px @ (x, y, 1): the window (``sx``, ``sy`` pixels per unit on each axis),
    then the dihedral element ``flip_code`` (three bits: swap axes, mirror rows, mirror columns;
    together all eight)."""
    px = np.array([[sx, 0.0, -x0 * sx], [0.0, sy, -y0 * sy]])
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
                oy, ox = 3 - dy, np.uint64(3 - dx)
                for i in range(size):
                    row = hist[i + oy]
                    o = out[i]
                    for j in range(size):  # unsigned: no negative-index fix-up, so it vectorises
                        u = np.uint64(j)
                        o[u] += row[u + ox]
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
def _byte(v):
    # clamp by selects, then truncate: no branch, so loops over pixels vectorise
    v = v * 255.0 + 0.5
    v = v if v < 255.0 else 255.0
    v = v if v > 0.0 else 0.0
    return np.uint8(np.int32(v))


@numba.njit(cache=True)
def _blur3(out, sigma):
    """3x3 Gaussian on the uint8 (H, W, C) image in place, with OpenCV's default border
    (reflect-101), as ``cv2.GaussianBlur(img, (3, 3), sigma)`` in the reference; separable, in
    float32, rounded once at the end. Row by row (the buffers stay in L1), each row as W * C
    interleaved values (horizontal neighbours are C apart), so every loop runs over contiguous
    memory and vectorises."""
    w1 = np.exp(-1.0 / (2.0 * sigma * sigma))
    w0 = np.float32(1.0 / (1.0 + 2.0 * w1))
    w1 = np.float32(w1 / (1.0 + 2.0 * w1))
    w2 = 2 * w1  # float64, as the edge sums have always been computed
    H, W, C = out.shape
    flat = out.reshape(H, W * C)
    WC = W * C
    t = np.empty(WC, dtype=np.float32)  # the vertical pass of the current row
    row = np.empty(WC, dtype=np.float32)
    uC, uC2 = np.uint64(C), np.uint64(2 * C)
    saved = flat[1].copy()  # the original of the row above (already overwritten in ``out``)
    for i in range(H):
        up = saved if i > 0 else flat[1]
        mid = flat[i]
        dn = flat[i + 1] if i < H - 1 else saved
        for e in range(WC):  # vertical, uint8 -> float32 on the fly (exact)
            u = np.uint64(e)
            t[u] = w1 * np.float32(up[u]) + w0 * np.float32(mid[u]) + w1 * np.float32(dn[u])
        for e in range(WC):  # a loop: numba's slice assignment copies byte by byte, 20x slower
            u = np.uint64(e)
            saved[u] = mid[u]
        for c in range(C):  # horizontal
            row[c] = np.float32(w0 * t[c] + w2 * t[C + c])
            row[WC - C + c] = np.float32(w0 * t[WC - C + c] + w2 * t[WC - 2 * C + c])
        for e in range(WC - 2 * C):
            u = np.uint64(e)  # unsigned: no negative-index fix-up, so the loop vectorises
            row[u + uC] = w1 * t[u] + w0 * t[u + uC] + w1 * t[u + uC2]
        for e in range(WC):
            u = np.uint64(e)
            mid[u] = _byte(row[u] * (1.0 / 255.0))


@numba.njit(cache=True)
def _paint_background(out, counts, d):
    """Diamond-square plasma in a random colour wherever ``counts`` is 0 (the fractal stays on top)."""
    size, C = out.shape[0], out.shape[2]
    plasma = _diamond_square(size, d[DRAW_BG], 0.45 + 0.25 * _unit(d[DRAW_BG_ROUGH]))
    bh, bs = _unit(d[DRAW_BG_HUE]), 0.3 + 0.7 * _unit(d[DRAW_BG_SAT])
    bv = 0.2 + 0.4 * _unit(d[DRAW_BG_VAL])
    for i in range(size):
        for j in range(size):
            if counts[i, j] == 0:
                p = plasma[i, j]
                if C == 3:
                    h = bh + 0.25 * p
                    h = h - 1.0 if h >= 1.0 else h
                    out[i, j, 0] = _byte(_hsv(h, bs, p * bv, 5.0))
                    out[i, j, 1] = _byte(_hsv(h, bs, p * bv, 3.0))
                    out[i, j, 2] = _byte(_hsv(h, bs, p * bv, 1.0))
                else:
                    out[i, j, 0] = _byte(p * bv)


@numba.njit(cache=True)
def _background_kernel(key, out):
    d = _draws(key, N_DRAWS)
    _paint_background(out, np.zeros((out.shape[0], out.shape[1]), dtype=np.int32), d)


@numba.njit(cache=True)
def colour_bytes(C, sat8, val8):
    """RGB bytes of each 8-bit hue h8 at the render's S and V, the reference's HSV convention:
    OpenCV's 8-bit HSV, where hue h8 means h8 * 2 degrees and wraps past 180."""
    lut = np.zeros((256, C), dtype=np.uint8)
    s, v = sat8 / 255.0, val8 / 255.0
    for h8 in range(256):
        hue = h8 / 180.0
        hue = hue - 1.0 if hue >= 1.0 else hue
        if C == 3:
            lut[h8, 0] = _byte(_hsv(hue, s, v, 5.0))
            lut[h8, 1] = _byte(_hsv(hue, s, v, 3.0))
            lut[h8, 2] = _byte(_hsv(hue, s, v, 1.0))
        else:
            lut[h8, 0] = val8
    return lut


@numba.njit(cache=True)
def colour_params(d):
    """Hue offset in [0, 255), S and V as the reference's bytes (V in [0.5, 1], S in [0.3, 1])."""
    return (255.0 * _unit(d[DRAW_HUE]), np.int64((0.3 + 0.7 * _unit(d[DRAW_SAT])) * 255.0),
            np.int64((0.5 + 0.5 * _unit(d[DRAW_VAL])) * 255.0))


@numba.njit(cache=True)
def patch_mask(bits, patch):
    """The 3x3 stamp: each cell on with probability 1/2 (the reference); the centre alone when no
    patch, or when all nine bits came out 0 (the reference would render a black image)."""
    mask = np.zeros((3, 3), dtype=np.uint8)
    if patch:
        for t in range(9):
            if (bits >> np.uint64(63 - t)) & np.uint64(1):
                mask[t // 3, t % 3] = 1
    if mask.sum() == 0:
        mask[1, 1] = 1
    return mask


@numba.njit(cache=True, inline="always")
def _hue_byte(h, peak, log_peak, binary, log_density, hue0):
    """The reference's hue byte for a pixel hit h > 0 times: the offset plus 255 x density, mod 256."""
    if binary:
        v = 1.0
    elif log_density:
        v = np.log1p(h) / log_peak
    else:
        v = h / peak
    return np.int64(v * 255.0 + hue0) & 255


@numba.njit(cache=True)
def _shade(counts, out, lut, hue0, binary, log_density):
    """The reference's colouring into ``out``: every lit pixel has the render's value V and
    saturation S (``lut``, one row per hue byte), the hue follows the density; unlit pixels black.
    The colour depends on the hit count alone, so it is computed once per count (a table indexed
    by the count: no division and no branch per pixel) unless there are more counts than pixels
    (a degenerate attractor piling its points onto a few pixels)."""
    H, W, C = out.shape
    if C == 1:  # grey: every lit pixel has V, the only value in ``lut``; a select that vectorises
        v = lut[0, 0]
        for i in range(H):
            for j in range(W):
                out[i, j, 0] = v if counts[i, j] > 0 else 0
        return
    # colour: C is 3 from here on
    peak = max(counts.max(), 1)
    log_peak = np.log1p(peak)
    n = peak + 1 if peak <= H * W else 1
    tab = np.zeros((n, C), dtype=np.uint8)  # row 0: black
    for h in range(1, n):
        h8 = _hue_byte(h, peak, log_peak, binary, log_density, hue0)
        for c in range(C):
            tab[h, c] = lut[h8, c]
    if n > 1 and W % 4 == 0 and _LITTLE_ENDIAN:
        # four RGB pixels are three 32-bit words: three stores instead of twelve (the loop is
        # store-bound); tab32[h] holds the pixel as R | G << 8 | B << 16
        tab32 = np.empty(n, dtype=np.uint32)
        for h in range(n):
            tab32[h] = np.uint32(tab[h, 0]) | (np.uint32(tab[h, 1]) << 8) | (np.uint32(tab[h, 2]) << 16)
        words = out.reshape(H, W * 3).view(np.uint32)
        s8, s16, s24 = np.uint32(8), np.uint32(16), np.uint32(24)
        for i in range(H):
            c_row, w_row = counts[i], words[i]
            for q in range(W // 4):
                u = np.uint64(4 * q)
                p0, p1 = tab32[np.uint64(c_row[u])], tab32[np.uint64(c_row[u + np.uint64(1)])]
                p2, p3 = tab32[np.uint64(c_row[u + np.uint64(2)])], tab32[np.uint64(c_row[u + np.uint64(3)])]
                v = np.uint64(3 * q)
                w_row[v] = p0 | (p1 << s24)
                w_row[v + np.uint64(1)] = (p1 >> s8) | (p2 << s16)
                w_row[v + np.uint64(2)] = (p2 >> s16) | (p3 << s8)
        return
    for i in range(H):
        for j in range(W):
            h = counts[i, j]
            if n > 1:
                t = np.uint64(h)
                out[i, j, 0], out[i, j, 1], out[i, j, 2] = tab[t, 0], tab[t, 1], tab[t, 2]
            else:
                h8 = _hue_byte(max(h, 1), peak, log_peak, binary, log_density, hue0)
                for c in range(3):
                    out[i, j, c] = lut[h8, c] if h > 0 else 0


@numba.njit(cache=True)
def _render_kernel(A, b, key, size, n_points, binary, log_density, color, patch,
                   flip, blur_p, jitter, background, window_shift, wmin, wmax, out):
    """The whole render into ``out`` (size, size, C) uint8. Returns the window's pixels per unit
    along x, 0 when the walk diverged (a black image)."""
    d = _draws(key, N_DRAWS)
    A, b = jittered(A, b, jitter, d[DRAW_JITTER_MAP])
    pts, xmin, ymin, xmax, ymax = _walk(A, b, n_points, d[DRAW_WALK])
    ex, ey = xmax - xmin, ymax - ymin
    if not (np.isfinite(ex) and np.isfinite(ey) and ex < 1e12 and ey < 1e12):
        out[:] = 0
        return 0.0
    ex, ey = (ex if ex > 0 else 1.0), (ey if ey > 0 else 1.0)
    # the reference's window: each axis of the bounding box shifted and scaled on its own, then
    # stretched to fill the square
    cx = 0.5 * (xmin + xmax) + (2.0 * _unit(d[DRAW_SHIFT_X]) - 1.0) * window_shift * ex
    cy = 0.5 * (ymin + ymax) + (2.0 * _unit(d[DRAW_SHIFT_Y]) - 1.0) * window_shift * ey
    ex *= wmin + (wmax - wmin) * _unit(d[DRAW_SCALE])
    ey *= wmin + (wmax - wmin) * _unit(d[DRAW_SCALE_Y])
    sx, sy = (size - 1) / ex, (size - 1) / ey
    flip_code = np.int64(d[DRAW_FLIP] >> np.uint64(61)) if flip else np.int64(0)
    px = pixel_transform(cx - 0.5 * ex, cy - 0.5 * ey, sx, sy, size, flip_code)
    hist = np.zeros((size + 4, size + 4), dtype=np.int32)
    _bin(pts[:n_points], px, hist)
    if patch:
        counts = _stamp(hist, patch_mask(d[DRAW_PATCH], patch), size)
    else:  # a single pixel per point: the counts are the histogram's inside
        counts = hist[2:size + 2, 2:size + 2]
    hue0, sat8, val8 = colour_params(d)
    _shade(counts, out, colour_bytes(out.shape[2], sat8, val8), hue0, binary, log_density)
    if background:
        _paint_background(out, counts, d)
    if _unit(d[DRAW_BLUR]) < blur_p:
        _blur3(out, 0.5 + 0.5 * _unit(d[DRAW_SIGMA]))
    return sx


@numba.njit(cache=True)
def _fitted_fill_ratio(A, b, size, n_points, key):
    pts, xmin, ymin, xmax, ymax = _walk(A, b, n_points, np.uint64(key))
    ex, ey = xmax - xmin, ymax - ymin
    if not (np.isfinite(ex) and np.isfinite(ey) and ex < 1e12 and ey < 1e12):
        return 0.0
    ex, ey = (ex if ex > 0 else 1.0), (ey if ey > 0 else 1.0)
    hist = np.zeros((size + 4, size + 4), dtype=np.int32)
    _bin(pts[:n_points], pixel_transform(xmin, ymin, (size - 1) / ex, (size - 1) / ey, size, np.int64(0)), hist)
    return (hist[2:size + 2, 2:size + 2] > 0).sum() / (size * size)


def fitted_fill_ratio(A, b, size: int = 512, n_points: int = 100_000, seed: int = 0) -> float:
    """FractalDB's filling rate: share of pixels hit when the window is the bounding box,
    stretched per axis to the square (as every render here)."""
    A = np.ascontiguousarray(A, dtype=np.float64)
    b = np.ascontiguousarray(b, dtype=np.float64)
    return float(_fitted_fill_ratio(A, b, size, n_points, np.uint64(seed & M64)))


@numba.njit(cache=True)
def _resize_paste(canvas, tile, s, y, x):
    """Bilinear resize of ``tile`` to s x s (OpenCV's INTER_LINEAR: pixel centres aligned, no
    antialiasing) pasted with its top-left at (y, x) where the resized pixel is not black; the
    part outside the canvas is cut off."""
    H, W, C = canvas.shape
    t = tile.shape[0]
    f = t / s
    px = np.zeros(C)
    for i in range(max(0, -y), min(s, H - y)):
        sy = max((i + 0.5) * f - 0.5, 0.0)
        y0 = min(int(sy), t - 1)
        y1 = min(y0 + 1, t - 1)
        wy = sy - y0
        for j in range(max(0, -x), min(s, W - x)):
            sx = max((j + 0.5) * f - 0.5, 0.0)
            x0 = min(int(sx), t - 1)
            x1 = min(x0 + 1, t - 1)
            wx = sx - x0
            lit = False
            for c in range(C):
                v = ((1 - wy) * ((1 - wx) * tile[y0, x0, c] + wx * tile[y0, x1, c])
                     + wy * ((1 - wx) * tile[y1, x0, c] + wx * tile[y1, x1, c]))
                px[c] = v
                lit = lit or v >= 0.5
            if lit:
                for c in range(C):
                    canvas[y + i, x + j, c] = _byte(px[c] * (1.0 / 255.0))


@numba.njit(cache=True)
def _maybe_blur_kernel(out, key, blur_p):
    d = _draws(key, N_DRAWS)
    if _unit(d[DRAW_BLUR]) < blur_p:
        _blur3(out, 0.5 + 0.5 * _unit(d[DRAW_SIGMA]))


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
    if len(A) > 8:
        raise ValueError(f"the renderer takes at most 8 maps per system, got {len(A)}")
    _render_kernel(A, b, np.uint64(key & M64), cfg.size, cfg.n_points, cfg.binary, cfg.log_density,
                   cfg.color, cfg.patch, cfg.flip, float(cfg.blur_p), cfg.jitter, cfg.background,
                   float(cfg.window_shift), float(cfg.window_scale_min), float(cfg.window_scale_max), out)
    return out if cfg.color else out[..., 0]


def resize_paste(canvas: np.ndarray, tile: np.ndarray, size: int, y: int, x: int) -> None:
    """Resize ``tile`` (t, t, C) bilinearly to ``size`` and paste it on ``canvas`` (H, W, C) at
    (y, x), where it is not black; (y, x) may lie outside, the overhang is cut off."""
    _resize_paste(canvas, tile, size, y, x)


def maybe_blur(img: np.ndarray, key: int, blur_p: float) -> None:
    """In place: the 3x3 Gaussian blur of a render, with probability ``blur_p`` (drawn from key)."""
    _maybe_blur_kernel(img, np.uint64(key & M64), float(blur_p))


def render_background(key: int, cfg: RenderConfig, out: np.ndarray | None = None) -> np.ndarray:
    """The diamond-square background alone, (size, size, C) uint8 (Multi-Formula canvases)."""
    if out is None:
        out = np.zeros((cfg.size, cfg.size, cfg.channels), dtype=np.uint8)
    _background_kernel(np.uint64(key & M64), out)
    return out


def render(A: np.ndarray, b: np.ndarray, rng: np.random.Generator, cfg: RenderConfig) -> np.ndarray:
    """Render one image; its randomness is one 64-bit draw from ``rng`` (see ``render_key``)."""
    return render_key(A, b, int(rng.integers(0, 2**63)), cfg)


def render_draws(key: int) -> np.ndarray:
    """The per-render uniforms in [0, 1) in ``DRAW_*`` order (for the torch path and tests)."""
    return (_draws(np.uint64(key & M64), N_DRAWS) >> np.uint64(11)).astype(np.float64) / 2.0**53


def render_draw_bits(key: int) -> np.ndarray:
    return _draws(np.uint64(key & M64), N_DRAWS)

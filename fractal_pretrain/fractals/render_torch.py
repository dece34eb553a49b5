"""A whole batch of chaos-game renders in torch (GPU; also runs on CPU for tests).

Same images in distribution as ``render.render_key``, by construction: every per-render choice
(jitter, window shift and scale, flip, patch, colour, blur, background) is taken from the same
``render_draws(key)`` as the CPU kernel, so a GPU image and the CPU image of the same key share the
window shift and scale, colour and flip; only the walk's random stream differs. The walk runs many
walkers per image in lock-step: each starts at the fixed point of map 1 (on the attractor) and takes
``burn_in`` unrecorded steps, so the recorded points follow the invariant measure and graded
density (hits / max hits) is unbiased. The walk's randomness is a counter-based hash of
(key, walker, step), so it is walked twice: once for the bounding box of every point (the
reference's window), once more, identically, into the histogram with
``index_put_(accumulate=True)``. A render does not depend on the batch it is in, and integer
accumulation makes it deterministic on a given device.

Selected by ``fractal.renderer: torch``; ``render_batch`` is what a training step calls on keys
from ``data.RenderKeys``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from fractal_pretrain.fractals import render as R
from fractal_pretrain.fractals.render import RenderConfig

_M32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    # (x * c) mod 2^32 without int64 overflow: split the constant into 16-bit halves
    lo = x * (c & 0xFFFF)
    hi = ((x * (c >> 16)) & 0xFFFF) << 16
    return (lo + hi) & _M32


def hash32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 (C. Wellons): a well-mixed 32-bit hash on int64 tensors holding 32-bit values."""
    x = x & _M32
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _hash_int(v: int) -> int:
    return int(hash32(torch.tensor([v & _M32], dtype=torch.int64))[0])


def _prepare(systems, keys, cfg: RenderConfig):
    """Host side, per image: the jittered system, its map table and start point, the draws, the
    colour of each hue byte."""
    B, C = len(keys), cfg.channels
    M = max(len(A) for A, _ in systems)
    A_out = np.zeros((B, M, 2, 2))
    b_out = np.zeros((B, M, 2))
    tables = np.zeros((B, 1 << R.TABLE_BITS), dtype=np.int64)
    colours = np.zeros((B, 256, C), dtype=np.uint8)
    hue0 = np.zeros(B)
    start = np.zeros((B, 2))
    draws = np.zeros((B, R.N_DRAWS))
    masks = np.zeros((B, 3, 3))
    for i, ((A, b), key) in enumerate(zip(systems, keys)):
        d = R.render_draws(key)
        bits = R.render_draw_bits(key)
        A, b = R.jittered(np.ascontiguousarray(A, dtype=np.float64), np.ascontiguousarray(b, dtype=np.float64),
                           cfg.jitter, bits[R.DRAW_JITTER_MAP])
        n = len(A)
        A_out[i, :n], b_out[i, :n] = A, b
        tables[i] = R.map_table(A)
        start[i] = R.start_point(A, b)
        draws[i] = d
        masks[i] = R.patch_mask(bits[R.DRAW_PATCH], cfg.patch)
        hue0[i], sat8, val8 = R.colour_params(bits)
        colours[i] = R.colour_bytes(C, sat8, val8)
    return A_out, b_out, tables, start, draws, masks, colours, hue0


@torch.no_grad()
def render_batch(systems, keys, cfg: RenderConfig, device: str | torch.device = "cpu",
                 walkers: int = 1024, burn_in: int = 32, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Render ``systems`` (a list of (A, b)) with their 64-bit ``keys``: uint8 (B, C, H, W)."""
    device = torch.device(device)
    B, S, C = len(keys), cfg.size, cfg.channels
    A, b, tables, start, draws, masks, colours, hue0 = _prepare(systems, keys, cfg)
    A = torch.as_tensor(A, dtype=dtype, device=device)
    b = torch.as_tensor(b, dtype=dtype, device=device)
    tables = torch.as_tensor(tables, device=device)
    d = torch.as_tensor(draws, dtype=torch.float64, device=device)
    rows = torch.arange(B, device=device)[:, None]

    k64 = [int(k) & R.M64 for k in keys]
    key_lo = torch.tensor([k & _M32 for k in k64], dtype=torch.int64, device=device)[:, None]
    key_hi = torch.tensor([k >> 32 for k in k64], dtype=torch.int64, device=device)[:, None]
    walker = torch.arange(walkers, dtype=torch.int64, device=device)[None, :]
    stream = hash32(key_lo ^ hash32(key_hi ^ hash32(walker + 0x9E3779B9)))  # (B, W)

    x = torch.as_tensor(start[:, 0], dtype=dtype, device=device)[:, None].expand(B, walkers).clone()
    y = torch.as_tensor(start[:, 1], dtype=dtype, device=device)[:, None].expand(B, walkers).clone()
    step_no = 0

    def step():
        nonlocal x, y, step_no
        r = hash32(stream ^ _hash_int(step_no * 0x632BE5AB + 1))
        step_no += 1
        k = tables[rows, r >> (32 - R.TABLE_BITS)]  # the CPU's table: the same map probabilities
        Ak, bk = A[rows, k], b[rows, k]  # (B, W, 2, 2), (B, W, 2)
        x, y = (Ak[..., 0, 0] * x + Ak[..., 0, 1] * y + bk[..., 0],
                Ak[..., 1, 0] * x + Ak[..., 1, 1] * y + bk[..., 1])

    def restart():
        nonlocal x, y, step_no
        x = torch.as_tensor(start[:, 0], dtype=dtype, device=device)[:, None].expand(B, walkers).clone()
        y = torch.as_tensor(start[:, 1], dtype=dtype, device=device)[:, None].expand(B, walkers).clone()
        step_no = 0

    # Pass 1: the window is the bounding box of every point visited from the fixed point on,
    # burn-in included, as on the CPU (and in the reference): for a map with s1 near 1 the fixed
    # point lies far out in a thin tail of the attractor that walkers rarely visit.
    steps = -(-cfg.n_points // walkers)
    xmin, xmax, ymin, ymax = x.amin(1), x.amax(1), y.amin(1), y.amax(1)
    for t in range(burn_in + steps):
        step()
        xmin, xmax = torch.minimum(xmin, x.amin(1)), torch.maximum(xmax, x.amax(1))
        ymin, ymax = torch.minimum(ymin, y.amin(1)), torch.maximum(ymax, y.amax(1))

    # the window and the flip exactly as in the CPU kernel, from the same draws
    xmin, xmax, ymin, ymax = (t.double() for t in (xmin, xmax, ymin, ymax))
    ex, ey = xmax - xmin, ymax - ymin
    ok = torch.isfinite(ex) & torch.isfinite(ey) & (ex < 1e12) & (ey < 1e12)
    ex = torch.where(ok & (ex > 0), ex, torch.ones_like(ex))
    ey = torch.where(ok & (ey > 0), ey, torch.ones_like(ey))
    cx = 0.5 * (xmin + xmax) + (2 * d[:, R.DRAW_SHIFT_X] - 1) * cfg.window_shift * ex
    cy = 0.5 * (ymin + ymax) + (2 * d[:, R.DRAW_SHIFT_Y] - 1) * cfg.window_shift * ey
    span = cfg.window_scale_max - cfg.window_scale_min
    ex = ex * (cfg.window_scale_min + span * d[:, R.DRAW_SCALE])
    ey = ey * (cfg.window_scale_min + span * d[:, R.DRAW_SCALE_Y])
    px = torch.stack([torch.as_tensor(R.pixel_transform(float(x0), float(y0), (S - 1) / float(w), (S - 1) / float(h),
                                                         S, int(f)))
                      for x0, y0, w, h, f in zip((cx - 0.5 * ex).tolist(), (cy - 0.5 * ey).tolist(),
                                                 ex.tolist(), ey.tolist(), _flip_codes(keys, cfg))]).to(device, dtype)

    # Pass 2: the same walk again (same hash counters), into the histogram after the burn-in
    restart()
    for _ in range(burn_in):
        step()
    P = S + 4
    hist = torch.zeros(B * P * P, dtype=torch.int64, device=device)
    base = (torch.arange(B, device=device) * P * P)[:, None]
    ones = torch.ones(1, dtype=torch.int64, device=device)
    for _ in range(steps):
        step()
        fx = px[:, 0, 0, None] * x + px[:, 0, 1, None] * y + px[:, 0, 2, None]
        fy = px[:, 1, 0, None] * x + px[:, 1, 1, None] * y + px[:, 1, 2, None]
        valid = (fx >= -1) & (fx < S + 1) & (fy >= -1) & (fy < S + 1) & ok[:, None]
        idx = base + ((fy + 1).clamp(0, S + 1).long() + 1) * P + (fx + 1).clamp(0, S + 1).long() + 1
        hist.index_put_((idx[valid],), ones.expand(int(valid.sum())), accumulate=True)

    # stamp: the same correlation as the CPU kernel, as a grouped convolution (exact on integers)
    hist = hist.view(1, B, P, P)[:, :, 1:S + 3, 1:S + 3].double()
    weight = torch.as_tensor(masks[:, ::-1, ::-1].copy(), dtype=torch.float64, device=device)[:, None]
    counts = F.conv2d(hist, weight, groups=B)[0].round_()  # (B, S, S)
    peak = counts.flatten(1).amax(1).clamp_min(1)[:, None, None]
    if cfg.binary:
        v = (counts > 0).double()
    elif cfg.log_density:
        v = torch.log1p(counts) / torch.log1p(peak)
    else:
        v = counts / peak
    # the reference's colouring (see render.py): the hue byte from the density, V and S constant
    h8 = (v * 255 + torch.as_tensor(hue0, device=device)[:, None, None]).long() & 255
    lut = torch.as_tensor(colours, device=device)  # (B, 256, C)
    img = torch.gather(lut, 1, h8.flatten(1)[..., None].expand(-1, -1, C)).view(B, S, S, C).permute(0, 3, 1, 2)
    img = torch.where((counts > 0)[:, None], img, torch.zeros_like(img)).double()
    if cfg.background:
        bg = torch.stack([torch.from_numpy(R.render_background(k, cfg)) for k in keys]).to(device)
        img = torch.where((counts == 0)[:, None], bg.permute(0, 3, 1, 2).double(), img)
    if cfg.blur_p > 0:
        blur = (d[:, R.DRAW_BLUR] < cfg.blur_p)[:, None, None, None]
        sigma = 0.5 + 0.5 * d[:, R.DRAW_SIGMA]
        w1 = torch.exp(-1.0 / (2 * sigma * sigma))
        w0, w1 = (1 / (1 + 2 * w1))[:, None, None, None], (w1 / (1 + 2 * w1))[:, None, None, None]
        pad = F.pad(img, (1, 1, 1, 1), mode="reflect")  # OpenCV's default border, reflect-101
        tmp = w1 * pad[:, :, :-2] + w0 * pad[:, :, 1:-1] + w1 * pad[:, :, 2:]
        blurred = w1 * tmp[..., :-2] + w0 * tmp[..., 1:-1] + w1 * tmp[..., 2:]
        img = torch.where(blur, blurred, img)
    return (img + 0.5).clamp_(0, 255).to(torch.uint8)


def _hsv(h, s, v, n):
    k = n + h * 6
    k = torch.where(k >= 6, k - 6, k)
    return v * (1 - s * torch.minimum(k, 4 - k).clamp(0, 1))


def _flip_codes(keys, cfg: RenderConfig) -> list[int]:
    if not cfg.flip:
        return [0] * len(keys)
    return [int(R.render_draw_bits(k)[R.DRAW_FLIP]) >> 61 for k in keys]

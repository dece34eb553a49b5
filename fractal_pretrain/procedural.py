"""Procedural images beside fractals: dead leaves and spectral noise ("Learning to See by Looking at
Noise", Baradad et al., NeurIPS 2021), rendered on the fly from a 64-bit key like the fractals.

A *class* is one draw of a generator's parameters (as a fractal class is one draw of IFS maps):
``dead_leaves_class`` / ``spectral_class`` turn a class key into a parameter dict; ``render_dead_leaves``
/ ``render_spectral`` turn (parameters, image key) into an RGB uint8 image. Class parameters and
spectral images draw from ``numpy.random.default_rng(key)`` (PCG64: the same bits on every
platform); dead leaves draw their thousands of shapes inside the compiled kernel from the fractal
renderer's splitmix64 stream of the key. Either way the same key gives the same bytes whatever the
worker, batch or process.

- Dead leaves: shapes (discs/ellipses or rotated rectangles) dropped one behind the other until
  the image is covered; sizes from a power law ``p(r) ~ r^-alpha`` (scale invariance), colours from
  the class's hue band, some shapes striped by a sinusoidal grating (the "textured" variant).
- Spectral noise: random phases under an amplitude spectrum ``1 / f^alpha``, stretched along the
  class's orientation (anisotropy), three fields mixed into colour by the class's colour matrix.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from fractal_pretrain.fractals.render import _splitmix64, _unit

MAX_LEAVES = 20_000  # shapes per image at most; the few pixels still bare after them take the last colour


def dead_leaves_class(key: int) -> dict[str, float]:
    """One dead-leaves class: size law, shape mix, orientation, hue band and texture share."""
    rng = np.random.default_rng(key)
    return {"alpha": float(rng.uniform(1.5, 3.5)),  # power-law exponent of the sizes
            "r_max": float(rng.uniform(0.1, 0.4)),  # largest radius, as a share of the image side
            "rect_p": float(rng.uniform(0.0, 1.0)),  # share of rectangles (the rest are ellipses)
            "max_aspect": float(np.exp(rng.uniform(0.0, np.log(4.0)))),
            "angle": float(rng.uniform(0.0, np.pi)),  # preferred orientation ...
            "angle_spread": float(rng.uniform(0.05, 1.6)),  # ... and how strictly it holds
            "hue": float(rng.uniform(0.0, 1.0)), "hue_spread": float(rng.uniform(0.03, 0.5)),
            "sat_min": float(rng.uniform(0.0, 0.7)), "val_min": float(rng.uniform(0.1, 0.6)),
            "texture_p": float(rng.uniform(0.0, 0.6))}


DEAD_LEAVES_FIELDS = ("alpha", "r_max", "rect_p", "max_aspect", "angle", "angle_spread", "hue", "hue_spread",
                      "sat_min", "val_min", "texture_p")


@njit(cache=True, inline="always")
def _uniform(state):
    state, r = _splitmix64(state)
    return state, _unit(r)


@njit(cache=True)
def _dead_leaves(p, key, size, max_leaves):  # pragma: no cover - compiled
    """Shapes of class ``p`` (DEAD_LEAVES_FIELDS order) dropped behind each other, front first, each
    painted only where the image is still bare, until it is covered; every draw from ``key``."""
    alpha, r_max, rect_p, max_aspect, angle0, spread = p[0], max(p[1] * size, 1.0), p[2], p[3], p[4], p[5]
    hue0, hue_spread, sat_min, val_min, texture_p = p[6], p[7], p[8], p[9], p[10]
    a, r_min = 1.0 - alpha, 0.6
    img = np.zeros((size, size, 3))
    bare = np.ones((size, size), np.bool_)
    left = size * size
    state = np.uint64(key)
    rgb = np.zeros(3)
    for _ in range(max_leaves):
        state, u = _uniform(state)
        r = (r_min**a + u * (r_max**a - r_min**a)) ** (1.0 / a)  # inverse CDF of r^-alpha
        state, cx = _uniform(state)
        state, cy = _uniform(state)
        cx, cy = cx * size, cy * size
        state, u = _uniform(state)
        aspect = np.exp(u * np.log(max_aspect))
        state, u1 = _uniform(state)
        state, u2 = _uniform(state)  # Box-Muller: the orientation's normal deviation
        angle = angle0 + spread * np.sqrt(-2.0 * np.log(1.0 - u1)) * np.cos(2.0 * np.pi * u2)
        state, u = _uniform(state)
        rect = u < rect_p
        state, u = _uniform(state)
        h = (hue0 + (2.0 * u - 1.0) * hue_spread) % 1.0
        state, u = _uniform(state)
        sat = sat_min + u * (1.0 - sat_min)
        state, u = _uniform(state)
        val = val_min + u * (1.0 - val_min)
        i, f = int(h * 6.0) % 6, h * 6.0 - np.floor(h * 6.0)
        lo, down, up = val * (1.0 - sat), val * (1.0 - f * sat), val * (1.0 - (1.0 - f) * sat)
        if i == 0:
            rgb[0], rgb[1], rgb[2] = val, up, lo
        elif i == 1:
            rgb[0], rgb[1], rgb[2] = down, val, lo
        elif i == 2:
            rgb[0], rgb[1], rgb[2] = lo, val, up
        elif i == 3:
            rgb[0], rgb[1], rgb[2] = lo, down, val
        elif i == 4:
            rgb[0], rgb[1], rgb[2] = up, lo, val
        else:
            rgb[0], rgb[1], rgb[2] = val, lo, down
        state, u = _uniform(state)
        state, freq = _uniform(state)
        state, phase = _uniform(state)
        freq = 0.3 + 1.2 * freq if u < texture_p else 0.0  # a grating across the shape, radians per pixel
        phase *= 2.0 * np.pi

        ru, rv = r * np.sqrt(aspect), r / np.sqrt(aspect)  # same area whatever the aspect
        c, s = np.cos(angle), np.sin(angle)
        reach = max(ru, rv) * 1.4143
        for y in range(max(int(cy - reach), 0), min(int(cy + reach) + 1, size)):
            for x in range(max(int(cx - reach), 0), min(int(cx + reach) + 1, size)):
                if not bare[y, x]:
                    continue
                dx, dy = x + 0.5 - cx, y + 0.5 - cy
                pu, pv = (c * dx + s * dy) / ru, (c * dy - s * dx) / rv
                if (max(abs(pu), abs(pv)) <= 1.0) if rect else (pu * pu + pv * pv <= 1.0):
                    shade = 0.65 + 0.35 * np.sin(freq * pu * ru + phase) if freq > 0.0 else 1.0
                    for ch in range(3):
                        img[y, x, ch] = rgb[ch] * shade
                    bare[y, x] = False
                    left -= 1
        if left == 0:
            break
    if left > 0:  # the last shape's colour under whatever is still bare
        for y in range(size):
            for x in range(size):
                if bare[y, x]:
                    for ch in range(3):
                        img[y, x, ch] = rgb[ch]
    out = np.empty((size, size, 3), np.uint8)
    for y in range(size):
        for x in range(size):
            for ch in range(3):
                out[y, x, ch] = np.uint8(min(max(img[y, x, ch] * 255.0 + 0.5, 0.0), 255.0))
    return out


def render_dead_leaves(p: dict[str, float], key: int, size: int) -> np.ndarray:
    """A ``size`` x ``size`` RGB uint8 dead-leaves image of class ``p`` from image key ``key``."""
    return _dead_leaves(np.array([p[k] for k in DEAD_LEAVES_FIELDS], dtype=np.float64), np.uint64(key), size,
                        MAX_LEAVES)


def spectral_class(key: int) -> dict[str, float | list[float]]:
    """One spectral-noise class: spectral slope, anisotropy and orientation, colour mixing."""
    rng = np.random.default_rng(key)
    return {"alpha": float(rng.uniform(0.8, 2.2)),  # amplitude ~ 1 / f^alpha (natural images: ~1)
            "anisotropy": float(np.exp(rng.uniform(0.0, np.log(4.0)))),
            "angle": float(rng.uniform(0.0, np.pi)),
            "colour": rng.normal(0.0, 1.0, (3, 3)).round(6).tolist(),  # mixes 3 noise fields into RGB
            "contrast": float(rng.uniform(0.15, 0.3))}


def render_spectral(p: dict, key: int, size: int) -> np.ndarray:
    """A ``size`` x ``size`` RGB uint8 spectral-noise image of class ``p`` from image key ``key``:
    the slope and orientation jittered per image, random phases, real part of the inverse FFT."""
    rng = np.random.default_rng(key)
    alpha = p["alpha"] + rng.normal(0.0, 0.1)
    angle = p["angle"] + rng.normal(0.0, 0.15)
    fy, fx = np.meshgrid(np.fft.fftfreq(size), np.fft.fftfreq(size), indexing="ij")
    u, v = np.cos(angle) * fx + np.sin(angle) * fy, np.cos(angle) * fy - np.sin(angle) * fx
    f = np.hypot(u * np.sqrt(p["anisotropy"]), v / np.sqrt(p["anisotropy"]))
    f[0, 0] = 1.0
    amplitude = f ** -alpha
    amplitude[0, 0] = 0.0  # no DC: the mean is set below
    phase = rng.uniform(0.0, 2 * np.pi, (3, size, size))
    fields = np.fft.ifft2(amplitude * np.exp(1j * phase)).real
    fields /= fields.std(axis=(1, 2), keepdims=True) + 1e-12
    rgb = np.tensordot(np.asarray(p["colour"]), fields, axes=1) / np.sqrt(3.0)
    rgb = 0.5 + rng.uniform(-0.15, 0.15, (3, 1, 1)) + p["contrast"] * rgb
    return np.clip(rgb.transpose(1, 2, 0) * 255.0 + 0.5, 0, 255).astype(np.uint8)


GENERATORS = {"dead_leaves": (dead_leaves_class, render_dead_leaves),
              "spectral_noise": (spectral_class, render_spectral)}

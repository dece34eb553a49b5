"""Iterated function systems: sampling, storage and the per-render jitter.

Two samplers, chosen by ``fractal.sampler``:

* ``anderson_farrell`` (default; Anderson & Farrell, "Improving Fractal Pre-training", WACV 2022,
  as used by Ugwu et al., CVPR-W 2024): N in {2, 3, 4} affine maps x -> A_k x + b_k with
  A_k = R(theta) diag(s1, s2) R(phi) D, singular values drawn so that the "sigma factor"
  sum_k (s1_k + 2 s2_k) lands in ((5 + N) / 2, (6 + N) / 2), b_k in U(-1, 1)^2. That constraint is
  what keeps the attractors between dust and blobs.
* ``fractaldb`` (Kataoka et al., "Pre-training without Natural Images", ACCV 2020): the six
  parameters of every map uniform in (-1, 1), N uniform in {2..7}, a system accepted only if its
  binary rendering fills at least ``fill_rate`` of the image (their random search).

Map probabilities are p_k proportional to |det A_k| for both. Pure numpy apart from the fill-ratio
check of the FractalDB search (which renders). Every function takes an explicit
``np.random.Generator``; nothing here touches global random state. Systems are stored as .npz
(never pickle) with a format version and a JSON metadata string (family, sampler).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # v1 had no metadata
MAX_MAPS = 4  # Anderson & Farrell; FractalDB banks are padded to their own largest N
SAMPLERS = ("anderson_farrell", "fractaldb")


@dataclass(frozen=True)
class SystemBank:
    """A set of IFS systems, padded to a common number of maps; unused maps are all zero."""

    A: np.ndarray  # (S, M, 2, 2) float64
    b: np.ndarray  # (S, M, 2) float64
    n_maps: np.ndarray  # (S,) int64
    labels: np.ndarray  # (S,) int64, the class of each system
    meta: dict = field(default_factory=dict, compare=False)  # family, sampler, ...: JSON-able

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return int(self.labels.max()) + 1 if len(self.labels) else 0

    @property
    def family(self) -> str | None:
        return self.meta.get("family")

    def system(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        n = int(self.n_maps[i])
        return self.A[i, :n], self.b[i, :n]

    def class_systems(self, c: int) -> np.ndarray:
        return np.flatnonzero(self.labels == c)

    def save(self, path: str | Path) -> Path:
        """Write atomically: a reader never sees a half-written bank."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, format_version=FORMAT_VERSION, A=self.A, b=self.b, n_maps=self.n_maps,
                 labels=self.labels, meta=np.array(json.dumps(self.meta, sort_keys=True)))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "SystemBank":
        with np.load(path, allow_pickle=False) as f:
            version = int(f["format_version"])
            if version not in READABLE_VERSIONS:
                raise ValueError(f"{path}: IFS bank format {version}, this code reads "
                                 f"{READABLE_VERSIONS}; regenerate it with the generate stage.")
            meta = json.loads(str(f["meta"])) if "meta" in f else {}
            return cls(A=f["A"], b=f["b"], n_maps=f["n_maps"], labels=f["labels"], meta=meta)


def rotation(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s], [s, c]])


def sample_singular_values(n: int, alpha: float, rng: np.random.Generator) -> np.ndarray:
    """Draw (s1, s2) for ``n`` maps with 0 <= s2 <= s1 <= 1 and sum(s1 + 2 s2) == alpha.

    Map by map, the contribution c = s1 + 2 s2 in [s1, 3 s1] is kept inside the interval that still
    lets the remaining maps (each contributing at most 3) reach the target exactly.
    """
    if not 0.0 <= alpha <= 3.0 * n:
        raise ValueError(f"sigma factor {alpha} unreachable with {n} maps (range 0..{3 * n})")
    out = np.zeros((n, 2))
    remaining = alpha
    for k in range(n):
        left = n - k - 1
        c_lo, c_hi = max(0.0, remaining - 3.0 * left), min(3.0, remaining)
        if left == 0:  # the last map takes exactly what remains
            s1 = rng.uniform(c_hi / 3.0, min(1.0, c_hi))
            s2 = (c_hi - s1) / 2.0
        else:
            s1 = rng.uniform(c_lo / 3.0, min(1.0, c_hi))
            s2 = rng.uniform(max(0.0, (c_lo - s1) / 2.0), min(s1, (c_hi - s1) / 2.0))
        out[k] = s1, s2
        remaining -= s1 + 2.0 * s2
    return out


def sample_system(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One Anderson & Farrell system: returns A (N, 2, 2) and b (N, 2)."""
    n = int(rng.integers(2, MAX_MAPS + 1))
    alpha = rng.uniform((5 + n) / 2, (6 + n) / 2)
    svs = sample_singular_values(n, alpha, rng)
    A = np.empty((n, 2, 2))
    for k, (s1, s2) in enumerate(svs):
        theta, phi = rng.uniform(-np.pi, np.pi, size=2)
        reflect = np.diag(rng.choice([-1.0, 1.0], size=2))
        A[k] = rotation(theta) @ np.diag([s1, s2]) @ rotation(phi) @ reflect
    b = rng.uniform(-1.0, 1.0, size=(n, 2))
    return A, b


def fill_ratio(A: np.ndarray, b: np.ndarray, size: int = 512, n_points: int = 100_000,
               seed: int = 0) -> float:
    """Fraction of pixels hit by the chaos game in a window fitted to the attractor's bounding box
    (FractalDB's "filling rate"); 0 for a walk that diverges."""
    from fractal_pretrain.fractals.render import fitted_fill_ratio  # render imports this module

    return fitted_fill_ratio(A, b, size, n_points, seed)


def sample_system_fractaldb(rng: np.random.Generator, fill_rate: float = 0.2,
                            maps: tuple[int, int] = (2, 7), fill_size: int = 512,
                            fill_points: int = 100_000, max_tries: int = 10_000):
    """FractalDB random search: all six parameters of each map in U(-1, 1), N uniform in ``maps``
    (inclusive), redrawn until the binary rendering fills >= ``fill_rate`` of the image."""
    for _ in range(max_tries):
        n = int(rng.integers(maps[0], maps[1] + 1))
        params = rng.uniform(-1.0, 1.0, size=(n, 6))
        A, b = params[:, :4].reshape(n, 2, 2), params[:, 4:].copy()
        if fill_ratio(A, b, fill_size, fill_points, int(rng.integers(2**62))) >= fill_rate:
            return A, b
    raise RuntimeError(f"no FractalDB system reached fill rate {fill_rate} in {max_tries} tries")


def sample_bank(num_classes: int, systems_per_class: int, seed: int,
                sampler: str = "anderson_farrell", meta: dict | None = None,
                **sampler_args) -> SystemBank:
    """Sample ``num_classes * systems_per_class`` systems; system j has its own stream
    (seed, j), so a bank's first systems do not change when more classes are added."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown IFS sampler {sampler!r}; choose from {SAMPLERS}")
    S = num_classes * systems_per_class
    systems = []
    for i in range(S):
        rng = np.random.default_rng([seed, 0x1F5, i])
        if sampler == "anderson_farrell":
            systems.append(sample_system(rng))
        else:
            systems.append(sample_system_fractaldb(rng, **sampler_args))
    width = max([MAX_MAPS] + [len(Ai) for Ai, _ in systems])
    A = np.zeros((S, width, 2, 2))
    b = np.zeros((S, width, 2))
    n_maps = np.zeros(S, dtype=np.int64)
    for i, (Ai, bi) in enumerate(systems):
        n = len(Ai)
        A[i, :n], b[i, :n], n_maps[i] = Ai, bi, n
    labels = np.repeat(np.arange(num_classes, dtype=np.int64), systems_per_class)
    meta = {"sampler": sampler, "seed": seed, **(meta or {})}
    return SystemBank(A=A, b=b, n_maps=n_maps, labels=labels, meta=meta)

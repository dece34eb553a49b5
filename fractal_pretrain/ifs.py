"""Iterated function systems: sampling, storage and the per-render jitter.

Sampling follows Anderson & Farrell, "Improving Fractal Pre-training" (WACV 2022), as used by
Ugwu et al. (CVPR-W 2024): N in {2, 3, 4} affine maps x -> A_k x + b_k with
A_k = R(theta) diag(s1, s2) R(phi) D, and singular values drawn so that the "sigma factor"
sum_k (s1_k + 2 s2_k) lands in ((5 + N) / 2, (6 + N) / 2). That constraint is what keeps the
attractors between dust and blobs.

Pure numpy. Every function takes an explicit ``np.random.Generator``; nothing here touches global
random state. Systems are stored as .npz (never pickle) with a format version.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1
MAX_MAPS = 4


@dataclass(frozen=True)
class SystemBank:
    """A set of IFS systems, padded to ``MAX_MAPS`` maps; unused maps have probability 0."""

    A: np.ndarray  # (S, MAX_MAPS, 2, 2) float64
    b: np.ndarray  # (S, MAX_MAPS, 2) float64
    n_maps: np.ndarray  # (S,) int64
    labels: np.ndarray  # (S,) int64, the class of each system

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return int(self.labels.max()) + 1 if len(self.labels) else 0

    def system(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        n = int(self.n_maps[i])
        return self.A[i, :n], self.b[i, :n]

    def save(self, path: str | Path) -> Path:
        """Write atomically: a reader never sees a half-written bank."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, format_version=FORMAT_VERSION, A=self.A, b=self.b, n_maps=self.n_maps,
                 labels=self.labels)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "SystemBank":
        with np.load(path, allow_pickle=False) as f:
            version = int(f["format_version"])
            if version != FORMAT_VERSION:
                raise ValueError(f"{path}: IFS bank format {version}, this code reads "
                                 f"{FORMAT_VERSION}; regenerate it with the generate stage.")
            return cls(A=f["A"], b=f["b"], n_maps=f["n_maps"], labels=f["labels"])


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


def map_probabilities(A: np.ndarray) -> np.ndarray:
    """p_k proportional to |det A_k|; a tiny floor keeps degenerate (s2 = 0) maps reachable."""
    det = np.abs(np.linalg.det(A)) + 1e-6
    return det / det.sum()


def sample_bank(num_classes: int, systems_per_class: int, seed: int) -> SystemBank:
    """Sample ``num_classes * systems_per_class`` systems; system j of class c has its own stream."""
    S = num_classes * systems_per_class
    A = np.zeros((S, MAX_MAPS, 2, 2))
    b = np.zeros((S, MAX_MAPS, 2))
    n_maps = np.zeros(S, dtype=np.int64)
    labels = np.repeat(np.arange(num_classes, dtype=np.int64), systems_per_class)
    for i in range(S):
        rng = np.random.default_rng([seed, 0x1F5, i])
        Ai, bi = sample_system(rng)
        n = len(Ai)
        A[i, :n], b[i, :n], n_maps[i] = Ai, bi, n
    return SystemBank(A=A, b=b, n_maps=n_maps, labels=labels)


def jitter(A: np.ndarray, b: np.ndarray, rng: np.random.Generator,
           low: float = 0.8, high: float = 1.1) -> tuple[np.ndarray, np.ndarray]:
    """Scale one random map's parameters by U(low, high); keep the original if that map would
    stop being a contraction (largest singular value >= 1)."""
    k = int(rng.integers(len(A)))
    factor = rng.uniform(low, high)
    Ak = A[k] * factor
    if np.linalg.norm(Ak, ord=2) >= 1.0:
        return A, b
    A, b = A.copy(), b.copy()
    A[k], b[k] = Ak, b[k] * factor
    return A, b

"""The validation anomalies' fractal textures, and the training anomalies' (GLASS), share no IFS system
with any pre-training bank that the shipped configs can sample (issue 22: format 1 of the textures
was the seed-0 bank itself), nor with each other."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from evaluation.datasets.textures import TEXTURE_STREAM, TRAINING_SEED, VALIDATION_SEED, texture_system
from fractal_pretrain.fractals.ifs import MAX_MAPS, sample_bank, sample_system
from tests.conftest import CONF_DIR

TEXTURES = 64  # write_fractal_textures' default count (the pipeline's)
SEEDS = range(10)
FRACTAL_KEYS = ("fractal", "fractal.num_classes", "fractal.systems_per_class", "fractal.sampler")


def shipped_recipes() -> set[tuple[str, int, int]]:
    """(sampler, number of systems, seed) of every bank the shipped configs sample: each
    conf/fractal/*.yaml on its own, and each experiment with every sweep value of its fractal keys;
    seeds 0-9 and the experiments' own sweep seeds. Composed by Hydra, as run.py composes them."""
    recipes = set()

    def add(cfg, seeds) -> None:
        f = cfg.fractal
        for seed in seeds:
            recipes.add((f.sampler, int(f.num_classes) * int(f.systems_per_class), int(seed)))

    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        for option in sorted(Path(CONF_DIR, "fractal").glob("*.yaml")):
            add(compose("config", overrides=["~local", f"fractal={option.stem}"]), SEEDS)
        for experiment in sorted(Path(CONF_DIR, "experiment").glob("*.yaml")):
            base = [f"+experiment={experiment.stem}", "~local"]
            sweep = compose("config", overrides=base, return_hydra_config=True).hydra.sweeper.params or {}
            seeds = {*SEEDS, *(int(s) for s in str(sweep.get("seed", "0")).split(","))}
            swept = {k: str(v).split(",") for k, v in sweep.items() if k in FRACTAL_KEYS}
            for values in itertools.product(*swept.values()):
                overrides = [f"{k}={v.strip()}" for k, v in zip(swept, values)]
                add(compose("config", overrides=[*base, *overrides]), seeds)
    return recipes


def bank_streams(recipes, limit: int | None = None) -> dict[tuple[str, int], int]:
    """(sampler, seed) -> the most systems any recipe draws. A bank's system i comes from its own
    stream (seed, i) (``sample_bank``), so every smaller bank of that sampler and seed is a prefix."""
    longest: dict[tuple[str, int], int] = {}
    for sampler, n, seed in recipes:
        if limit is None or n <= limit:
            longest[sampler, seed] = max(longest.get((sampler, seed), 0), n)
    return longest


TEXTURE_SEEDS = (VALIDATION_SEED, TRAINING_SEED)


def texture_systems(draw=None) -> dict[tuple, int]:
    """Every texture system (both sets unless ``draw`` gives one), keyed by its parameters."""
    draws = [draw] if draw else [lambda i, s=s: texture_system(i, s) for s in TEXTURE_SEEDS]
    return {_key(*d(i)): i for d in draws for i in range(TEXTURES)}


def test_training_and_validation_textures_share_no_system():
    validation = texture_systems(lambda i: texture_system(i, VALIDATION_SEED))
    training = texture_systems(lambda i: texture_system(i, TRAINING_SEED))
    assert len(validation) == len(training) == TEXTURES and not validation.keys() & training.keys()


def _key(A: np.ndarray, b: np.ndarray) -> tuple:
    return A.shape, A.tobytes(), b.tobytes()


@pytest.fixture(scope="module")
def recipes():
    return shipped_recipes()


def test_the_enumeration_reaches_every_shipped_recipe(recipes):
    sizes = {n for _, n, _ in recipes}
    assert {10, 16, 32, 64, 50, 50_000} <= sizes  # fractals, recipe_builtin's sweep, multi_formula, study
    assert {s for _, _, s in recipes} >= set(SEEDS) and {sampler for sampler, _, _ in recipes} == {"anderson_farrell"}


def test_no_texture_system_is_a_system_of_a_built_in_scale_bank(recipes):
    """Every recipe of the CPU-sized experiments (up to 64 classes x 5 systems) and every fractal
    option, seeds 0-9: their banks, sampled by ``sample_bank`` as the generate stage does, hold none
    of the 64 texture systems. The same check finds the old textures (the seed-0 bank's streams)."""
    textures = texture_systems()
    assert len(textures) == 2 * TEXTURES  # 64 distinct systems per set
    for (sampler, seed), n in bank_streams(recipes, limit=1000).items():
        bank = sample_bank(n, 1, seed=seed, sampler=sampler)
        shared = [i for i in range(n) if _key(*bank.system(i)) in textures]
        assert not shared, f"bank {sampler} seed {seed}: systems {shared} are validation textures"
    old = texture_systems(lambda i: sample_bank(TEXTURES, 1, seed=0).system(i))
    seed0 = sample_bank(64, 1, seed=0)
    assert sum(_key(*seed0.system(i)) in old for i in range(64)) == 64  # the check sees a shared system


@pytest.mark.slow
def test_no_texture_system_is_a_system_of_a_study_scale_bank(recipes):
    """The study's 1000 classes x 50 systems, seeds 0-9 (500k systems). A system equal to a texture's
    would begin with the same draws (its number of maps and sigma factor), so only streams whose
    first two draws match a texture's are sampled in full."""
    def head(rng: np.random.Generator) -> tuple[int, float]:  # sample_system's first two draws
        return int(rng.integers(2, MAX_MAPS + 1)), float(rng.random())

    def bank_stream(seed: int, i: int) -> np.random.Generator:  # sample_bank's stream i
        return np.random.default_rng([seed, 0x1F5, i])

    textures = texture_systems()
    heads = {head(np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(TEXTURE_STREAM, i))))
             for seed in TEXTURE_SEEDS for i in range(TEXTURES)}
    candidates = 0
    for (sampler, seed), n in bank_streams(recipes).items():
        for i in range(n):
            if head(bank_stream(seed, i)) in heads:
                candidates += 1
                assert _key(*sample_system(bank_stream(seed, i))) not in textures, \
                    f"{sampler} seed {seed} system {i} is a validation texture"
    assert candidates == 0  # not even the first draws of a bank stream match a texture's

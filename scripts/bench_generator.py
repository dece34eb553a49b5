"""Fractal generator throughput: one JSON line per setting (a benchmark, not a test).

    python scripts/bench_generator.py                 # all settings, project numba cache
    python scripts/bench_generator.py --cold          # jit_s is a true compile (empty cache)
    python scripts/bench_generator.py --only grey256 default --repeats 5

Keys: ``setting``; ``img_per_s_1core`` (median over ``--repeats`` timed loops in this process,
after warm-up, on the process's CPU time, so another tenant on the core does not count; the
wall-clock figure is ``img_per_s_1core_wall``); ``img_per_s_all_cores`` (one spawned process per core, each warmed before the
clock starts, i.e. what DataLoader workers get); ``jit_s`` (first render in this process: a compile
with ``--cold`` or an empty cache, else loading the cache); ``numba_cache`` (hit or miss for that
first render); ``worker_first_render_s`` (slowest worker's first render after imports: workers load
the cache, they do not compile);
``loadavg`` (the 1-minute load average before the setting ran: another process on the other core
lowers the all-cores figure). Images are rendered through the Dataset layer (key derivation
included, tensor conversion excluded) from IFS banks of 100 classes.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import tempfile
import time

SETTINGS = {
    # name: (family, systems_per_class, render config, extra family config)
    "grey256": ("fractals", 1, dict(size=256, n_points=100_000, color=False, patch=False, blur_p=0.0), {}),
    "default": ("fractals", 1, dict(size=256, n_points=100_000, color=True, patch=True, blur_p=0.5), {}),
    "study512": ("fractals", 1, dict(size=512, n_points=100_000, color=True, patch=False, blur_p=0.5), {}),
    "background224": ("fractals", 1, dict(size=224, n_points=100_000, color=True, patch=False,
                                          blur_p=0.0, background=True), {}),
    # the study's Multi-Formula: 4-10 tiles of 100k points at 256 px on a 512 canvas
    "multi_formula": ("multi_formula", 5, dict(size=512, n_points=100_000, color=True, patch=True,
                                               blur_p=0.5), {}),
    "ofdb": ("ofdb", 1, dict(size=256, n_points=100_000, color=True, patch=True, flip=False),
             {"augment": {"enabled": True}}),
}


def make(name: str):
    import torch

    torch.set_num_threads(1)  # as in a DataLoader worker; the ofdb augmentation runs in torch
    from fractal_pretrain.fractals.ifs import sample_bank
    from fractal_pretrain.fractals.render import RenderConfig
    from fractal_pretrain.datasets import make_dataset

    family, spc, render, extra = SETTINGS[name]
    bank = sample_bank(100, spc, seed=0, meta={"family": family})
    return make_dataset(bank, RenderConfig(**render), seed=0, renders_per_system=1000, family=family, **extra)


def render_many(data, start: int, n: int, clock=time.perf_counter) -> float:
    t = clock()
    for i in range(start, start + n):
        data.render_uint8(i * 7919 % len(data))
    return clock() - t


_worker_data = None


def _worker_init(name: str, cache_dir: str | None):
    """Build the dataset (imports included) and time the first render alone."""
    global _worker_data
    if cache_dir:
        os.environ["NUMBA_CACHE_DIR"] = cache_dir
    _worker_data = make(name)
    return render_many(_worker_data, 0, 1)


def _worker_time(args) -> float:
    start, n = args
    return render_many(_worker_data, start, n)


def bench(name: str, n: int, repeats: int, cores: int, cache_dir: str | None) -> dict:
    from fractal_pretrain.fractals import render as R

    load = os.getloadavg()[0]
    _misses_before = sum(R._render_kernel.stats.cache_misses.values())
    data = make(name)
    t = time.perf_counter()
    render_many(data, 0, 1)
    jit_s = time.perf_counter() - t
    misses = sum(R._render_kernel.stats.cache_misses.values()) - _misses_before
    render_many(data, 1, max(n // 10, 3))  # warm caches and branch predictors
    # CPU time of this process: on a shared machine, wall time also counts the other tenants
    one = [n / render_many(data, 1000 + r * n, n, time.process_time) for r in range(repeats)]
    one_wall = [n / render_many(data, 5000 + r * n, n) for r in range(repeats)]

    ctx = mp.get_context("spawn")  # what a DataLoader on macOS/Windows or with CUDA uses: the hard case
    with ctx.Pool(cores) as pool:
        starts = pool.starmap(_worker_init, [(name, cache_dir)] * cores, chunksize=1)
        per = n
        walls = []
        for r in range(repeats):
            t = time.perf_counter()
            pool.map(_worker_time, [(50_000 + (r * cores + c) * per, per) for c in range(cores)], chunksize=1)
            walls.append(time.perf_counter() - t)
    return {"setting": name, "img_per_s_1core": round(statistics.median(one), 1),
            "img_per_s_1core_wall": round(statistics.median(one_wall), 1),
            "img_per_s_all_cores": round(cores * per / statistics.median(walls), 1), "cores": cores,
            "jit_s": round(jit_s, 3), "numba_cache": "miss" if misses else "hit",
            "worker_first_render_s": round(max(starts), 3), "repeats": repeats, "images_per_repeat": n,
            "loadavg": round(load, 2), "runs_1core": [round(v, 1) for v in one]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", choices=list(SETTINGS), help="settings to run (default: all)")
    ap.add_argument("--images", type=int, default=300, help="images per timed loop")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cores", type=int, default=os.cpu_count())
    ap.add_argument("--cold", action="store_true", help="compile into an empty cache: jit_s is a real compile")
    args = ap.parse_args()
    cache_dir = None
    if args.cold:
        cache_dir = tempfile.mkdtemp(prefix="numba-cold-")
        os.environ["NUMBA_CACHE_DIR"] = cache_dir  # before fractal_pretrain.fractals.render imports numba
    for name in args.only or SETTINGS:
        n = args.images if SETTINGS[name][0] == "fractals" else max(args.images // 4, 20)
        print(json.dumps(bench(name, n, args.repeats, args.cores, cache_dir)), flush=True)


if __name__ == "__main__":
    main()

"""Pre-training throughput: the pipeline's own training img/s next to the fastest bare PyTorch loop
of the same model, input size and batch, in one run.

    python scripts/bench_pretrain.py                         # the main job (compare_builtin), 80 steps
    python scripts/bench_pretrain.py --repeats 3 --malloc default,mmap1m   # allocator settings
    python scripts/bench_pretrain.py --experiment fractal_patchcore backbone.arch=resnet18

Every figure comes from a fresh process (the allocator's state and torch's thread pools start
clean, and ``--malloc`` sets glibc's variables before start-up, where glibc reads them):

* ``bare``: forward, backward and SGD step (the job's optimiser settings) of the job's
  ``backbone.arch`` on one batch of fractal renders already in memory; no Lightning, no data
  cost. Twice: the default (NCHW) memory format and ``channels_last``. The fastest is the target.
* ``pipeline``: in both memory formats (``pretrain.memory_format``), the pretrain stage itself (``pipeline.job.run_pipeline`` with
  ``stages=[generate,pretrain]`` on the experiment's composed config, Hydra's compose API): the
  LightningModule, the fractal datamodule rendering every batch, the Trainer with the callbacks,
  the MLflow logger and system metrics as the pipeline configures them, into a temporary MLflow
  store. Its figure is the one the stage logs (``train_img_per_s``: steps x batch / the wall time
  of ``trainer.fit``, sanity check and checkpoints included), and its CPU time
  (``train_cpu_seconds``).
* ``loader``: the fractal DataLoader alone (rendering, no training).

The machine may be shared: next to wall-clock img/s each row prints the CPU seconds the process
used (user + sys, all threads) and images per CPU-second, and the load average before it ran. With
``--repeats`` the variants run interleaved and the table shows medians. Trailing ``key=value``
arguments are Hydra overrides of the experiment's config.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# glibc allocator settings a variant can start with (read by glibc at process start-up)
MALLOC = {
    # the project's own (pipeline.allocator.keep_freed_memory, set by run.py; any MALLOC_* below turns it off)
    "default": {},
    # the project's former setting for every process (run.py, Makefile): each temporary above 1 MB
    # is a fresh mmap whose pages fault in one by one
    "mmap1m": {"MALLOC_MMAP_THRESHOLD_": "1048576"},
    # a fixed threshold at glibc's own dynamic ceiling (32 MB) and a heap top that is not trimmed
    # back under 256 MB: what glibc's dynamic threshold drifts towards, from the first step on
    "large": {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "268435456"},
}
MALLOC_VARS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_ARENA_MAX")


def compose(experiment: str | None, overrides: list[str], out: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import run  # noqa: F401  (registers the resolvers and structured configs, as the entry point does)

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose("config", overrides=[*([f"+experiment={experiment}"] if experiment else []),
                                                  "stages=[generate,pretrain]", f"paths.output_dir={out}/job",
                                                  f"paths.outputs_dir={out}", *overrides])


def first_batch(cfg, batch: int):
    """One batch of the training renders, as the pipeline's loader makes it (and the loader's rate)."""
    from torch.utils.data import DataLoader

    from fractal_pretrain.datamodule import EpochSampler
    from fractal_pretrain.datasets import TRAIN
    from pipeline.generate import generate_spec, make_source

    p = cfg.pretrain
    source = make_source(generate_spec(cfg))  # fractals, or pretrain/source=...
    dataset = source.images(cfg.seed, p.renders_per_system, TRAIN, list(p.mean), list(p.std))
    loader = iter(DataLoader(dataset, batch_size=batch, drop_last=True, sampler=EpochSampler(len(dataset), cfg.seed)))
    x, y = next(loader)  # numba's first call compiles or loads its cache
    start, cpu = time.perf_counter(), time.process_time()
    n = 0
    for _ in range(5):
        x, y = next(loader)
        n += len(x)
    return x, y, source.num_classes, {"img_per_s": n / (time.perf_counter() - start), "cpu_s": time.process_time() - cpu,
                                    "images": n}


def child_bare(cfg, layout: str, steps: int) -> dict:
    import hydra
    import timm
    import torch

    x, y, num_classes, _ = first_batch(cfg, cfg.pretrain.batch_size)
    if cfg.pretrain.crop_size:
        from fractal_pretrain.datamodule import random_crop
        x = random_crop(x, cfg.pretrain.crop_size)
    torch.manual_seed(cfg.seed)
    model = timm.create_model(cfg.backbone.arch, pretrained=False, num_classes=num_classes)
    opt = hydra.utils.instantiate(cfg.optim.optimizer)(model.parameters())
    if layout == "channels_last":
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)

    def step():
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {"img_per_s": steps * len(x) / wall, "cpu_s": cpu, "images": steps * len(x)}


def child_pipeline(cfg) -> dict:
    import mlflow

    from pipeline.job import run_pipeline

    run_pipeline(cfg)
    run = mlflow.search_runs(filter_string="tags.stage = 'pretrain'", output_format="list")[0]
    m = run.data.metrics
    images = m["global_step"] * cfg.pretrain.batch_size
    return {"img_per_s": m["train_img_per_s"], "cpu_s": m.get("train_cpu_seconds", float("nan")), "images": images,
            "data_wait_fraction": m["data_wait_fraction"]}


def child_loader(cfg) -> dict:
    return first_batch(cfg, cfg.pretrain.batch_size)[3]


def machine() -> dict:
    import torch

    cpu_model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"cpu": cpu_model, "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
            "python": platform.python_version(),
            "env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", *MALLOC_VARS) if k in os.environ}}


def run_child(args, part: str, layout: str, malloc: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in MALLOC_VARS}
    env.update(MALLOC[malloc])
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    cmd = [sys.executable, __file__, "--child", part, "--layout", layout, "--steps", str(args.steps),
           "--pipeline-steps", str(args.pipeline_steps), *(["--experiment", args.experiment] if args.experiment else []),
           *args.overrides, *([f"pretrain.memory_format={layout}"] if part == "pipeline" else [])]
    load = os.getloadavg()[0]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        sys.exit(f"{part} ({layout}, {malloc}) failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return {**json.loads(lines[-1]), "load_before": load}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="compare_builtin", help="the experiment whose pre-training is measured")
    parser.add_argument("--steps", type=int, default=30, help="timed bare-loop steps (after 3 warm-up)")
    parser.add_argument("--pipeline-steps", type=int, default=80, help="pretrain.max_steps of the pipeline run")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved repeats of every variant (medians shown)")
    parser.add_argument("--malloc", default="default", help=f"comma-separated allocator settings from {list(MALLOC)}")
    parser.add_argument("--parts", default="bare,pipeline,loader", help="which of bare, pipeline, loader to run")
    parser.add_argument("--json", action="store_true", help="also print every measurement as a JSON line")
    parser.add_argument("--child", choices=["bare", "pipeline", "loader"], help=argparse.SUPPRESS)
    parser.add_argument("--layout", default="contiguous", help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. backbone.arch=resnet18")
    args = parser.parse_args()

    if args.child:
        os.environ.setdefault("TQDM_DISABLE", "1")
        with tempfile.TemporaryDirectory(prefix="bench_pretrain_") as out:
            cfg = compose(args.experiment, [f"pretrain.max_steps={args.pipeline_steps}", *args.overrides], out)
            result = {"bare": lambda: child_bare(cfg, args.layout, args.steps), "pipeline": lambda: child_pipeline(cfg),
                      "loader": lambda: child_loader(cfg)}[args.child]()
            result.update(machine=machine(), arch=cfg.backbone.arch, batch=cfg.pretrain.batch_size,
                          input=cfg.pretrain.crop_size or cfg.fractal.render.size, memory_format=cfg.pretrain.get("memory_format"))
        print(json.dumps(result))
        return

    mallocs = args.malloc.split(",")
    unknown = [m for m in mallocs if m not in MALLOC]
    if unknown:
        sys.exit(f"unknown --malloc {unknown}; choose from {list(MALLOC)}")
    parts = args.parts.split(",")
    variants = [(part, layout, malloc) for malloc in mallocs for part, layout in
                [("bare", "contiguous"), ("bare", "channels_last"), ("pipeline", "contiguous"),
                 ("pipeline", "channels_last"), ("loader", "-")] if part in parts]
    results: dict[tuple, list[dict]] = {v: [] for v in variants}
    for _ in range(args.repeats):
        for v in variants:
            r = run_child(args, *v)
            results[v].append(r)
            if args.json:
                print(json.dumps({"part": v[0], "layout": v[1], "malloc": v[2], **r}), flush=True)

    first = next(iter(results.values()))[0]
    m = first["machine"]
    print(f"machine: {m['cpu']}, {m['cores']} cores; torch {m['torch']}, {m['threads']} threads, "
          f"{m['interop_threads']} interop; python {m['python']}" + (f"; env {m['env']}" if m["env"] else ""))
    print(f"model: {first['arch']}, {first['input']} px, batch {first['batch']}; experiment {args.experiment}; "
          f"bare loop {args.steps} steps, pipeline {args.pipeline_steps} steps; {args.repeats} repeat(s), medians\n")
    print(f"{'part':9} {'layout':14} {'malloc':8} {'img/s':>7} {'img/cpu-s':>9} {'cpu-s':>6} {'load':>5}  runs (img/s)")
    med = {}
    for (part, layout, malloc), rs in results.items():
        rate = statistics.median(r["img_per_s"] for r in rs)
        per_cpu = statistics.median(r["images"] / r["cpu_s"] for r in rs)
        med[part, layout, malloc] = (rate, per_cpu)
        print(f"{part:9} {layout:14} {malloc:8} {rate:7.1f} {per_cpu:9.1f} {statistics.median(r['cpu_s'] for r in rs):6.1f} "
              f"{statistics.median(r['load_before'] for r in rs):5.2f}  {', '.join(str(round(r['img_per_s'])) for r in rs)}")
    for malloc in mallocs:
        bare = [med[k] for k in med if k[0] == "bare" and k[2] == malloc]
        pipes = [med[k] for k in med if k[0] == "pipeline" and k[2] == malloc]
        if pipes and bare:
            print(f"\n{malloc}: fastest pipeline / fastest bare loop = {max(pipes)[0] / max(bare)[0]:.2f} (img/s), "
                  f"{max(p[1] for p in pipes) / max(b[1] for b in bare):.2f} (img per CPU-second)")


if __name__ == "__main__":
    main()

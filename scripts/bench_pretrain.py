"""Pre-training throughput: training compute vs the fractal data loader, side by side.

    python scripts/bench_pretrain.py                                   # resnet18, 64 px, CPU
    python scripts/bench_pretrain.py --arch wide_resnet50_2 --device cuda --precision bf16 \
        --batch 256 --workers 8 fractal.render.size=256 pretrain.crop_size=224

Prints one JSON line: ``train_img_per_s`` (forward + backward + SGD step on a batch already on the
device, so no data cost), ``loader_img_per_s`` (the project's DataLoader rendering fractals on the
fly, no training), and ``binding`` (whichever is slower sets the pace of real pre-training).
Trailing ``key=value`` arguments are Hydra overrides of the project's config (fractal family,
render size, points, ...).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="timed training steps (after 3 warm-up)")
    parser.add_argument("--batches", type=int, default=20, help="timed loader batches (after 2 warm-up)")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=["32", "bf16"], default="32")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. fractal.render.size=128")
    args = parser.parse_args()

    import torch
    from hydra import compose, initialize_config_dir
    from torch.utils.data import DataLoader

    import run  # noqa: F401  (registers the config resolvers)
    from fractals.ifs import sample_bank
    from pipeline.generate import dataset_args
    from pretraining.data import TRAIN, EpochSampler, make_dataset, random_crop
    from pretraining.model import FractalClassifier

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"backbone.arch={args.arch}", "paths.output_dir=/tmp", *args.overrides])
    f, p = cfg.fractal, cfg.pretrain
    bank = sample_bank(f.num_classes, f.systems_per_class, seed=cfg.seed)
    dataset = make_dataset(bank, seed=cfg.seed, renders_per_system=p.renders_per_system, stream=TRAIN,
                           mean=list(p.mean), std=list(p.std), **dataset_args(f))
    loader = DataLoader(dataset, batch_size=args.batch, num_workers=args.workers, drop_last=True,
                        sampler=EpochSampler(len(dataset), cfg.seed), persistent_workers=args.workers > 0)

    # the data loader alone
    batches = iter(loader)
    for _ in range(2):
        x, y = next(batches)
    start = time.perf_counter()
    timed = 0
    for _ in range(args.batches):
        try:
            x, y = next(batches)
        except StopIteration:
            batches = iter(loader)
            x, y = next(batches)
        timed += len(x)
    loader_rate = timed / (time.perf_counter() - start)

    # training compute alone, on one batch already on the device
    device = torch.device(args.device)
    model = FractalClassifier(args.arch, bank.num_classes, optimizer=lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9)).model.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = x.to(device), y.to(device)
    if p.crop_size:
        x = random_crop(x, p.crop_size)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")

    def step():
        with autocast:
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    train_rate = args.steps * len(x) / (time.perf_counter() - start)

    print(json.dumps({
        "arch": args.arch, "family": f.family, "render_size": f.render.size, "input_size": int(x.shape[-1]),
        "n_points": f.render.n_points, "batch": args.batch, "device": args.device, "precision": args.precision,
        "workers": args.workers, "torch_threads": torch.get_num_threads(),
        "train_img_per_s": round(train_rate, 1), "loader_img_per_s": round(loader_rate, 1),
        "binding": "data" if loader_rate < train_rate else "compute"}))


if __name__ == "__main__":
    main()

"""SimCLR's NT-Xent under data-parallel training: negatives from the global batch, so that the loss and
the gradient on a batch split over processes are the one-process loss and gradient of the whole batch
(two CPU processes, gloo: the same collectives NCCL runs on GPUs)."""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from fractal_pretrain.model import FractalSimCLR, nt_xent

WORLD, PAIRS, WIDTH, TEMPERATURE = 2, 6, 16, 0.5


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Two views of PAIRS items, whole batch; process r takes items r*PAIRS/WORLD..."""
    g = torch.Generator().manual_seed(0)
    x1 = torch.randn(PAIRS, 32, generator=g)
    return x1, x1 + 0.3 * torch.randn(PAIRS, 32, generator=g)


def projection() -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(32, WIDTH)


def one_process() -> tuple[float, torch.Tensor, float]:
    """Loss and weight gradient of the whole batch in one process; and the mean over processes of the
    per-process losses with local negatives only (what DDP computed before global negatives)."""
    head, (x1, x2) = projection(), batch()
    loss = nt_xent(head(x1), head(x2), TEMPERATURE)
    loss.backward()
    local = [nt_xent(head(a), head(b), TEMPERATURE).item() for a, b in zip(x1.chunk(WORLD), x2.chunk(WORLD))]
    return loss.item(), head.weight.grad.clone(), sum(local) / WORLD


@contextmanager
def forkable():
    """One intra-op thread while processes are forked: the children inherit the setting and never
    enter the parent's OpenMP thread pool, whose threads a fork does not copy (libgomp is not
    fork-safe: after earlier tests had used the pool, a child's first matmul waited forever)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _ddp_worker(rank: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        head = DistributedDataParallel(projection())  # averages the gradients over processes, as in training
        x1, x2 = (x.chunk(WORLD)[rank] for x in batch())
        gather = lambda t: torch.stack(dist.nn.functional.all_gather(t))  # noqa: E731 (gradients flow back)
        loss = nt_xent(head(x1), head(x2), TEMPERATURE, gather, rank)
        loss.backward()
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)  # what Lightning's sync_dist logs: the mean over processes
        torch.save((mean_loss.item() / WORLD, head.module.weight.grad), f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_nt_xent_over_two_processes_is_the_one_process_loss_and_gradient_of_the_whole_batch(tmp_path):
    # fork: the children start in milliseconds instead of importing torch, Lightning and timm again
    with forkable():
        mp.start_processes(_ddp_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=WORLD,
                           start_method="fork")
    loss, grad, local_negatives = one_process()
    for rank in range(WORLD):
        ddp_loss, ddp_grad = torch.load(tmp_path / f"rank{rank}.pt")
        assert ddp_loss == pytest.approx(loss, abs=1e-6)
        torch.testing.assert_close(ddp_grad, grad, rtol=1e-5, atol=1e-7)
    # the baseline: with each process's negatives only, the loss depends on the process count
    assert abs(local_negatives - loss) > 0.1, (local_negatives, loss)


class _Pairs(torch.utils.data.Dataset):
    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.x = torch.rand(2, 8, 3, 32, 32, generator=g)

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i):
        return (self.x[0, i], self.x[1, i]), 0


def _simclr_step(devices: int) -> tuple[dict, float]:
    """One plain SGD step (lr 1, no momentum: the weights move by exactly the gradient) of
    FractalSimCLR on 8 pairs; the global batch of 8 split over ``devices`` processes. A LayerNorm
    backbone (timm's test_vit): batch norm without sync would differ across process counts anyway."""
    import lightning as L

    torch.manual_seed(0)
    module = FractalSimCLR("test_vit", optimizer=partial(torch.optim.SGD, lr=1.0), projection_dim=16)
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy="ddp_fork" if devices > 1 else "auto",
                        max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    loader = torch.utils.data.DataLoader(_Pairs(), batch_size=8 // devices)  # DDP shards it by rank
    with forkable():
        trainer.fit(module, loader)
    return {k: v.clone() for k, v in module.state_dict().items()}, float(trainer.callback_metrics["train_loss_step"])


@pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no `val_dataloader`")  # one step, no validation
def test_fractal_simclr_trained_on_two_processes_takes_the_one_process_step():
    """The module under Lightning's DDP (2 CPU processes; ddp_fork: ddp_spawn's launcher without
    re-importing everything, 5 s instead of 40): the logged loss and the weights after one step equal
    one process's on the whole batch. Checked to fail with per-process negatives (loss 1.95 vs
    2.71) and with gathering that does not carry gradients back (the weights differ)."""
    single, single_loss = _simclr_step(1)
    ddp, ddp_loss = _simclr_step(2)
    assert ddp_loss == pytest.approx(single_loss, abs=1e-5)
    for key, value in single.items():
        torch.testing.assert_close(ddp[key], value, rtol=1e-5, atol=1e-6, msg=key)

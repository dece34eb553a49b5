"""The torch batch renderer (the GPU path), run on CPU: same distribution as the numba renderer on
the same systems and keys, reproducible, independent of the batch it is in."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fractal_pretrain.fractals.ifs import sample_bank
from fractal_pretrain.fractals.render import RenderConfig, render_key
from fractal_pretrain.fractals.render_torch import hash32, render_batch
from fractal_pretrain.datasets import GpuBatchRenderer, RenderKeys, make_dataset


def lowbias32(x: int) -> int:
    x &= 0xFFFFFFFF
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def test_hash_matches_the_reference_and_avoids_overflow():
    xs = [0, 1, 2, 0xFFFFFFFF, 0x12345678, 2**31, 987654321]
    assert hash32(torch.tensor(xs)).tolist() == [lowbias32(x) for x in xs]
    bits = hash32(torch.arange(4096)) >> 22  # the top 10 bits pick maps: roughly uniform
    counts = torch.bincount(bits, minlength=1024)
    assert counts.max() <= 16 and (counts > 0).sum() > 900


@pytest.mark.parametrize("cfg", [
    RenderConfig(size=48, n_points=20_000, color=False, patch=False, blur_p=0.0),
    RenderConfig(size=48, n_points=20_000, color=True, patch=True, blur_p=0.5),
], ids=["grey", "default"])
def test_same_pixel_statistics_as_the_cpu_renderer(cfg):
    bank = sample_bank(64, 1, seed=1)
    systems = [bank.system(i) for i in range(64)]
    keys = [7 + 13 * i for i in range(64)]
    g = render_batch(systems, keys, cfg, walkers=256).permute(0, 2, 3, 1).numpy().astype(float)
    c = np.stack([render_key(*s, k, cfg).reshape(48, 48, -1) for s, k in zip(systems, keys)]).astype(float)
    assert g.shape == c.shape
    # the same draws: same window, flip and colour; only the walk's noise differs
    assert g.mean() == pytest.approx(c.mean(), rel=0.08)
    lit_c, lit_g = c.max(3) > 0, g.max(3) > 0
    assert lit_g.mean() == pytest.approx(lit_c.mean(), rel=0.08)
    iou = (lit_c & lit_g).sum((1, 2)) / np.maximum((lit_c | lit_g).sum((1, 2)), 1)
    assert np.median(iou) > 0.75
    assert np.corrcoef(c.mean((1, 2, 3)), g.mean((1, 2, 3)))[0, 1] > 0.9
    qc, qg = np.percentile(c[c > 0], [25, 50, 75, 95]), np.percentile(g[g > 0], [25, 50, 75, 95])
    np.testing.assert_allclose(qg, qc, rtol=0.15, atol=3)
    if cfg.blur_p == 0:  # the reference's rule: every lit pixel has the render's V, as on the CPU
        vg, vc = g.max(3), c.max(3)
        for i in range(len(keys)):
            if lit_g[i].any():
                assert vg[i][lit_g[i]].min() == vg[i][lit_g[i]].max() == vc[i][lit_c[i]].max() >= 127


def test_reproducible_and_independent_of_the_batch():
    bank = sample_bank(4, 1, seed=0)
    cfg = RenderConfig(size=32, n_points=5000, patch=True, blur_p=0.5)
    systems, keys = [bank.system(i) for i in range(4)], [11, 2**63 + 5, 3, 2**64 - 1]
    a = render_batch(systems, keys, cfg, walkers=128)
    assert torch.equal(a, render_batch(systems, keys, cfg, walkers=128))
    assert torch.equal(a[2:3], render_batch(systems[2:3], keys[2:3], cfg, walkers=128))
    assert not torch.equal(a[0], render_batch(systems[:1], [12], cfg, walkers=128)[0])


def test_render_keys_dataset_and_batch_renderer():
    bank = sample_bank(3, 2, seed=0)
    data = make_dataset(bank, RenderConfig(size=32, n_points=5000), seed=0, renders_per_system=2, renderer="torch")
    assert isinstance(data, RenderKeys) and len(data) == 12
    batch = torch.utils.data.default_collate([data[k] for k in (0, 5, 11, 12 + 3)])
    x, y = GpuBatchRenderer(data.images, walkers=64)(batch, "cpu")
    assert x.shape == (4, 3, 32, 32) and y.tolist() == [0, 1, 2, 0]
    # the same key as the CPU dataset: identical per-render draws, so similar images
    cpu = data.images.render_uint8(5)[0].astype(float)
    gpu = (x[1] * 0.5 + 0.2).clamp(0, 1).permute(1, 2, 0).numpy() * 255
    assert abs(cpu.mean() - gpu.mean()) < 0.35 * max(cpu.mean(), 1)

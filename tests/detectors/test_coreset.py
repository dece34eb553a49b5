"""detectors.coreset's k-center greedy against anomalib's own KCenterGreedy: the same indices, bit for
bit, and the same random numbers drawn; and the project's PatchCore builds the same memory bank."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from detectors.coreset import _dense, _pruned, k_center_greedy


def clustered(n: int, dim: int, seed: int, rank: int = 6, duplicates: int = 0) -> torch.Tensor:
    """Patch-like features: a few clusters on a low-dimensional subspace, plus noise (where the
    pruning bounds rule out most distances), and optionally exact duplicates (ties)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(12, rank, generator=g) * 4
    z = centres[torch.randint(0, 12, (n,), generator=g)] + torch.randn(n, rank, generator=g)
    x = torch.relu(z @ torch.randn(rank, dim, generator=g) + 0.05 * torch.randn(n, dim, generator=g))
    if duplicates:
        x[-duplicates:] = x[:duplicates]
    return x


def anomalib_and_ours(embedding: torch.Tensor, ratio: float, seed: int):
    """Both selections from the same global random state, and the next draw of each stream after."""
    from anomalib.models.components.sampling import KCenterGreedy

    results = []
    for select in (lambda: KCenterGreedy(embedding, ratio).select_coreset_idxs(),
                   lambda: k_center_greedy(embedding, ratio)):
        torch.manual_seed(seed)
        np.random.seed(seed)
        results.append((select(), torch.rand(1).item(), np.random.rand()))
    return results


@pytest.mark.parametrize(("n", "dim", "ratio", "seed"), [
    (3000, 152, 0.1, 0),  # PatchCore's default ratio, lite0's layer widths (40 + 112)
    (2000, 64, 0.15, 1),
    (2500, 200, 0.01, 2),
    (1000, 24, 0.3, 3),
])
def test_same_indices_and_random_draws_as_anomalib(n, dim, ratio, seed):
    x = clustered(n, dim, seed, duplicates=n // 20)
    (theirs, *their_next), (ours, *our_next) = anomalib_and_ours(x, ratio, seed)
    assert len(ours) == int(n * ratio)
    assert ours == theirs
    assert our_next == their_next  # the projection and the first centre drew what anomalib draws


def test_same_indices_on_isotropic_features_where_little_is_pruned():
    x = torch.randn(1500, 32, generator=torch.Generator().manual_seed(5))
    (theirs, *_), (ours, *_) = anomalib_and_ours(x, 0.1, 5)
    assert ours == theirs


def test_a_three_dimensional_embedding_is_flattened_as_anomalib_does():
    x = clustered(1200, 48, 4).reshape(1200, 6, 8)
    (theirs, *_), (ours, *_) = anomalib_and_ours(x, 0.1, 4)
    assert ours == theirs


def test_the_full_width_loop_other_devices_use_selects_the_same():
    features = clustered(3000, 100, 6, duplicates=50)
    first = 17
    assert _dense(features, first, 300, None).tolist() == _pruned(features, first, 300, None).tolist()


def test_too_small_a_ratio_is_refused_as_anomalib_refuses_it():
    with pytest.raises(ValueError, match="coreset_size must be a positive integer"):
        k_center_greedy(torch.randn(50, 8), 0.01)


def test_progress_is_reported_by_tenths_not_per_step(caplog):
    from console.progress import LoopProgress

    progress = LoopProgress("detect coreset", quiet_s=0.0)
    with caplog.at_level(logging.INFO, logger="fractal_ad"):
        for i in range(1, 1001):
            progress(i, 1000)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 10, lines
    assert lines[0].startswith("detect coreset 100/1000 (10%)")
    assert lines[-1].startswith("detect coreset 1000/1000 (100%)")
    caplog.clear()
    quick = LoopProgress("detect coreset")  # done well within its default quiet_s: the last line only
    with caplog.at_level(logging.INFO, logger="fractal_ad"):
        for i in range(1, 1001):
            quick(i, 1000)
    assert [r.getMessage()[:33] for r in caplog.records] == ["detect coreset 1000/1000 (100%)  "]


def test_project_patchcore_builds_anomalibs_memory_bank(caplog):
    """The detector the pipeline builds (anomalib's Patchcore config) fits the same memory bank as
    anomalib's own class on the same embeddings, and says how far the coreset has got."""
    from anomalib.models import Patchcore

    from detectors.backbone import IMAGENET_MEAN, IMAGENET_STD, Backbone
    from detectors.models import build_detector

    backbone = Backbone("random", "resnet18", "resnet18", False, IMAGENET_MEAN, IMAGENET_STD, "random init")
    kwargs = {"layers": ["layer2", "layer3"], "coreset_sampling_ratio": 0.1, "num_neighbors": 9}
    ours = build_detector(Patchcore, kwargs, backbone)
    theirs = Patchcore(backbone="resnet18", pre_trained=False, **kwargs)
    assert isinstance(ours, Patchcore) and type(ours) is not Patchcore
    embeddings = [clustered(1000, 384, seed) for seed in range(3)]
    banks = []
    for model in (theirs, ours):
        model.model.embedding_store.extend(e.clone() for e in embeddings)
        torch.manual_seed(0)
        np.random.seed(0)
        with caplog.at_level(logging.INFO, logger="fractal_ad"):
            model.fit()  # ours returns with the selection under way; the state waits for it
            banks.append(model.state_dict()["model.memory_bank"])
    assert banks[0].shape == (300, 384)
    assert torch.equal(banks[0], banks[1])
    assert any(r.getMessage().startswith("detect coreset 300/300 (100%)") for r in caplog.records)


def test_two_selections_side_by_side_are_anomalibs_and_restore_the_thread_count():
    """Two background selections started one after the other (as PatchCore's held-out fit and refit
    start them) each select what anomalib selects from the random state at its start, and torch's
    thread count is back to what it was once both are done."""
    from anomalib.models.components.sampling import KCenterGreedy

    from detectors.coreset import select_in_background

    a, b = clustered(3000, 152, 7), clustered(2400, 152, 8)
    threads = torch.get_num_threads()
    torch.manual_seed(3)
    np.random.seed(3)
    first, second = select_in_background(a, 0.1), select_in_background(b, 0.1)
    # the draws were made on this thread, before returning: the streams are where anomalib leaves them
    after = torch.rand(1).item(), np.random.rand()
    ours = first.result(), second.result()
    torch.manual_seed(3)
    np.random.seed(3)
    theirs = KCenterGreedy(a, 0.1).select_coreset_idxs(), KCenterGreedy(b, 0.1).select_coreset_idxs()
    assert ours == theirs
    assert after == (torch.rand(1).item(), np.random.rand())
    assert torch.get_num_threads() == threads


def test_a_failing_selection_raises_where_its_result_is_read():
    from detectors.coreset import select_in_background

    progress_calls = []

    def broken(done, total):
        progress_calls.append(done)
        raise RuntimeError("progress sink failed")

    selection = select_in_background(clustered(500, 16, 9), 0.1, broken)
    with pytest.raises(RuntimeError, match="progress sink failed"):
        selection.result(timeout=60)
    assert progress_calls == [2]


def test_a_process_that_exits_during_a_selection_exits_cleanly(tmp_path):
    """A job that fails while its coreset is being selected ends with its own exit status, the
    selection stopped at its next step (not torn down inside torch: no C++ terminate, no abort)."""
    import subprocess
    import sys

    script = tmp_path / "exits.py"
    script.write_text(
        "import sys, time, torch\n"
        "from detectors.coreset import select_in_background\n"
        "x = torch.randn(60000, 64, generator=torch.Generator().manual_seed(0))\n"
        "selection = select_in_background(x, 0.5)\n"
        "time.sleep(1.0)\n"
        "assert not selection.done()\n"
        "sys.exit(3)\n")
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, str(script)], cwd=root, capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "PYTHONPATH": str(root)})
    assert done.returncode == 3, done.stderr[-2000:]
    assert "terminate called" not in done.stderr

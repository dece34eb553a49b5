"""PatchCore's k-center-greedy coreset, the same selection as anomalib's ``KCenterGreedy``, bit for bit,
without its cost on a CPU.

anomalib (2.7) computes, in each of its ``coreset_size`` iterations, the distance from the newest
centre to every patch: a fresh ``features - center`` (N x D, 250 MB for 200 images of 256 px) and a
fresh minimum. On a CPU each such temporary is an mmap whose pages fault in one by one, and the
whole pass reads every patch every time: ~0.25 s of CPU per iteration there, 20,480 iterations.

Here the same greedy selection (same random projection, same random first centre, same distances
from the same ATen kernel, same ``max``) recomputes the distance of a patch to the new centre only
where it could lower that patch's minimum; everything else is provably unchanged:

* triangle inequality: a patch at distance ``d`` from its nearest centre ``a`` cannot come closer
  to the new centre ``c`` than ``|c - a| - d``; skipped when ``|c - a| >= 2 d`` (with a margin);
* projection: its distance in the data's ``PCA_DIMS`` leading principal directions (an orthogonal
  projection, so never longer than the distance itself) already exceeds ``d``; tested first in the
  ``LEAD_DIMS`` leading ones alone (cheaper, and it rules out most).

The tests run as one compiled pass over the patches (numba, ``_bound_pass``: no temporaries, no
interpreter between them). Both use lower bounds computed in float64 and a relative margin
(``MARGIN``, 1e-3) far above
float32's rounding of the distances (~D x 6e-8), so a skipped patch is one whose recomputed distance
would have come out >= its minimum, which ``torch.minimum`` would have left as it was. The patches
that pass both tests get their distances from the same ``torch.linalg.vector_norm`` kernel over the
same float32 differences as anomalib, so the minima, and with them each ``max``, are the same
numbers. Every buffer is allocated once, before the loop.

The loop is one thread's work. ``select_in_background`` makes the random draws on the caller's
thread and runs the loop on a thread of its own, so that PatchCore's two selections of a job (the
held-out fit and the refit on every normal, detectors.fit) run side by side.

On other devices (CUDA), where a reduction's order may depend on the tensor's shape, and in half
precision, the loop computes every distance as anomalib does, in preallocated buffers.
"""

from __future__ import annotations

import atexit
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager

import numba
import numpy as np
import torch

# relative margin of the skip tests (far above float32 rounding of a 300-dim distance, ~2e-5)
MARGIN = 1e-3
# leading principal directions of the lower-bound projection
PCA_DIMS = 32
# of which the leading ones take a first, cheaper cut (measured: it keeps ~28% of what it tests)
LEAD_DIMS = 8
# rows per block of the exact distance computation (a block of differences stays in cache)
BLOCK = 2048

Progress = Callable[[int, int], None]


def k_center_greedy(embedding: torch.Tensor, sampling_ratio: float, progress: Progress | None = None) -> list[int]:
    """The indices anomalib's ``KCenterGreedy(embedding, sampling_ratio).select_coreset_idxs()``
    returns, drawing the same random numbers from the global torch and numpy streams.
    ``progress(done, total)`` is called after each selected centre."""
    return select_in_background(embedding, sampling_ratio, progress).result()


def select_in_background(embedding: torch.Tensor, sampling_ratio: float,
                         progress: Progress | None = None) -> Future:
    """``k_center_greedy`` with its random draws made here, on the calling thread (so the selection
    depends on the streams' state now, not on what the caller does next), and its greedy loop, one
    thread's work, on a thread of its own: the future's ``result()`` is the list of indices. Two
    selections started one after the other (PatchCore's held-out fit and its refit on every normal)
    run side by side on two cores. While any selection runs, torch computes on one thread."""
    from anomalib.models.components.dimensionality_reduction import SparseRandomProjection

    n = embedding.shape[0]
    coreset_size = int(n * sampling_ratio)
    if coreset_size <= 0:
        raise ValueError(f"coreset_size must be a positive integer, got {coreset_size}. "
                         f"Check sampling_ratio ({sampling_ratio}) and embedding size ({n}).")
    if embedding.ndim == 2:
        features = SparseRandomProjection(eps=0.9).fit(embedding).transform(embedding)
    else:
        features = embedding.reshape(n, -1)
    first = int(torch.randint(high=n, size=(1,), device=features.device).squeeze())
    # the skip tests' margin assumes float32's rounding or finer; half precision takes the full loop
    pruned = features.device.type == "cpu" and features.dtype in (torch.float32, torch.float64)
    greedy = _pruned if pruned else _dense
    future: Future = Future()

    def step(done: int, total: int) -> None:
        if _stopping.is_set():
            raise SystemExit("coreset selection stopped: the process is exiting")
        if progress:
            progress(done, total)

    def select() -> None:
        try:
            with _one_thread(pruned):
                future.set_result(greedy(features.contiguous(), first, coreset_size, step).tolist())
        except BaseException as err:  # noqa: BLE001 (handed to whoever waits for the result)
            future.set_exception(err)
        finally:
            _workers.discard(threading.current_thread())

    # a daemon, stopped at its next step when the process exits (a job that fails meanwhile does not
    # wait for a selection nobody will read, nor leave a thread inside torch as the interpreter ends)
    worker = threading.Thread(target=select, name="coreset", daemon=True)
    _workers.add(worker)
    worker.start()
    return future


_stopping = threading.Event()
_workers: set[threading.Thread] = set()


@atexit.register
def _stop_selections() -> None:
    _stopping.set()
    for worker in list(_workers):
        worker.join(timeout=10)


_threads_lock = threading.Lock()
_running = {"selections": 0, "threads": 1}


@contextmanager
def _one_thread(pruned: bool) -> Iterator[None]:
    """torch on one thread while a pruned loop runs: its operations are small (tens of microseconds),
    and a second OpenMP thread costs more in fork/join than it saves; on a loaded machine a
    descheduled thread stalls every operation (seen: 331 iterations a minute with 2 threads under
    load, ~200 a second alone). The thread count is the process's: restored when the last ends."""
    if not pruned:
        yield
        return
    with _threads_lock:
        if _running["selections"] == 0:
            _running["threads"] = torch.get_num_threads()
            torch.set_num_threads(1)
        _running["selections"] += 1
    try:
        yield
    finally:
        with _threads_lock:
            _running["selections"] -= 1
            if _running["selections"] == 0:
                torch.set_num_threads(_running["threads"])


def _dense(features: torch.Tensor, first: int, coreset_size: int, progress: Progress | None) -> torch.Tensor:
    """anomalib's loop with its temporaries preallocated: the same kernels on the same shapes."""
    n = features.shape[0]
    diff = torch.empty_like(features)
    distances = torch.empty(n, 1, dtype=features.dtype, device=features.device)
    min_distances = torch.empty_like(distances)
    value = torch.empty(1, dtype=features.dtype, device=features.device)
    selected = torch.empty(coreset_size, dtype=torch.int64, device=features.device)
    selected[0] = first
    for i in range(1, coreset_size):
        torch.sub(features, features[selected[i - 1]], out=diff)
        target = min_distances if i == 1 else distances
        torch.linalg.vector_norm(diff, ord=2, dim=1, keepdim=True, out=target)
        if i > 1:
            torch.minimum(min_distances, distances, out=min_distances)
        torch.max(min_distances.squeeze(1), dim=0, out=(value[0], selected[i]))
        min_distances[selected[i]] = 0.0
        if progress:
            progress(i + 1, coreset_size)
    return selected.cpu()


def _norms(rows: torch.Tensor, center: torch.Tensor, out: torch.Tensor, block: torch.Tensor) -> None:
    """``out[i] = |rows[i] - center|`` by anomalib's arithmetic (a float32 difference, then
    ``vector_norm`` over the last dimension, a per-row reduction whose order does not depend on the
    number of rows), a block of rows at a time."""
    for start in range(0, rows.shape[0], block.shape[0]):
        stop = min(start + block.shape[0], rows.shape[0])
        diff = block[: stop - start]
        torch.sub(rows[start:stop], center, out=diff)
        torch.linalg.vector_norm(diff, ord=2, dim=1, out=out[start:stop])


def _projection(features: torch.Tensor, q: int) -> torch.Tensor:
    """``features`` in their ``q`` leading principal directions (orthonormal, float64)."""
    sample = features[:: max(1, features.shape[0] // 65536)].double()
    sample = sample - sample.mean(0)
    _, vectors = torch.linalg.eigh(sample.T @ sample)
    basis = vectors[:, -q:].contiguous()
    projected = torch.empty(features.shape[0], basis.shape[1], dtype=torch.float64)
    for start in range(0, features.shape[0], 16384):
        torch.matmul(features[start:start + 16384].double(), basis, out=projected[start:start + 16384])
    return projected


def _pruned(features: torch.Tensor, first: int, coreset_size: int, progress: Progress | None) -> torch.Tensor:
    """The greedy selection, recomputing only the distances that the lower bounds cannot rule out."""
    n, dim = features.shape
    projected = _projection(features, min(PCA_DIMS, dim))
    # absolute slack of the float64 bounds: their rounding, ~1e-16 of the coordinates' size
    slack = 1e-9 * (1.0 + float(projected.abs().max()) * projected.shape[1])
    f64, i64 = torch.float64, torch.int64
    dtype = features.dtype
    min_distances = torch.empty(n, dtype=dtype)  # anomalib's min_distances
    nearest = torch.zeros(n, dtype=i64)  # which selected centre (its position) gave a patch its minimum
    selected = torch.empty(coreset_size, dtype=i64)
    center_coords = torch.empty(coreset_size, projected.shape[1], dtype=f64)
    center_gaps = torch.empty(coreset_size, dtype=f64)
    exact, owners = torch.empty(n, dtype=i64), torch.empty(n, dtype=i64)
    coords = torch.empty(coreset_size, projected.shape[1], dtype=f64)
    lead = projected[:, -LEAD_DIMS:].contiguous()  # eigh's order: the leading directions come last
    # numpy views of the same memory, for the compiled pass
    nearest_np, min_np, exact_np = nearest.numpy(), min_distances.numpy(), exact.numpy()
    lead_np, projected_np = lead.numpy(), projected.numpy()
    rows = torch.empty(n, dim, dtype=dtype)
    distances, current = torch.empty(n, dtype=dtype), torch.empty(n, dtype=dtype)
    closer = torch.empty(n, dtype=torch.bool)
    block = torch.empty(BLOCK, dim, dtype=dtype)
    value = torch.empty((), dtype=dtype)

    selected[0] = first
    for i in range(1, coreset_size):
        c = int(selected[i - 1])
        center = features[c]
        center_coords[i - 1] = projected[c]
        if i == 1:
            _norms(features, center, min_distances, block)
        else:
            # 1.-2. the lower bounds, in one compiled pass over the patches
            gaps = center_gaps[: i - 1]
            torch.sub(center_coords[: i - 1], projected[c], out=coords[: i - 1])
            torch.linalg.vector_norm(coords[: i - 1], ord=2, dim=1, out=gaps)
            gaps.sub_(slack)
            k = _bound_pass(nearest_np, gaps.numpy(), min_np, lead_np, projected_np, c, slack, MARGIN, exact_np)
            candidates = exact[:k]
            # 3. the exact distances of the rest, and anomalib's minimum
            torch.index_select(features, 0, candidates, out=rows[:k])
            _norms(rows[:k], center, distances[:k], block)
            torch.index_select(min_distances, 0, candidates, out=current[:k])
            torch.lt(distances[:k], current[:k], out=closer[:k])
            torch.minimum(current[:k], distances[:k], out=current[:k])
            min_distances.index_copy_(0, candidates, current[:k])
            torch.index_select(nearest, 0, candidates, out=owners[:k])
            owners[:k].masked_fill_(closer[:k], i - 1)
            nearest.index_copy_(0, candidates, owners[:k])
        torch.max(min_distances, dim=0, out=(value, selected[i]))
        min_distances[selected[i]] = 0.0
        if progress:
            progress(i + 1, coreset_size)
    return selected


@numba.njit(nogil=True)
def _bound_pass(nearest, gaps, min_distances, lead, projected, c, slack, margin, out) -> int:
    """Writes to ``out`` the patches whose distance to centre ``c`` none of the lower bounds rules
    out, in index order, and returns their count. A patch at distance ``d`` from its nearest centre
    is ruled out when ``|c - a| - slack >= 2 (1 + margin) d`` (``gaps`` holds ``|c - a| - slack`` per
    centre), or when its projected distance to ``c`` less ``slack``, in the leading directions
    (``lead``) or in all of them (``projected``), is ``>= (1 + margin) d``. One pass, no temporaries,
    no interpreter between the tests; ``nogil``: two selections run side by side."""
    count = 0
    for j in range(nearest.shape[0]):
        d = np.float64(min_distances[j])
        if gaps[nearest[j]] >= 2.0 * (1.0 + margin) * d:
            continue
        bound = (1.0 + margin) * d
        total = 0.0
        for t in range(lead.shape[1]):
            diff = lead[j, t] - lead[c, t]
            total += diff * diff
        if np.sqrt(total) - slack >= bound:
            continue
        total = 0.0
        for t in range(projected.shape[1]):
            diff = projected[j, t] - projected[c, t]
            total += diff * diff
        if np.sqrt(total) - slack >= bound:
            continue
        out[count] = j
        count += 1
    return count

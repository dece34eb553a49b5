"""One progress display per long step: pre-training, detector fit, test.

On a terminal the display redraws one line; otherwise (a log file, a SLURM job) it writes a plain
line at every tenth of the work and at least every ``every_s`` seconds. Either way the plain lines
go to the run's log file. It is a Lightning ``ProgressBar``, so it replaces Lightning's own bar
(and is silent on ranks other than zero).
"""

from __future__ import annotations

import math
import sys
import time

from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.utilities.data import extract_batch_size

from console.logs import console_is_terminal, log


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def _metrics(metrics: dict) -> str:
    """``train_loss_step`` shown as ``train_loss``; an ``_epoch`` value only when no step value exists."""
    shown = {}
    for name, value in metrics.items():
        if not isinstance(value, (int, float)):
            continue
        base = name.removesuffix("_step").removesuffix("_epoch")
        if name.endswith("_step") or base not in shown:
            shown[base] = value
    return "  ".join(f"{k} {v:.3g}" for k, v in shown.items())


def _batch_size(batch) -> int:
    size = getattr(batch, "batch_size", None)  # anomalib's batches say it themselves
    return size if isinstance(size, int) else extract_batch_size(batch)


class StepProgress(ProgressBar):
    """``label  step 150/300 (50%)  train_loss 2.11  train_acc 0.31  151 img/s  1:02, ~1:02 left``."""

    def __init__(self, label: str, unit: str = "batch", every_s: float = 60.0):
        super().__init__()
        self.label, self.unit, self.every_s = label, unit, every_s
        self.enabled = True
        self._reset("", 0)

    def disable(self) -> None:
        self.enabled = False

    def enable(self) -> None:
        self.enabled = True

    def _reset(self, phase: str, total: float, done: int = 0) -> None:
        self.phase, self.total, self.done, self.logged, self.images = phase, total, done, -1, 0
        self.start = self.last_line = self.last_draw = time.perf_counter()
        self.decile = math.floor(10 * done / total) if total and math.isfinite(total) else 0

    def _line(self, trainer, pl_module) -> str:
        elapsed = time.perf_counter() - self.start
        known = self.total and math.isfinite(self.total)
        unit = self.unit if self.phase == "fit" else "batch"
        count = f"{unit} {self.done}/{int(self.total)} ({100 * self.done / self.total:.0f}%)" if known \
            else f"{unit} {self.done}"
        parts = [f"{self.label} {self.phase}".strip(), count]
        if self.phase != "test":
            parts.append(_metrics(self.get_metrics(trainer, pl_module)))
        if elapsed > 0 and self.images:
            parts.append(f"{self.images / elapsed:.0f} img/s")
        left = f", ~{_duration(elapsed * (self.total - self.done) / self.done)} left" \
            if known and 0 < self.done < self.total else ""
        parts.append(_duration(elapsed) + left)
        return "  ".join(p for p in parts if p)

    def _advance(self, trainer, pl_module, batch) -> None:
        if not self.enabled:
            return
        self.done += 1
        self.images += _batch_size(batch) * trainer.world_size
        now = time.perf_counter()
        decile = math.floor(10 * self.done / self.total) if self.total and math.isfinite(self.total) else 0
        if self.done == 1 or decile > self.decile or now - self.last_line >= self.every_s:
            self.decile, self.last_line, self.logged = decile, now, self.done
            log.info(self._line(trainer, pl_module), extra={"progress": True})
        if console_is_terminal() and now - self.last_draw >= 0.2:
            self.last_draw = now
            sys.stdout.write("\r" + self._line(trainer, pl_module) + "\x1b[K")
            sys.stdout.flush()

    def _finish(self, trainer, pl_module) -> None:
        if not self.enabled or not self.phase:
            return
        line = self._line(trainer, pl_module)
        if console_is_terminal():
            sys.stdout.write("\r" + line + "\x1b[K\n")
            sys.stdout.flush()
        if self.logged != self.done:
            log.info(line, extra={"progress": True})
        self.phase = ""

    def on_train_start(self, trainer, pl_module) -> None:
        # a resumed fit starts at the checkpoint's step; detectors without an optimiser never step
        self._reset("fit", trainer.estimated_stepping_batches, done=trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._advance(trainer, pl_module, batch)

    def on_train_end(self, trainer, pl_module) -> None:
        self._finish(trainer, pl_module)

    def on_test_start(self, trainer, pl_module) -> None:
        self._reset("test", sum(trainer.num_test_batches))

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._advance(trainer, pl_module, batch)

    def on_test_end(self, trainer, pl_module) -> None:
        self._finish(trainer, pl_module)


class LoopProgress:
    """``detect coreset 2048/20480 (10%)  0:12, ~1:48 left`` for a loop outside Lightning (PatchCore's
    coreset selection): call it with ``(done, total)`` after each step. Plain lines as StepProgress
    writes them (every tenth once ``quiet_s`` seconds have passed, at least every ``every_s`` seconds,
    and the last: a loop done within ``quiet_s``, such as the built-in data's one-second coresets,
    prints its last line only), a redrawn line on a terminal."""

    def __init__(self, label: str, every_s: float = 60.0, quiet_s: float = 5.0):
        self.label, self.every_s, self.quiet_s = label, every_s, quiet_s
        self.start = self.last_line = self.last_draw = time.perf_counter()
        self.decile, self.first = 0, None

    def _line(self, done: int, total: int, now: float) -> str:
        # the time left from the rate since the first step (the set-up before it is not a step)
        start, first = self.first
        left = f", ~{_duration((now - start) * (total - done) / (done - first))} left" \
            if first < done < total else ""
        return f"{self.label} {done}/{total} ({100 * done / total:.0f}%)  {_duration(now - self.start)}{left}"

    def __call__(self, done: int, total: int) -> None:
        now = time.perf_counter()
        if self.first is None:
            self.first = (now, done)
        decile = 10 * done // total
        tenth = decile > self.decile and now - self.start >= self.quiet_s
        if tenth or done == total or now - self.last_line >= self.every_s:
            self.decile, self.last_line = decile, now
            log.info(self._line(done, total, now), extra={"progress": True})
        if console_is_terminal() and (now - self.last_draw >= 0.2 or done == total):
            self.last_draw = now
            sys.stdout.write("\r" + self._line(done, total, now) + "\x1b[K" + ("\n" if done == total else ""))
            sys.stdout.flush()

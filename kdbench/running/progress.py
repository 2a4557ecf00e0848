"""Progress during training: a live bar on a terminal, one line per epoch otherwise."""
from __future__ import annotations

import sys
import time
from collections.abc import Callable

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from kdbench.engine.loop import EpochResult

console = Console(stderr=True, highlight=False)


class TrainingProgress:
    """Shows one training run (a teacher or a cell): epoch, loss, accuracy, ETA."""

    def __init__(self, label: str, epochs: int, steps_per_epoch: int):
        self.label, self.epochs, self.steps_per_epoch = label, epochs, steps_per_epoch
        self.live = console.is_terminal
        self.start = time.perf_counter()
        self._bar: Progress | None = None
        if self.live:
            self._bar = Progress(
                TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[status]}"),
                TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console, transient=True,
            )
            self._task = self._bar.add_task(label, total=epochs * steps_per_epoch, status="")
            self._bar.start()

    def on_step(self, step: int, loss: float) -> None:
        if self._bar is not None:
            epoch = (step - 1) // max(1, self.steps_per_epoch) + 1
            self._bar.update(self._task, completed=step, status=f"epoch {epoch}/{self.epochs} loss {loss:.3f}")

    def on_epoch(self, r: EpochResult) -> None:
        if r.phase == "pretrain":
            line = f"  {self.label} pre-training epoch {r.epoch}: loss {r.train_loss:.3f} ({r.seconds:.1f}s)"
            if self._bar is not None:
                self._bar.console.print(line)
            else:
                print(line, file=sys.stderr, flush=True)
            return
        elapsed = time.perf_counter() - self.start
        eta = elapsed / r.epoch * (self.epochs - r.epoch)
        line = (
            f"  {self.label} epoch {r.epoch}/{self.epochs} loss {r.train_loss:.3f} "
            f"train {r.train_top1:.1f}% test top1 {r.test_top1:.2f}% ({r.seconds:.1f}s, eta {eta:.0f}s)"
        )
        if self._bar is not None:
            self._bar.console.print(line)
        else:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def chain(*fns: Callable | None) -> Callable:
    """Call several callbacks with the same arguments (None entries skipped)."""
    live = [f for f in fns if f is not None]

    def call(*args):
        for f in live:
            f(*args)

    return call

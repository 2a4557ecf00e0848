"""Progress during training: a live bar on a terminal, one line per epoch otherwise.

In a worker process (``kdbench.running.workers``) a :class:`TrainingProgress`
sends its updates to the driver (:func:`send_to`), whose :class:`ProgressBoard`
draws one line per running cell and prints the epoch lines, so that cells
running side by side do not draw over each other.
"""
from __future__ import annotations

import itertools
import os
import queue as queue_module
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from kdbench.engine.loop import EpochResult

console = Console(stderr=True, highlight=False)

_SINK: Any = None  # in a worker: the driver's queue
_IDS = itertools.count()
SEND_EVERY_S = 0.5  # a worker's step updates, at most this often


def send_to(sink: Any) -> None:
    """In a worker process: send progress to the driver's :class:`ProgressBoard` queue (None: draw here)."""
    global _SINK
    _SINK = sink


def _print(line: str, bar: Progress | None) -> None:
    if bar is not None:
        bar.console.print(line)
    else:
        print(line, file=sys.stderr, flush=True)


class TrainingProgress:
    """Shows one training run (a teacher or a cell): epoch, loss, accuracy, ETA."""

    def __init__(self, label: str, epochs: int, steps_per_epoch: int):
        self.label, self.epochs, self.steps_per_epoch = label, epochs, steps_per_epoch
        self.remote = _SINK is not None
        self.live = console.is_terminal and not self.remote
        self.start = time.perf_counter()
        self._bar: Progress | None = None
        self._id, self._sent = (os.getpid(), next(_IDS)), 0.0
        if self.remote:
            _SINK.put(("start", self._id, label, epochs * steps_per_epoch))
        if self.live:
            self._bar = Progress(
                TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[status]}"),
                TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console, transient=True,
            )
            self._task = self._bar.add_task(label, total=epochs * steps_per_epoch, status="")
            self._bar.start()

    def on_step(self, step: int, loss: float) -> None:
        epoch = (step - 1) // max(1, self.steps_per_epoch) + 1
        status = f"epoch {epoch}/{self.epochs} loss {loss:.3f}"
        if self._bar is not None:
            self._bar.update(self._task, completed=step, status=status)
        elif self.remote and time.perf_counter() - self._sent >= SEND_EVERY_S:
            self._sent = time.perf_counter()
            _SINK.put(("step", self._id, step, status))

    def _line(self, line: str) -> None:
        if self.remote:
            _SINK.put(("line", self._id, line))
        else:
            _print(line, self._bar)

    def on_epoch(self, r: EpochResult) -> None:
        if r.phase == "pretrain":
            self._line(f"  {self.label} pre-training epoch {r.epoch}: loss {r.train_loss:.3f} ({r.seconds:.1f}s)")
            return
        elapsed = time.perf_counter() - self.start
        eta = elapsed / r.epoch * (self.epochs - r.epoch)
        line = (
            f"  {self.label} epoch {r.epoch}/{self.epochs} loss {r.train_loss:.3f} "
            f"train {r.train_top1:.1f}% test top1 {r.test_top1:.2f}% ({r.seconds:.1f}s, eta {eta:.0f}s)"
        )
        self._line(line)

    def close(self) -> None:
        if self.remote:
            _SINK.put(("end", self._id))
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


class ProgressBoard:
    """The driver's view of its workers' training: one live line per running cell on a terminal (the
    epoch lines printed above them), the epoch lines alone otherwise. ``queue`` goes to the workers."""

    def __init__(self) -> None:
        import multiprocessing as mp

        self.queue = mp.get_context("spawn").Queue()
        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[status]}"),
                             TimeElapsedColumn(), console=console, transient=True) if console.is_terminal else None
        self._tasks: dict[Any, Any] = {}
        self._thread = threading.Thread(target=self._drain, name="kdbench-progress", daemon=True)

    def __enter__(self) -> ProgressBoard:
        if self._bar is not None:
            self._bar.start()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.queue.put(None)
        self._thread.join(5)
        if self._bar is not None:
            self._bar.stop()
        self.queue.close()

    def _drain(self) -> None:
        while True:
            try:
                event = self.queue.get(timeout=1.0)
            except queue_module.Empty:
                continue
            except (EOFError, OSError):
                return
            if event is None:
                return
            self._show(event)

    def _show(self, event: tuple) -> None:
        kind, key = event[0], event[1]
        if kind == "line":
            _print(event[2], self._bar)
        elif self._bar is None:
            return
        elif kind == "start":
            self._tasks[key] = self._bar.add_task(event[2], total=event[3], status="")
        elif kind == "step" and key in self._tasks:
            self._bar.update(self._tasks[key], completed=event[2], status=event[3])
        elif kind == "end" and key in self._tasks:
            self._bar.remove_task(self._tasks.pop(key))


def chain(*fns: Callable | None) -> Callable:
    """Call several callbacks with the same arguments (None entries skipped)."""
    live = [f for f in fns if f is not None]

    def call(*args):
        for f in live:
            f(*args)

    return call

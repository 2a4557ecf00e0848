"""Timing calls one by one: a clock per device, the stop rules, percentiles of per-call times."""
from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch

LATENCY_PERCENTILES = (50, 90, 99)
MAX_CALLS = 100_000


def percentile_stats(times_ms: Iterable[float], prefix: str = "latency", suffix: str = "") -> dict[str, float]:
    """p50/p90/p99 (linear interpolation), mean, std (sample), min and count of per-call times.

    With the default prefix and a ``<target>.<precision>`` suffix these are the
    schema's ``latency_*`` metrics of one target.
    """
    t = np.asarray(list(times_ms), dtype=np.float64)
    if t.size == 0:
        raise ValueError("no timings")
    tail = f".{suffix}" if suffix else ""
    out = {f"{prefix}_p{p}_ms{tail}": float(np.percentile(t, p)) for p in LATENCY_PERCENTILES}
    out[f"{prefix}_mean_ms{tail}"] = float(t.mean())
    out[f"{prefix}_std_ms{tail}"] = float(t.std(ddof=1)) if t.size > 1 else 0.0
    out[f"{prefix}_min_ms{tail}"] = float(t.min())
    out[f"{prefix}_calls{tail}"] = float(t.size)
    return out


class Clock:
    """Times one call in milliseconds, synchronising the device the way it needs."""

    def __init__(self, device: torch.device):
        self.device = device
        if device.type == "cuda":
            self._start = torch.cuda.Event(enable_timing=True)
            self._end = torch.cuda.Event(enable_timing=True)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elif self.device.type == "mps":
            torch.mps.synchronize()

    def __call__(self, fn: Callable[[], Any]) -> float:
        if self.device.type == "cuda":
            self._start.record()
            fn()
            self._end.record()
            self._end.synchronize()
            return float(self._start.elapsed_time(self._end))
        t0 = time.perf_counter_ns()
        fn()
        if self.device.type == "mps":
            torch.mps.synchronize()
        return (time.perf_counter_ns() - t0) / 1e6


def timed_calls(
    fn: Callable[[], Any], clock: Callable[[Callable[[], Any]], float], *, min_time: float, min_calls: int,
    max_time: float, max_calls: int = MAX_CALLS,
) -> list[float]:
    """Per-call times (ms) of ``fn`` until ``min_time`` s and ``min_calls`` calls, or ``max_time`` s."""
    times: list[float] = []
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        while True:
            times.append(clock(fn))
            elapsed = time.perf_counter() - start
            n = len(times)
            if n >= max_calls or elapsed >= max_time or (elapsed >= min_time and n >= min_calls):
                return times
    finally:
        if gc_was_enabled:
            gc.enable()


def throughput_figures(big_times_ms: list[float] | None, big: int, latency_batch: int, latency_p50_ms: float,
                       suffix: str = "") -> dict[str, float]:
    """Images per second and the batch it was taken at: from the timed calls at the throughput batch
    ``big`` when there were any, else from the latency batch's median."""
    from kdbench.record import schema
    from kdbench.record.schema import on_target

    if big_times_ms is not None:
        ips, batch = big * 1e3 / float(np.median(big_times_ms)), big
    else:
        ips, batch = latency_batch * 1e3 / latency_p50_ms, latency_batch
    return {on_target(schema.THROUGHPUT, suffix): ips, on_target(schema.THROUGHPUT_BATCH, suffix): batch}

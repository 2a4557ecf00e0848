"""Measuring a model: size, MACs, and measured speed and memory per hardware target.

Speed is measured, never derived from MACs. MACs are counted with
``torch.utils.flop_counter`` (FLOPs / 2) and reported as MACs only.

How a target is measured (one target × one precision, :func:`measure_latency`):

1. The thread count is set explicitly (``torch.set_num_threads``): the
   target's ``threads``, or every physical core this process may use.
2. A copy of the model is put on the device in eval mode, in the target's
   memory format; ``mode="compile"`` wraps it in ``torch.compile`` (with
   inductor freezing on CPU) and the first call of each input shape is timed
   apart as ``compile_s``.
3. Latency at ``spec.batch_size`` (1): ``spec.warmup`` untimed calls, then
   calls timed **one by one** (``time.perf_counter_ns`` on CPU — the clock
   ``torch.utils.benchmark`` uses — and CUDA events with a synchronisation
   after every call on GPU), with the garbage collector off, until both
   ``spec.min_run_time`` seconds and ``spec.min_calls`` calls are reached
   (or ``spec.max_run_time`` passes). p50/p90/p99/mean/std are over those
   per-call times. Per-call times rather than ``blocked_autorange``'s block
   means: a block mean hides exactly the tail that p90/p99 are meant to show.
   ``benchmarks/bench_measure.py`` checks that the p50 agrees with a plain
   ``torch.utils.benchmark.Timer`` in the same process.
4. Throughput at ``spec.throughput_batch_size``: one warm-up call, then timed
   calls for ``spec.throughput_min_run_time`` (at least 3); images/s is the
   batch over the median call time.
5. Peak memory above what the process held before the copy was made: CUDA
   ``max_memory_allocated``; on CPU the growth of the process's peak RSS
   (``VmHWM`` after a reset through ``/proc/self/clear_refs``, with freed heap
   returned to the OS first), a lower bound because the allocator may reuse
   pages the process already held. In compile mode the peak is reset after
   each compilation, so the compiler's own transient memory is left out
   (what it keeps resident still counts). cuDNN autotuning
   (``cudnn.benchmark``) is on during CUDA measurements.

Metric names are ``<metric>.<target>.<precision>``, e.g. ``latency_p50_ms.cpu.fp32``
(:data:`kdbench.record.schema.TARGET_METRICS`). The pieces live in their own modules:
:mod:`~kdbench.measurement.static` (parameters, size, MACs), :mod:`~kdbench.measurement.targets`
(precisions, threads, what stops a target), :mod:`~kdbench.measurement.timing` and
:mod:`~kdbench.measurement.memory`; this module measures with them and re-exports what callers use.
"""
from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from kdbench.core.api import Hardware
from kdbench.core.config import MeasureSpec
from kdbench.engine.seeding import torch_threads
from kdbench.measurement.memory import MemoryProbe
from kdbench.measurement.runtimes.base import NotApplicable
from kdbench.measurement.static import MACS_COUNTER, count_macs, size_on_disk_bytes, static_metrics
from kdbench.measurement.targets import (
    PRECISIONS, SUPPORTED_PRECISIONS, compile_problem, default_threads, describe_target, metric_suffix,
    precision_problem, target_threads,
)
from kdbench.measurement.timing import Clock, percentile_stats, throughput_figures, timed_calls
from kdbench.record import schema
from kdbench.record.schema import on_target

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
THROUGHPUT_MIN_CALLS = 3


# --------------------------------------------------------------------------- one target


@contextlib.contextmanager
def _cudnn_benchmark(device: torch.device):
    """cuDNN autotuning for the fixed input shape (what a deployment would enable); warm-up covers it."""
    if device.type != "cuda":
        yield
        return
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


def _autocast(device: torch.device, precision: str):
    dtype = AUTOCAST_DTYPES.get(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _compile_context(device: torch.device):
    """Inductor freezing on CPU (constant-folds weights: how CPU inference is deployed)."""
    if device.type != "cpu":
        return contextlib.nullcontext()
    try:
        import torch._inductor.config as inductor_config

        return inductor_config.patch(freezing=True)
    except Exception:
        return contextlib.nullcontext()


def _input(batch: int, input_size: tuple[int, ...], device: torch.device, channels_last: bool) -> torch.Tensor:
    x = torch.randn(batch, *input_size, device=device)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def measure_latency(
    model: nn.Module, hardware: Hardware, input_size: tuple[int, int, int], spec: MeasureSpec,
    precision: str | None = None,
) -> dict[str, float]:
    """Latency percentiles, throughput, peak memory (and compile time) of ``model`` on one target.

    Measures one precision (``hardware.precision`` unless given). Returns
    metrics named ``<metric>.<target>.<precision>``; see the module docstring.
    The caller checks ``hardware.probe()`` first; this raises if the device is absent.
    """
    precision = precision or hardware.precision
    device = torch.device(hardware.device)
    threads = target_threads(hardware)
    channels_last = hardware.memory_format == "channels_last"
    suffix = metric_suffix(hardware, precision)
    clock = Clock(device)
    memory = MemoryProbe(device)
    out: dict[str, float] = {}
    began = time.perf_counter()
    with torch_threads(threads), _cudnn_benchmark(device):
        memory.start()
        m = copy.deepcopy(model).eval().to(device)
        if channels_last:
            m = m.to(memory_format=torch.channels_last)
        x = _input(spec.batch_size, input_size, device, channels_last)
        compile_s = 0.0
        with _compile_context(device) if hardware.mode == "compile" else contextlib.nullcontext(), \
                torch.inference_mode(), _autocast(device, precision):
            run = torch.compile(m, dynamic=False) if hardware.mode == "compile" else m
            if hardware.mode == "compile":  # first call compiles; timed apart from the steady state
                clock.sync()
                t0 = time.perf_counter()
                run(x)
                clock.sync()
                compile_s += time.perf_counter() - t0
                memory.reset_peak()
            for _ in range(spec.warmup):
                run(x)
            clock.sync()
            memory.sample()
            times = timed_calls(lambda: run(x), clock, min_time=spec.min_run_time, min_calls=spec.min_calls,
                                max_time=spec.max_run_time)
            memory.sample()
            out.update(percentile_stats(times, "latency", suffix))
            out[on_target(schema.LATENCY_BATCH, suffix)] = spec.batch_size
            big, big_times = spec.throughput_batch_size, None
            if big and big != spec.batch_size:
                xb = _input(big, input_size, device, channels_last)
                clock.sync()
                t0 = time.perf_counter()
                run(xb)  # warm-up (and, compiled, the compilation for this shape)
                clock.sync()
                if hardware.mode == "compile":
                    compile_s += time.perf_counter() - t0
                    memory.reset_peak()
                big_times = timed_calls(lambda: run(xb), clock, min_time=spec.throughput_min_run_time,
                                        min_calls=THROUGHPUT_MIN_CALLS, max_time=spec.max_run_time)
                memory.sample()
                del xb
            out.update(throughput_figures(big_times, big, spec.batch_size, out[on_target(schema.LATENCY_P50, suffix)],
                                          suffix))
        peak = memory.peak_bytes()
        if peak is not None:
            out[on_target(schema.PEAK_MEM_MB, suffix)] = peak / 2**20
        if hardware.mode == "compile":
            out[on_target(schema.COMPILE_S, suffix)] = compile_s
        out[on_target(schema.THREADS, suffix)] = torch.get_num_threads()
    out[on_target(schema.MEASURE_S, suffix)] = time.perf_counter() - began
    del m, run, x
    return out


# --------------------------------------------------------------------------- many targets


@dataclass
class TargetResult:
    """One target × precision: ``status`` is measured, skipped or failed (with ``reason``)."""

    target: str
    precision: str | None  # None: the whole target was skipped
    status: str
    reason: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    hardware: Hardware | None = None
    detail: str = ""  # what was measured, where a target says more than its description (a runtime's file)

    @property
    def suffix(self) -> str:
        return f"{self.target}.{self.precision}" if self.precision else self.target


def measure_targets(
    model: nn.Module, targets: list[Hardware], input_size: tuple[int, int, int], spec: MeasureSpec,
    on_result: Callable[[TargetResult], None] | None = None, inputs: Any = None,
) -> list[TargetResult]:
    """Measure every target × precision; absent targets and precisions are skipped with the reason.

    A measurement that raises is recorded as failed with its error and the
    others go on (a crash on one target must not lose the cell). Targets with
    a deployment runtime are measured by :mod:`kdbench.measurement.runtimes`;
    ``inputs`` (a ``RuntimeInputs``) gives them test and calibration images.
    """
    results: list[TargetResult] = []

    def add(r: TargetResult) -> None:
        results.append(r)
        if on_result:
            on_result(r)

    for hw in targets:
        reason = hw.probe() or (compile_problem(hw) if hw.mode == "compile" and hw.runtime is None else None)
        if reason:
            add(TargetResult(hw.name, None, "skipped", reason, hardware=hw))
            continue
        for precision in hw.measured_precisions:
            problem = precision_problem(hw, precision)
            if problem:
                add(TargetResult(hw.name, precision, "skipped", problem, hardware=hw))
                continue
            detail = ""
            try:
                if hw.runtime is not None:
                    metrics, detail = _measure_runtime(model, hw, input_size, spec, precision, inputs)
                else:
                    metrics = measure_latency(model, hw, input_size, spec, precision)
            except Exception as exc:  # recorded, not raised: the other targets still run
                if isinstance(exc, NotApplicable):  # a runtime target the model cannot run on (it does not export)
                    add(TargetResult(hw.name, precision, "skipped", f"not applicable on {hw.name}: {exc}"[:500],
                                     hardware=hw))
                    continue
                message = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
                add(TargetResult(hw.name, precision, "failed", message, hardware=hw))
                continue
            add(TargetResult(hw.name, precision, "measured", metrics=metrics, hardware=hw, detail=detail))
    return results


def _measure_runtime(model, hw, input_size, spec, precision, inputs):
    from kdbench.measurement.runtimes.measure import measure_runtime  # lazily: it is not needed without runtimes

    return measure_runtime(model, hw, input_size, spec, precision, inputs, target_threads(hw))


def result_tags(results: list[TargetResult]) -> dict[str, str]:
    """Tags saying what was measured, skipped or failed and why.

    ``kdbench.measure.<target>``: ``measured: <device, threads, format, mode, precisions>``
    or ``skipped: <reason>``; ``kdbench.measure.<target>.<precision>``: the
    status of each precision (with the reason when not measured).
    """
    tags: dict[str, str] = {}
    by_target: dict[str, list[TargetResult]] = {}
    for r in results:
        by_target.setdefault(r.target, []).append(r)
        if r.precision is not None:
            said = r.reason or r.detail
            tags[schema.fill(schema.MEASURE_PRECISION, target=r.target, precision=r.precision)] = \
                (r.status + (f": {said}" if said else ""))[:5000]  # MLflow's limit on a tag value
    for target, rs in by_target.items():
        measured = [r for r in rs if r.status == "measured"]
        if measured and measured[0].hardware is not None:
            tags[schema.fill(schema.MEASURE_TARGET, target=target)] = f"measured: {describe_target(measured[0].hardware)}"
        else:
            first = rs[0]
            tags[schema.fill(schema.MEASURE_TARGET, target=target)] = f"{first.status}: {first.reason}"
    return tags


def measure_on_targets(
    model: nn.Module, targets: list[Hardware], input_size: tuple[int, int, int], spec: MeasureSpec,
    *, with_environment: bool = True,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Metrics for every available target, and tags saying which were skipped and why.

    The tags also carry the environment (``kdbench.env.*``: CPU model and
    flags, cores, GPU and driver, library versions) unless ``with_environment``
    is False.
    """
    results = measure_targets(model, targets, input_size, spec)
    metrics: dict[str, float] = {}
    for r in results:
        metrics.update(r.metrics)
    tags: dict[str, Any] = result_tags(results)
    if with_environment:
        from kdbench.measurement.environment import environment_tags

        tags.update(environment_tags())
    return metrics, tags


__all__ = [
    "AUTOCAST_DTYPES", "MACS_COUNTER", "PRECISIONS", "SUPPORTED_PRECISIONS", "TargetResult", "compile_problem",
    "count_macs", "default_threads", "describe_target", "measure_latency", "measure_on_targets", "measure_targets",
    "metric_suffix", "percentile_stats", "precision_problem", "result_tags", "size_on_disk_bytes",
    "static_metrics", "target_threads", "timed_calls",
]

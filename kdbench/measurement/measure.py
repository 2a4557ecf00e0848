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

Metric names are ``<metric>.<target>.<precision>``, e.g. ``latency_p50_ms.cpu.fp32``.
"""
from __future__ import annotations

import contextlib
import copy
import ctypes
import gc
import io
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from kdbench.core.api import Hardware
from kdbench.core.config import MeasureSpec

MACS_COUNTER = "torch.utils.flop_counter"
PRECISIONS = ("fp32", "bf16", "fp16", "int8", "int4")
# what each device type can measure; int8 means "the model is already quantized"
SUPPORTED_PRECISIONS = {
    "cpu": ("fp32", "bf16", "int8"),
    "cuda": ("fp32", "bf16", "fp16", "int8", "int4"),  # int8/int4: a model a quantizer converted (quant_linear)
    "mps": ("fp32", "fp16"),
}
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
LATENCY_PERCENTILES = (50, 90, 99)
THROUGHPUT_MIN_CALLS = 3
MAX_CALLS = 100_000
TAG_PREFIX = "kdbench.measure."


# --------------------------------------------------------------------------- static metrics


def count_macs(model: nn.Module, input_size: tuple[int, int, int]) -> int | None:
    """Multiply-accumulates of one forward pass at batch 1 (None if the counter fails)."""
    from torch.utils.flop_counter import FlopCounterMode

    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    x = torch.zeros(1, *input_size, device=device)
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(x)
        return counter.get_total_flops() // 2
    except Exception:
        return None
    finally:
        model.train(was_training)


def size_on_disk_bytes(model: nn.Module) -> int:
    """Bytes of the saved ``state_dict`` (what a checkpoint of the model takes)."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.tell()


def static_metrics(model: nn.Module, input_size: tuple[int, int, int]) -> dict[str, float]:
    """Parameters (total, non-zero), size of the saved state_dict, and MACs (see ``MACS_COUNTER``)."""
    params = sum(p.numel() for p in model.parameters())
    nonzero = sum(int(torch.count_nonzero(p)) for p in model.parameters())
    out: dict[str, float] = {"params": params, "params_nonzero": nonzero, "size_bytes": size_on_disk_bytes(model)}
    macs = count_macs(model, input_size)
    if macs is not None:
        out["macs"] = macs
    return out


# --------------------------------------------------------------------------- targets


def metric_suffix(hardware: Hardware, precision: str | None = None) -> str:
    return f"{hardware.name}.{precision or hardware.precision}"


def default_threads() -> int:
    """Threads for a target with ``threads=None``: the physical cores this process may use."""
    from kdbench.measurement.environment import cpu_info

    info = cpu_info()
    usable = info["cpu_affinity"] or os.cpu_count() or 1
    physical = info["cpu_physical_cores"] or usable
    logical = info["cpu_logical"] or usable
    # with SMT, affinity counts hardware threads; one thread per physical core is faster
    per_core = max(1, logical // physical) if physical else 1
    return max(1, usable // per_core)


def target_threads(hardware: Hardware) -> int:
    return hardware.threads or default_threads()


def compile_problem(hardware: Hardware) -> str | None:
    """None when ``torch.compile`` can run for this target, else why not."""
    import shutil

    if not hasattr(torch, "compile"):
        return "this torch has no torch.compile"
    kind = torch.device(hardware.device).type
    if kind == "cpu" and not any(shutil.which(cc) for cc in ("g++", "c++", "clang++", "cl")):
        return "torch.compile on CPU needs a C++ compiler (g++/clang++) on PATH"
    return None


def precision_problem(hardware: Hardware, precision: str) -> str | None:
    """None when ``precision`` can be measured on ``hardware`` here, else why not."""
    kind = torch.device(hardware.device).type
    supported = SUPPORTED_PRECISIONS.get(kind, ("fp32",))
    if precision not in supported:
        return f"precision {precision} is not supported on {kind} (supported: {', '.join(supported)})"
    if kind == "cuda" and precision == "bf16" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        return "this GPU has no bf16 support (torch.cuda.is_bf16_supported() is False)"
    return None


# --------------------------------------------------------------------------- timing


def percentile_stats(times_ms: Iterable[float], prefix: str = "latency", suffix: str = "") -> dict[str, float]:
    """p50/p90/p99 (linear interpolation), mean, std (sample), min and count of per-call times."""
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


class _Clock:
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


# --------------------------------------------------------------------------- memory


def _proc_status_kb(field_name: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _release_free_heap() -> None:
    gc.collect()
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


class MemoryProbe:
    """Peak bytes above a baseline: CUDA max allocated, or peak RSS growth on CPU."""

    def __init__(self, device: torch.device):
        self.device = device
        self.baseline = 0
        self._hwm_reset = False
        self._samples: list[int] = []

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.baseline = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.device.type == "cpu":
            _release_free_heap()
            self.baseline = (_proc_status_kb("VmRSS") or 0) * 1024
            self._hwm_reset = _reset_peak_rss()

    def reset_peak(self) -> None:
        """Forget the peak so far (not the baseline): compilation's own memory is not the model's."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.device.type == "cpu":
            self._hwm_reset = _reset_peak_rss()
            self._samples.clear()

    def sample(self) -> None:
        if self.device.type == "cpu":
            rss = _proc_status_kb("VmRSS")
            if rss is not None:
                self._samples.append(rss * 1024)

    def peak_bytes(self) -> int | None:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) - self.baseline
        if self.device.type != "cpu" or not self.baseline:
            return None  # MPS has no peak counter
        peak = _proc_status_kb("VmHWM") if self._hwm_reset else None
        candidates = [peak * 1024] if peak is not None else []
        candidates += self._samples
        return max(0, max(candidates) - self.baseline) if candidates else None


# --------------------------------------------------------------------------- one target


@contextlib.contextmanager
def _threads(n: int):
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


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
    clock = _Clock(device)
    memory = MemoryProbe(device)
    out: dict[str, float] = {}
    began = time.perf_counter()
    with _threads(threads), _cudnn_benchmark(device):
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
            out[f"latency_batch.{suffix}"] = spec.batch_size
            big = spec.throughput_batch_size
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
                out[f"throughput_ips.{suffix}"] = big * 1e3 / float(np.median(big_times))
                out[f"throughput_batch.{suffix}"] = big
                del xb
            else:
                out[f"throughput_ips.{suffix}"] = spec.batch_size * 1e3 / out[f"latency_p50_ms.{suffix}"]
                out[f"throughput_batch.{suffix}"] = spec.batch_size
        peak = memory.peak_bytes()
        if peak is not None:
            out[f"peak_mem_mb.{suffix}"] = peak / 2**20
        if hardware.mode == "compile":
            out[f"compile_s.{suffix}"] = compile_s
        out[f"threads.{suffix}"] = torch.get_num_threads()
    out[f"measure_s.{suffix}"] = time.perf_counter() - began
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

    @property
    def suffix(self) -> str:
        return f"{self.target}.{self.precision}" if self.precision else self.target


def describe_target(hardware: Hardware) -> str:
    threads = target_threads(hardware) if torch.device(hardware.device).type == "cpu" else hardware.threads
    parts = [hardware.device]
    if threads:
        parts.append(f"{threads} thread{'s' if threads > 1 else ''}")
    parts += [hardware.memory_format, hardware.mode, "/".join(hardware.measured_precisions)]
    return ", ".join(parts)


def measure_targets(
    model: nn.Module, targets: list[Hardware], input_size: tuple[int, int, int], spec: MeasureSpec,
    on_result: Callable[[TargetResult], None] | None = None,
) -> list[TargetResult]:
    """Measure every target × precision; absent targets and precisions are skipped with the reason.

    A measurement that raises is recorded as failed with its error and the
    others go on (a crash on one target must not lose the cell).
    """
    results: list[TargetResult] = []

    def add(r: TargetResult) -> None:
        results.append(r)
        if on_result:
            on_result(r)

    for hw in targets:
        reason = hw.probe() or (compile_problem(hw) if hw.mode == "compile" else None)
        if reason:
            add(TargetResult(hw.name, None, "skipped", reason, hardware=hw))
            continue
        for precision in hw.measured_precisions:
            problem = precision_problem(hw, precision)
            if problem:
                add(TargetResult(hw.name, precision, "skipped", problem, hardware=hw))
                continue
            try:
                metrics = measure_latency(model, hw, input_size, spec, precision)
            except Exception as exc:  # recorded, not raised: the other targets still run
                message = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
                add(TargetResult(hw.name, precision, "failed", message, hardware=hw))
                continue
            add(TargetResult(hw.name, precision, "measured", metrics=metrics, hardware=hw))
    return results


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
            tags[f"{TAG_PREFIX}{r.target}.{r.precision}"] = r.status + (f": {r.reason}" if r.reason else "")
    for target, rs in by_target.items():
        measured = [r for r in rs if r.status == "measured"]
        if measured and measured[0].hardware is not None:
            tags[TAG_PREFIX + target] = f"measured: {describe_target(measured[0].hardware)}"
        else:
            first = rs[0]
            tags[TAG_PREFIX + target] = f"{first.status}: {first.reason}"
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

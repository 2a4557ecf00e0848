"""Measuring on hardware targets: skipped targets, metric names, percentiles, threads, environment."""
from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from kdbench import Hardware
from kdbench.core.config import MeasureSpec
from kdbench.record import schema
from kdbench.measurement.environment import environment, environment_tags, parse_cpuinfo
from kdbench.measurement.measure import (
    measure_latency,
    measure_on_targets,
    measure_targets,
    percentile_stats,
    static_metrics,
    timed_calls,
)

FAST = MeasureSpec(warmup=1, min_run_time=0.05, min_calls=12, max_run_time=2.0, throughput_batch_size=4,
                   throughput_min_run_time=0.05)
INPUT = (3, 8, 8)


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 5)
        self.threads_seen: list[int] = []

    def forward(self, x):
        self.threads_seen.append(torch.get_num_threads())
        return self.fc(self.conv(x).mean((2, 3)))


class Broken(Tiny):
    def forward(self, x):
        raise RuntimeError("kaput\nsecond line")


CPU = Hardware("cpu", "cpu")
CPU_1T = Hardware("cpu-1t", "cpu", threads=1)
ABSENT = Hardware("gpu-x", "cuda:7", probe=lambda: "no such GPU here")


def test_absent_target_is_skipped_with_reason():
    metrics, tags = measure_on_targets(Tiny(), [ABSENT, CPU_1T], INPUT, FAST)
    assert tags["kdbench.measure.gpu-x"] == "skipped: no such GPU here"
    assert not any(".gpu-x." in k for k in metrics)
    assert tags["kdbench.measure.cpu-1t"].startswith("measured: cpu, 1 thread")
    assert "latency_p50_ms.cpu-1t.fp32" in metrics


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_registered_cuda_and_mps_targets_skip_without_crashing(kdbench_env):
    from kdbench.core.host import get_host

    host = get_host()
    targets = [host.hardware.get(n) for n in ("cuda", "cuda:0", "cuda-compile")]
    assert all(t.memory_format == "channels_last" for t in targets)
    assert host.hardware.get("cuda").measured_precisions == ("fp32", "bf16", "fp16")
    metrics, tags = measure_on_targets(Tiny(), targets, INPUT, FAST, with_environment=False)
    assert metrics == {}
    for name in ("cuda", "cuda:0", "cuda-compile"):
        assert tags[f"kdbench.measure.{name}"].startswith("skipped: no CUDA device")


def test_unsupported_precision_is_skipped_and_others_measured():
    hw = Hardware("cpu-mixed", "cpu", threads=1, precisions=("fp32", "fp16"))
    metrics, tags = measure_on_targets(Tiny(), [hw], INPUT, FAST, with_environment=False)
    assert tags["kdbench.measure.cpu-mixed.fp16"].startswith("skipped: precision fp16 is not supported on cpu")
    assert tags["kdbench.measure.cpu-mixed.fp32"] == "measured"
    assert "latency_p50_ms.cpu-mixed.fp32" in metrics and not any(k.endswith(".fp16") for k in metrics)


def test_failing_model_is_recorded_as_failed_not_raised():
    results = measure_targets(Broken(), [CPU_1T], INPUT, FAST)
    assert [(r.status, r.reason) for r in results] == [("failed", "RuntimeError: kaput")]


def test_compile_target_without_compiler_is_skipped(monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name: None)
    hw = Hardware("cpu-compile", "cpu", mode="compile")
    _, tags = measure_on_targets(Tiny(), [hw], INPUT, FAST, with_environment=False)
    assert "needs a C++ compiler" in tags["kdbench.measure.cpu-compile"]


def test_metric_names_say_target_and_precision():
    metrics = measure_latency(Tiny(), CPU_1T, INPUT, FAST)
    pattern = re.compile(r"^[a-z0-9_]+\.cpu-1t\.fp32$")
    assert all(pattern.match(k) for k in metrics), sorted(metrics)
    names = {k.split(".")[0] for k in metrics}
    assert names == {
        "latency_p50_ms", "latency_p90_ms", "latency_p99_ms", "latency_mean_ms", "latency_std_ms", "latency_min_ms",
        "latency_calls", "latency_batch", "throughput_ips", "throughput_batch", "peak_mem_mb", "threads", "measure_s",
    }
    assert metrics["throughput_batch.cpu-1t.fp32"] == 4
    assert metrics["latency_batch.cpu-1t.fp32"] == 1
    assert names <= set(schema.TARGET_METRICS)  # declared in the record's schema
    assert all(schema.is_declared("metric", k, schema.CELL) for k in metrics)


def test_bf16_autocast_on_cpu_uses_its_own_names():
    hw = Hardware("cpu-bf16", "cpu", threads=1, precision="bf16")
    metrics = measure_latency(Tiny(), hw, INPUT, FAST)
    assert "latency_p50_ms.cpu-bf16.bf16" in metrics


def test_percentiles_ordered_and_positive():
    metrics = measure_latency(Tiny(), CPU_1T, INPUT, FAST)
    s = ".cpu-1t.fp32"
    p = [metrics[f"latency_{k}_ms{s}"] for k in ("min", "p50", "p90", "p99")]
    assert all(v > 0 for v in p)
    assert p == sorted(p)
    assert metrics[f"latency_min_ms{s}"] <= metrics[f"latency_mean_ms{s}"]
    assert metrics[f"latency_std_ms{s}"] >= 0
    assert metrics[f"latency_calls{s}"] >= FAST.min_calls
    assert metrics[f"throughput_ips{s}"] > 0
    assert metrics[f"peak_mem_mb{s}"] >= 0


def test_percentile_stats_known_values():
    stats = percentile_stats(range(1, 101), "latency", "t.fp32")
    assert stats["latency_p50_ms.t.fp32"] == pytest.approx(50.5)
    assert stats["latency_p90_ms.t.fp32"] == pytest.approx(90.1)
    assert stats["latency_p99_ms.t.fp32"] == pytest.approx(99.01)
    assert stats["latency_mean_ms.t.fp32"] == pytest.approx(50.5)
    assert stats["latency_calls.t.fp32"] == 100


def test_timed_calls_stop_rules():
    fake = iter(range(1000))
    clock = lambda fn: float(next(fake))  # noqa: E731  (no real time passes: min_calls decides)
    assert len(timed_calls(lambda: None, clock, min_time=0.0, min_calls=7, max_time=60)) == 7
    assert len(timed_calls(lambda: None, clock, min_time=0.0, min_calls=10**6, max_time=60, max_calls=20)) == 20


class ThreadSpy(Tiny):
    seen: list[int] = []  # class attribute: shared with the copy that is measured

    def forward(self, x):
        type(self).seen.append(torch.get_num_threads())
        return super().forward(x)


@pytest.mark.parametrize("threads", [1, 2])
def test_thread_count_is_honoured_and_restored(threads):
    before = torch.get_num_threads()
    ThreadSpy.seen = []
    hw = Hardware(f"cpu-{threads}t", "cpu", threads=threads)
    metrics, tags = measure_on_targets(ThreadSpy(), [hw], INPUT, FAST, with_environment=False)
    assert metrics[f"threads.cpu-{threads}t.fp32"] == threads
    assert f"{threads} thread" in tags[f"kdbench.measure.cpu-{threads}t"]
    assert ThreadSpy.seen and set(ThreadSpy.seen) == {threads}  # inside every forward pass
    assert torch.get_num_threads() == before


def test_environment_captured():
    env = environment()
    assert env["cpu_logical"] >= 1 and env["cpu_physical_cores"] >= 1
    assert env["cpu_model"]
    assert env["torch_version"] == torch.__version__
    for key in ("timm_version", "torchao_version", "torch_pruning_version", "kdbench_version", "gpu_count"):
        assert key in env
    _, tags = measure_on_targets(Tiny(), [ABSENT], INPUT, FAST)
    assert tags["kdbench.env.torch_version"] == torch.__version__
    assert "kdbench.env.cpu_model" in tags
    assert environment_tags({"a": 1}) == {"kdbench.env.a": "1"}


def test_parse_cpuinfo_flags_and_cores():
    text = (
        "processor\t: 0\nmodel name\t: Test CPU\nphysical id\t: 0\ncore id\t: 0\n"
        "flags\t\t: fpu avx2 avx512f avx512_vnni amx_tile amx_int8\n\n"
        "processor\t: 1\nmodel name\t: Test CPU\nphysical id\t: 0\ncore id\t: 0\nflags\t\t: fpu\n\n"
        "processor\t: 2\nmodel name\t: Test CPU\nphysical id\t: 0\ncore id\t: 1\nflags\t\t: fpu\n"
    )
    info = parse_cpuinfo(text)
    assert info["model"] == "Test CPU"
    assert info["physical_cores"] == 2
    assert {"avx512f", "avx512_vnni", "amx_tile"} <= info["flags"]


def test_static_metrics():
    out = static_metrics(Tiny(), INPUT)
    assert out["params"] == out["params_nonzero"] > 0
    assert out["size_bytes"] > 0 and out["macs"] > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_path_events_amp_and_memory():
    hw = Hardware("cuda", "cuda:0", precisions=("fp32", "bf16", "fp16"), memory_format="channels_last")
    metrics, tags = measure_on_targets(Tiny(), [hw], INPUT, FAST)
    for precision in ("fp32", "fp16"):
        assert metrics[f"latency_p50_ms.cuda.{precision}"] > 0
        assert metrics[f"peak_mem_mb.cuda.{precision}"] > 0
    assert tags["kdbench.env.gpu_count"] != "0"

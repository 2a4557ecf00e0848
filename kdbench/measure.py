"""Measuring a trained model: size, MACs, and measured latency per hardware target.

Speed is measured, never derived from MACs. MACs are counted with
``torch.utils.flop_counter`` (FLOPs / 2) and reported as MACs only.
"""
from __future__ import annotations

import copy
import io
import os
import statistics
from typing import Any

import torch
from torch import nn

from .api import Hardware
from .config import MeasureSpec

MACS_COUNTER = "torch.utils.flop_counter"


def count_macs(model: nn.Module, input_size: tuple[int, int, int]) -> int | None:
    """Multiply-accumulates of one forward pass at batch 1 (None if the counter fails)."""
    from torch.utils.flop_counter import FlopCounterMode

    device = next(model.parameters()).device
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
    params = sum(p.numel() for p in model.parameters())
    nonzero = sum(int(torch.count_nonzero(p)) for p in model.parameters())
    out: dict[str, float] = {"params": params, "params_nonzero": nonzero, "size_bytes": size_on_disk_bytes(model)}
    macs = count_macs(model, input_size)
    if macs is not None:
        out["macs"] = macs
    return out


def measure_latency(
    model: nn.Module, hardware: Hardware, input_size: tuple[int, int, int], spec: MeasureSpec
) -> dict[str, float]:
    """Batch latency on one target with ``torch.utils.benchmark`` (synchronises CUDA).

    Returns metrics named ``<metric>.<target>.<precision>``. Percentiles are
    over the timing blocks that ``blocked_autorange`` runs (each block averages
    a number of calls chosen so a block is long enough to time reliably).
    """
    from torch.utils import benchmark

    threads = hardware.threads or os.cpu_count() or 1
    device = torch.device(hardware.device)
    m = copy.deepcopy(model).to(device).eval()
    x = torch.randn(spec.batch_size, *input_size, device=device)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            for _ in range(spec.warmup):
                m(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            timer = benchmark.Timer(stmt="m(x)", globals={"m": m, "x": x}, num_threads=threads)
            result = timer.blocked_autorange(min_run_time=spec.min_run_time)
    finally:
        torch.set_num_threads(previous)
    times_ms = sorted(t * 1e3 for t in result.times)
    suffix = f"{hardware.name}.{hardware.precision}"
    q = statistics.quantiles(times_ms, n=10) if len(times_ms) > 1 else [times_ms[0]] * 9
    return {
        f"latency_p50_ms.{suffix}": statistics.median(times_ms),
        f"latency_p90_ms.{suffix}": q[8],
        f"latency_mean_ms.{suffix}": statistics.fmean(times_ms),
        f"latency_blocks.{suffix}": len(times_ms),
        f"throughput_ips.{suffix}": spec.batch_size / (statistics.median(times_ms) / 1e3),
    }


def measure_on_targets(
    model: nn.Module, targets: list[Hardware], input_size: tuple[int, int, int], spec: MeasureSpec
) -> tuple[dict[str, float], dict[str, Any]]:
    """Metrics for every available target, and tags saying which were skipped and why."""
    metrics: dict[str, float] = {}
    tags: dict[str, Any] = {}
    for hw in targets:
        reason = hw.probe()
        if reason:
            tags[f"kdbench.measure.{hw.name}"] = f"skipped: {reason}"
            continue
        metrics.update(measure_latency(model, hw, input_size, spec))
        tags[f"kdbench.measure.{hw.name}"] = f"measured: {hw.device}, {hw.threads or os.cpu_count()} threads, {hw.precision}"
    return metrics, tags

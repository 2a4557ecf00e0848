"""Checks that kdbench's speed measurements can be trusted (issue 5's three figures).

    python benchmarks/bench_measure.py                      # resnet18, 3x224x224, target cpu
    python benchmarks/bench_measure.py --target cpu-1t --wait-load 0.5

1. Stability: five repeated measurements (default settings) of the model at
   batch 1 on the target; the coefficient of variation of their p50 must be ≤ 5%.
2. Agreement: kdbench's p50 against a plain ``torch.utils.benchmark.Timer``
   (``blocked_autorange``, same model, input, thread count and process),
   alternated over a few rounds; the medians must agree within 5%.
3. Overhead: ``static_metrics`` + ``measure_on_targets`` of the model on one
   target at default settings (latency, throughput, memory, environment) must
   take ≤ 15 s.

CPU load from other processes spoils all three; the 1-minute load average is
printed with every figure, and ``--wait-load`` waits for a quiet machine first.
Exit status 1 when a figure misses its bound. Not part of the pytest run.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

from kdbench.core.config import MeasureSpec
from kdbench.engine.models import create_model
from kdbench.measurement.environment import environment, summary_lines
from kdbench.measurement.measure import measure_latency, measure_on_targets, static_metrics, target_threads
from kdbench.core.host import get_host

STABILITY_CV = 0.05
AGREEMENT = 0.05
OVERHEAD_S = 15.0


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f}/{five:.2f}/{fifteen:.2f}"


def wait_for_quiet(max_load: float, max_wait: float) -> None:
    deadline = time.monotonic() + max_wait
    while os.getloadavg()[0] > max_load and time.monotonic() < deadline:
        print(f"  waiting for 1-min load ≤ {max_load} ({load()})", flush=True)
        time.sleep(15)


def plain_timer_ms(model, x, threads: int, min_run_time: float) -> float:
    """Median of ``torch.utils.benchmark.Timer.blocked_autorange`` (block means), in ms."""
    from torch.utils import benchmark

    timer = benchmark.Timer(stmt="m(x)", globals={"m": model, "x": x}, num_threads=threads)
    with torch.inference_mode():
        for _ in range(5):
            model(x)
        return timer.blocked_autorange(min_run_time=min_run_time).median * 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--input-size", default="3,224,224")
    ap.add_argument("--num-classes", type=int, default=1000)
    ap.add_argument("--target", default="cpu", help="a registered hardware target (default: cpu)")
    ap.add_argument("--repeats", type=int, default=5, help="measurements for the stability figure")
    ap.add_argument("--rounds", type=int, default=3, help="kdbench/Timer alternations for the agreement figure")
    ap.add_argument("--wait-load", type=float, help="first wait (≤ 10 min) until the 1-min load average is below this")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args()

    input_size = tuple(int(v) for v in args.input_size.split(","))
    hw = get_host().hardware.get(args.target)
    reason = hw.probe()
    if reason:
        print(f"target {args.target} is not available here: {reason}")
        return 2
    threads = target_threads(hw)
    spec = MeasureSpec()  # default settings: what every cell gets
    torch.manual_seed(0)
    model = create_model(args.model, args.num_classes, input_size).eval()
    suffix = f"{hw.name}.{hw.precision}"

    for line in summary_lines():
        print(line)
    print(f"model {args.model} {args.input_size}, target {hw.name} ({hw.device}, {threads} thread{'s' if threads > 1 else ''}, {hw.precision}); "
          f"MeasureSpec {spec.model_dump()}")
    if args.wait_load is not None:
        wait_for_quiet(args.wait_load, 600)
    figures: dict[str, object] = {"model": args.model, "input_size": input_size, "target": hw.name,
                                  "threads": threads, "environment": environment()}
    ok = True

    # 3. overhead first: a cold measurement, as a cell would do it
    print(f"\n[overhead] static_metrics + measure_on_targets, default settings ({load()})", flush=True)
    t0 = time.perf_counter()
    static_metrics(model, input_size)
    t1 = time.perf_counter()
    metrics, _ = measure_on_targets(model, [hw], input_size, spec)
    t2 = time.perf_counter()
    overhead = t2 - t0
    ok_overhead = overhead <= OVERHEAD_S
    print(f"  static {t1 - t0:.2f}s + targets {t2 - t1:.2f}s = {overhead:.2f}s (bound {OVERHEAD_S:.0f}s) "
          f"{'PASS' if ok_overhead else 'FAIL'}; p50 {metrics[f'latency_p50_ms.{suffix}']:.2f} ms, "
          f"{metrics[f'throughput_ips.{suffix}']:.1f} img/s @{metrics[f'throughput_batch.{suffix}']:.0f}, "
          f"peak {metrics.get(f'peak_mem_mb.{suffix}', float('nan')):.1f} MB ({load()})")
    figures["overhead_s"] = overhead
    ok &= ok_overhead

    # 1. stability
    print(f"\n[stability] {args.repeats} measurements at batch 1 ({load()})", flush=True)
    p50s = []
    for i in range(args.repeats):
        m = measure_latency(model, hw, input_size, spec)
        p50s.append(m[f"latency_p50_ms.{suffix}"])
        print(f"  #{i + 1}: p50 {p50s[-1]:.3f} ms, p90 {m[f'latency_p90_ms.{suffix}']:.3f}, "
              f"p99 {m[f'latency_p99_ms.{suffix}']:.3f}, {m[f'latency_calls.{suffix}']:.0f} calls, "
              f"{m[f'measure_s.{suffix}']:.1f}s ({load()})", flush=True)
    cv = statistics.stdev(p50s) / statistics.fmean(p50s)
    ok_cv = cv <= STABILITY_CV
    print(f"  CV of p50 = {cv * 100:.2f}% (bound {STABILITY_CV * 100:.0f}%) {'PASS' if ok_cv else 'FAIL'}")
    figures.update(stability_p50_ms=p50s, stability_cv=cv)
    ok &= ok_cv

    # 2. agreement with a plain torch.utils.benchmark.Timer in the same process
    print(f"\n[agreement] kdbench p50 vs torch.utils.benchmark.Timer, {args.rounds} rounds ({load()})", flush=True)
    timer_model = create_model(args.model, args.num_classes, input_size).eval()
    timer_model.load_state_dict(model.state_dict())
    x = torch.randn(1, *input_size)
    ours, theirs = [], []
    for i in range(args.rounds):
        ours.append(measure_latency(model, hw, input_size, spec)[f"latency_p50_ms.{suffix}"])
        theirs.append(plain_timer_ms(timer_model, x, threads, min_run_time=2.0))
        print(f"  round {i + 1}: kdbench p50 {ours[-1]:.3f} ms, Timer median {theirs[-1]:.3f} ms ({load()})",
              flush=True)
    a, b = statistics.median(ours), statistics.median(theirs)
    diff = abs(a - b) / b
    ok_agree = diff <= AGREEMENT
    print(f"  kdbench {a:.3f} ms vs Timer {b:.3f} ms: {diff * 100:.2f}% apart (bound {AGREEMENT * 100:.0f}%) "
          f"{'PASS' if ok_agree else 'FAIL'}")
    figures.update(agreement_kdbench_ms=ours, agreement_timer_ms=theirs, agreement_rel_diff=diff)
    ok &= ok_agree

    print(f"\n{'ALL PASS' if ok else 'SOME FIGURES MISSED'} ({load()})")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(figures, fh, indent=2, default=str)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

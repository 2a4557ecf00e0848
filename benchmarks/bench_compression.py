"""Compression benchmark: what int8 PTQ and 50% structured pruning buy on this CPU.

resnet18 (timm) at 32×32 on the embedded glyphs dataset, measured at batch 64
with kdbench's own measurement (``kdbench.measurement.measure.measure_latency``: warm-up,
per-call timing, median), on all the CPU cores this process may use:

- fp32 eager: the trained model (the reference);
- fp32 compiled: ``torch.compile`` with inductor freezing (for context);
- int8 PTQ (the ``quant`` plugin): PT2E + X86InductorQuantizer, calibrated on
  8 training batches, measured as deployed (compiled, freezing on); top-1 of
  the converted model eagerly and of the compiled int8 model;
- 50% structured channel pruning (the ``prune`` plugin): magnitude, every layer,
  channels rounded to 8, fine-tuned ``--finetune-epochs``; measured eager.

Targets (issue 4): int8 PTQ ≥ 2.5× faster than fp32 eager with a top-1 drop
≤ 1 point; 50% pruning ≥ 1.8× faster. Latencies are the median over
``--rounds`` rounds that alternate the models, so that a change in the
machine's load hits every model alike; the 1-minute load average is printed
before and after (other processes make every figure worse).

    python benchmarks/bench_compression.py            # ~5-10 min on 2 idle cores
    python benchmarks/bench_compression.py --check    # exit 1 when a target is missed
    OMP_NUM_THREADS=1 python benchmarks/bench_compression.py --threads 1   # on a loaded machine

Training and fine-tuning use torch's default threads (``OMP_NUM_THREADS``);
measurement sets its own (``--threads``).

Not part of the test run.
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time

import torch
from torch.utils.data import DataLoader


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} on {os.cpu_count()} CPUs"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--epochs", type=int, default=4, help="training epochs of the fp32 model")
    parser.add_argument("--finetune-epochs", type=int, default=2, help="fine-tuning epochs after pruning")
    parser.add_argument("--num-train", type=int, default=5000)
    parser.add_argument("--num-test", type=int, default=2048, help="a multiple of the batch keeps one compiled shape")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--min-run-time", type=float, default=2.0, help="seconds of timing per model per round")
    parser.add_argument("--threads", type=int, default=None, help="measurement threads (default: every physical core)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()

    import kdbench
    from kdbench.core.config import MeasureSpec, Recipe
    from kdbench.engine.evaluate import evaluate
    from kdbench.engine.loop import train
    from kdbench.engine.models import create_model
    from kdbench.engine.seeding import seed_everything
    from kdbench.measurement.measure import measure_latency, target_threads
    from kdbench.engine.objectives import CrossEntropy
    from kdbench.running.pipeline import deploy_targets, standalone_context
    from kdbench_plugins.datasets import build_glyphs
    from kdbench_plugins.methods.prune import StructuredPrune
    from kdbench_plugins.methods.quant import StaticInt8

    print(f"before: {load()}", flush=True)
    data = build_glyphs(num_train=args.num_train, num_test=args.num_test)
    recipe = Recipe(epochs=args.epochs, batch_size=64, lr=0.05, nesterov=True, warmup_epochs=0)
    device = torch.device("cpu")
    generator = seed_everything(0)
    model = create_model(args.arch, data.num_classes, data.input_size)
    t0 = time.perf_counter()
    train(model, CrossEntropy(), None, data, recipe, device, generator,
          on_epoch=lambda r: print(f"  train epoch {r.epoch}/{args.epochs}: test top-1 {r.test_top1:.2f}%", flush=True))
    model.eval()
    print(f"trained {args.arch} in {time.perf_counter() - t0:.0f}s", flush=True)
    test_loader = DataLoader(data.test, batch_size=args.batch)
    top1 = {"fp32 eager": evaluate(model, test_loader, device).top1}

    ctx = standalone_context(data, recipe, args.arch, arch_kwargs={"num_classes": data.num_classes, "in_chans": 3},
                             name="quant")
    quantizer = StaticInt8(calibration_batches=8)
    int8 = quantizer.apply(copy.deepcopy(model), ctx)
    top1["int8 PTQ (converted, eager)"] = evaluate(int8, test_loader, device).top1
    import torch._inductor.config as inductor_config

    with inductor_config.patch(freezing=True), torch.inference_mode():
        compiled = torch.compile(copy.deepcopy(int8), dynamic=False)
        correct = n = 0
        for images, labels, _ in test_loader:
            correct += int((compiled(images).argmax(1) == labels).sum())
            n += len(labels)
    top1["int8 PTQ"] = 100.0 * correct / n
    del compiled

    ctx = standalone_context(data, recipe, args.arch, arch_kwargs={"num_classes": data.num_classes, "in_chans": 3},
                             name="prune")
    pruner = StructuredPrune(ratio=0.5, finetune="plain", finetune_epochs=args.finetune_epochs, finetune_lr=0.01)
    pruned = pruner.apply(copy.deepcopy(model), ctx)
    top1["pruned 50%"] = evaluate(pruned, test_loader, device).top1
    top1["fp32 compiled"] = top1["fp32 eager"]

    cpu = kdbench.Hardware("cpu", "cpu", threads=args.threads)
    cpu_compile = kdbench.Hardware("cpu-compile", "cpu", mode="compile", threads=args.threads)
    (cpu_int8,) = deploy_targets([cpu], quantizer.deployment(int8))
    spec = MeasureSpec(batch_size=args.batch, throughput_batch_size=0, warmup=5, min_run_time=args.min_run_time,
                       min_calls=10, max_run_time=max(10.0, 3 * args.min_run_time))
    runs = {"fp32 eager": (model, cpu, "fp32"), "fp32 compiled": (model, cpu_compile, "fp32"),
            "int8 PTQ": (int8, cpu_int8, "int8"), "pruned 50%": (pruned, cpu, "fp32")}
    p50: dict[str, list[float]] = {k: [] for k in runs}
    compile_s: dict[str, float] = {}
    print(f"measuring at batch {args.batch}, {target_threads(cpu)} threads, {args.rounds} rounds: {load()}", flush=True)
    for r in range(args.rounds):
        for name, (m, hw, precision) in runs.items():
            out = measure_latency(m, hw, data.input_size, spec, precision)
            p50[name].append(out[f"latency_p50_ms.{hw.name}.{precision}"])
            if f"compile_s.{hw.name}.{precision}" in out:
                compile_s[name] = out[f"compile_s.{hw.name}.{precision}"]
        print(f"  round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f} ms" for k, v in p50.items()) + f" ({load()})",
              flush=True)

    ref = statistics.median(p50["fp32 eager"])
    print(f"\n{args.arch} at 32×32, batch {args.batch}, CPU ({target_threads(cpu)} threads); after: {load()}")
    print(f"{'model':<16}{'p50 ms':>10}{'speed-up':>10}{'top-1 %':>10}{'Δ top-1':>10}{'compile s':>11}")
    for name in runs:
        lat = statistics.median(p50[name])
        drop = top1[name] - top1["fp32 eager"]
        comp = f"{compile_s[name]:.1f}" if name in compile_s else "—"
        print(f"{name:<16}{lat:>10.2f}{ref / lat:>9.2f}×{top1[name]:>10.2f}{drop:>+10.2f}{comp:>11}")
    print(f"(int8 converted model run eagerly: top-1 {top1['int8 PTQ (converted, eager)']:.2f}%; "
          f"pruned params {sum(p.numel() for p in pruned.parameters()) / 1e6:.2f}M of "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M)")

    int8_speedup = ref / statistics.median(p50["int8 PTQ"])
    prune_speedup = ref / statistics.median(p50["pruned 50%"])
    int8_drop = top1["fp32 eager"] - top1["int8 PTQ"]
    checks = [
        (f"int8 PTQ ≥ 2.5× faster than fp32 eager: {int8_speedup:.2f}×", int8_speedup >= 2.5),
        (f"int8 PTQ top-1 drop ≤ 1 point: {int8_drop:.2f}", int8_drop <= 1.0),
        (f"50% structured pruning ≥ 1.8× faster: {prune_speedup:.2f}×", prune_speedup >= 1.8),
    ]
    for text, ok in checks:
        print(("PASS  " if ok else "MISS  ") + text)
    return 1 if args.check and not all(ok for _, ok in checks) else 0


if __name__ == "__main__":
    sys.exit(main())

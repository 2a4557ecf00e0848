"""Runtimes benchmark: eager PyTorch against ONNX Runtime and OpenVINO, fp32 and int8, on this CPU.

resnet18 (timm), trained on the embedded glyphs at their 32×32 for ``--epochs``, then deployed at
``--size`` (224 by default; glyph images upsampled bilinearly) and measured with kdbench's measurement
phase (:func:`kdbench.measurement.phase.measure_group`: every model × target in ``--rounds`` interleaved
rounds, median of the rounds, round-to-round CV), at batch 1 (per-call latency) and batch 32 (throughput):

- eager fp32 (``cpu``), the reference;
- ONNX Runtime fp32 and int8 (``ort-cpu``; int8: ORT's static QDQ quantization of the fp32 model);
- OpenVINO fp32 and int8 (``openvino-cpu``; int8: NNCF post-training quantization);
- kdbench's PT2E int8 (the ``quant`` plugin: X86InductorQuantizer, compiled with freezing, as deployed),
  and the same int8 graph exported to ONNX Runtime.

Every quantizer is calibrated on 128 training images; each int8 model's top-1 agreement
with the fp32 model is taken on ``--agreement-images`` test images. The runtime targets check their
exported fp32 model against PyTorch before timing (max |Δlogit| printed). The 1-minute load average is
printed before and after (other processes make every figure worse; the CV column says how steady each
figure was).

    python benchmarks/bench_runtimes.py                 # ~10 min on 2 idle cores
    python benchmarks/bench_runtimes.py --epochs 0 --size 64 --rounds 1 --min-run-time 0.05   # a quick check

Needs the runtimes extra (``pip install -e ".[runtimes]"``). Not part of the test run.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time

import torch
import torch.nn.functional as F


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} on {os.cpu_count()} CPUs"


class Upsampled(torch.utils.data.Dataset):
    """A dataset's images resized to ``size``×``size`` (bilinear), its other fields as they are."""

    def __init__(self, base, size: int):
        self.base, self.size = base, size

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        image, *rest = self.base[i]
        image = F.interpolate(image[None], size=(self.size, self.size), mode="bilinear", align_corners=False)[0]
        return (image, *rest)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs at 32×32 (0: BN statistics only)")
    parser.add_argument("--num-train", type=int, default=3000)
    parser.add_argument("--size", type=int, default=224, help="deployed input size (glyphs upsampled)")
    parser.add_argument("--agreement-images", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--min-run-time", type=float, default=2.0, help="seconds of timing per model × target")
    parser.add_argument("--throughput-batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="measurement threads (default: every physical core)")
    args = parser.parse_args()

    import kdbench
    from kdbench.core.config import MeasureSpec, Recipe
    from kdbench.core.host import get_host
    from kdbench.engine.evaluate import evaluate
    from kdbench.engine.loop import train
    from kdbench.engine.models import create_model
    from kdbench.engine.objectives import CrossEntropy
    from kdbench.engine.seeding import seed_everything
    from kdbench.measurement.phase import measure_group
    from kdbench.measurement.runtimes import RuntimeInputs
    from kdbench.measurement.runtimes.base import missing
    from kdbench.measurement.targets import target_threads, variant
    from kdbench.running.pipeline import deploy_targets, standalone_context
    from kdbench_plugins.datasets import build_glyphs
    from kdbench_plugins.methods.quant import StaticInt8

    why = missing("onnx", "onnxscript", "onnxruntime", "openvino", "nncf")
    if why:
        print(f"bench_runtimes: {why}", file=sys.stderr)
        return 2
    print(f"before: {load()}", flush=True)
    glyphs = build_glyphs(num_train=args.num_train, num_test=max(512, args.agreement_images))
    recipe = Recipe(epochs=max(1, args.epochs), batch_size=64, lr=0.05, nesterov=True, warmup_epochs=0)
    device = torch.device("cpu")
    generator = seed_everything(0)
    model = create_model(args.arch, glyphs.num_classes, glyphs.input_size)
    t0 = time.perf_counter()
    if args.epochs > 0:
        train(model, CrossEntropy(), None, glyphs, recipe, device, generator,
              on_epoch=lambda r: print(f"  train epoch {r.epoch}/{args.epochs}: test top-1 {r.test_top1:.2f}%",
                                       flush=True))
    else:  # untrained weights, BatchNorm statistics from the data: logits that are not all ties
        model.train()
        with torch.no_grad():
            for images, *_ in torch.utils.data.DataLoader(glyphs.train, batch_size=64):
                model(images)
    model.eval()
    print(f"trained {args.arch} in {time.perf_counter() - t0:.0f}s", flush=True)

    size = (3, args.size, args.size)
    data = kdbench.DataBundle(Upsampled(glyphs.train, args.size), Upsampled(glyphs.test, args.size),
                              glyphs.num_classes, size, glyphs.mean, glyphs.std)
    top1_32 = evaluate(model, torch.utils.data.DataLoader(glyphs.test, batch_size=64), device).top1
    top1 = evaluate(model, torch.utils.data.DataLoader(data.test, batch_size=32), device).top1
    print(f"fp32 top-1: {top1_32:.2f}% at 32×32, {top1:.2f}% at {args.size}×{args.size} (upsampled)", flush=True)

    inputs = RuntimeInputs.from_data(data, test=args.agreement_images)
    ctx = standalone_context(data, recipe, args.arch, arch_kwargs={"num_classes": data.num_classes, "in_chans": 3},
                             name="quant")
    quantizer = StaticInt8(calibration_batches=4, calibration_batch_size=32)  # the same 128 images
    int8 = quantizer.apply(copy.deepcopy(model), ctx)
    with torch.no_grad():
        ref, got = model(inputs.images), int8(inputs.images)
    pt2e_agreement = float((ref.argmax(1) == got.argmax(1)).float().mean())

    host = get_host()
    cpu, ort, ov = (variant(host.hardware.get(n), threads=args.threads) for n in ("cpu", "ort-cpu", "openvino-cpu"))
    deployed = deploy_targets([cpu, ort], quantizer.deployment(int8))
    int8_inputs = RuntimeInputs(inputs.images, inputs.calibration, model, quantized=True)
    spec = MeasureSpec(batch_size=1, throughput_batch_size=args.throughput_batch, warmup=5,
                       min_run_time=args.min_run_time, min_calls=50, throughput_min_run_time=args.min_run_time,
                       max_run_time=max(10.0, 3 * args.min_run_time), rounds=args.rounds)
    print(f"measuring at batch 1 and {args.throughput_batch}, {target_threads(cpu)} threads, {args.rounds} rounds: "
          f"{load()}", flush=True)
    t0 = time.perf_counter()
    got = measure_group([("fp32", model, [cpu, ort, ov], size, inputs),
                         ("pt2e", int8, deployed, size, int8_inputs)], spec)
    print(f"measured in {time.perf_counter() - t0:.0f}s; after: {load()}\n")

    rows = [  # (label, key, target, precision, agreement of an int8 model with fp32)
        ("eager fp32", "fp32", cpu.name, "fp32", None),
        ("ORT fp32", "fp32", ort.name, "fp32", None),
        ("ORT int8 (ORT quantization)", "fp32", ort.name, "int8", "runtime"),
        ("OpenVINO fp32", "fp32", ov.name, "fp32", None),
        ("OpenVINO int8 (NNCF)", "fp32", ov.name, "int8", "runtime"),
        ("kdbench PT2E int8 (compiled)", "pt2e", cpu.name, "int8", pt2e_agreement),
        ("ORT int8 (kdbench's graph)", "pt2e", ort.name, "int8", "runtime"),
    ]
    m0 = got["fp32"].metrics
    eager = m0[f"latency_p50_ms.{cpu.name}.fp32"]
    print(f"{args.arch} at {args.size}×{args.size}, CPU ({target_threads(cpu)} threads); speed-up: against eager fp32, "
          "and against fp32 on the same runtime")
    print(f"{'model':<30}{'b1 p50 ms':>10}{'CV':>6}{'b' + str(args.throughput_batch) + ' ms':>9}{'img/s':>8}"
          f"{'vs eager':>9}{'vs fp32':>8}{'top-1 agr':>10}")
    fastest = ("", float("inf"))
    for label, key, target, precision, agreement in rows:
        m, s = got[key].metrics, f"{target}.{precision}"
        lat = m.get(f"latency_p50_ms.{s}")
        if lat is None:
            print(f"{label:<30}  not measured: {got[key].tags.get(f'kdbench.measure.{s}', '?')}")
            continue
        ips = m[f"throughput_ips.{s}"]
        fp32_here = m0.get(f"latency_p50_ms.{target}.fp32", float("nan"))
        if agreement == "runtime":
            agreement = m.get(f"export_top1_agreement.{s}")
        agr = f"{agreement:.1%}" if isinstance(agreement, float) else "—"
        print(f"{label:<30}{lat:>10.2f}{m.get(f'latency_cv.{s}', float('nan')):>6.1%}"
              f"{args.throughput_batch * 1e3 / ips:>9.1f}{ips:>8.0f}{eager / lat:>8.2f}×{fp32_here / lat:>7.2f}×{agr:>10}")
        if lat < fastest[1]:
            fastest = (label, lat)
    for target in (ort.name, ov.name):
        diff = m0.get(f"export_max_abs_diff.{target}.fp32")
        if diff is not None:
            print(f"{target} fp32 export vs PyTorch: max |Δlogit| {diff:.2g}")
    other = m0.get("measure_other_cpu")
    if other is not None:
        print(f"other processes used {other:.0%} of the CPU while measuring")
    print(f"fastest at batch 1: {fastest[0]}, {eager / fastest[1]:.2f}× eager fp32")
    return 0


if __name__ == "__main__":
    sys.exit(main())

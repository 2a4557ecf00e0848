"""``quant``: static int8 post-training quantization for x86 CPUs, PT2E with
torchao's ``X86InductorQuantizer`` (Jacob et al. 2018, "Quantization and
Training of Neural Networks for Efficient Integer-Arithmetic-Only
Inference", arXiv:1712.05877; PT2E export quantization, PyTorch/torchao).

1. The trained float model is exported (``torch.export``, dynamic batch).
2. ``prepare_pt2e`` inserts observers where ``X86InductorQuantizer`` wants
   int8 tensors: activations per tensor (uint8, affine), weights per output
   channel (int8, symmetric); conv+BN are folded.
3. Calibration: ``calibration_batches`` training batches of
   ``calibration_batch_size`` (default: the recipe's batch size) run through
   the observed model.
4. ``convert_pt2e`` turns observers into quantize/dequantize pairs (weights
   stored as int8).

Deployment: ``torch.compile`` (inductor) with freezing on, which fuses the
q/dq patterns into oneDNN int8 kernels; compile time is reported apart from
steady-state latency. Metrics are labelled ``int8``; targets other than an
x86 CPU are recorded as not applicable. Top-1 is scored on the converted
model run eagerly (its q/dq numerics; the compiled kernels agree with it to
float rounding). Parameters and MACs are the float model's; size on disk is
the saved int8 program's (``student_int8.pt2``, :func:`load_exported`).
"""
from __future__ import annotations

import time

import torch
from torch import nn

import kdbench

from ._pt2e import Int8X86Stage, eval_mode, export, float_copy, strip_unused, x86_quantizer


class StaticInt8(Int8X86Stage):
    def __init__(self, calibration_batches: int = 8, calibration_batch_size: int | None = None):
        if calibration_batches < 1:
            raise kdbench.ConfigError(f"quant: calibration_batches must be at least 1, got {calibration_batches}")
        self.calibration_batches = int(calibration_batches)
        self.calibration_batch_size = calibration_batch_size
        super().__init__()

    def apply(self, model: nn.Module, ctx: kdbench.StageContext) -> nn.Module:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        self.keep_float(model, ctx)
        batches = ctx.train_batches(self.calibration_batches, self.calibration_batch_size)
        t0 = time.perf_counter()
        prepared = prepare_pt2e(export(float_copy(model, ctx), batches[0][:2]), x86_quantizer())
        with torch.no_grad():
            for images in batches:
                prepared(images)
        quantized = eval_mode(convert_pt2e(prepared))
        strip_unused(quantized)  # the float weights, now folded into int8 constants
        ctx.metrics["quantize_seconds"] = time.perf_counter() - t0
        ctx.metrics["calibration_images"] = sum(len(b) for b in batches)
        with torch.no_grad():
            ref, out = self._float(batches[0]), quantized(batches[0])
        ctx.metrics["calibration_max_abs_diff"] = float((ref - out).abs().max())
        ctx.metrics["calibration_agreement"] = float((ref.argmax(1) == out.argmax(1)).float().mean())
        return quantized


@kdbench.hookimpl
def register_methods(register):
    register(kdbench.Method(
        "quant", StaticInt8, kind="quantizer",
        summary="static int8 PTQ for x86 CPUs: PT2E + X86InductorQuantizer, calibrated; measured compiled (freezing)",
        paper="Jacob et al. 2018, arXiv:1712.05877; torchao PT2E",
    ))

"""``qat``: int8 quantization-aware training for x86 CPUs, PT2E with torchao's
``X86InductorQuantizer`` (Jacob et al. 2018, arXiv:1712.05877, §3; PT2E QAT).

1. The trained float model is exported in training mode (``torch.export``,
   dynamic batch) and ``prepare_qat_pt2e`` inserts fake-quantize modules
   (int8 activations per tensor, int8 weights per channel) and folds each
   BatchNorm into its conv the QAT way (BN statistics still update).
2. The fake-quantized model is fine-tuned for ``epochs`` (default: half the
   recipe's epochs, at least one) with the host's training loop, at ``lr``
   (default: a tenth of the recipe's, as QAT starts from a trained model):
   ``finetune="plain"`` (cross-entropy) or ``"kd"`` (KD from the float model
   it started from, at ``T``/``alpha``).
3. ``convert_pt2e`` gives the same int8 graph as ``quant`` (PTQ), deployed and
   measured the same way: ``torch.compile`` with freezing on an x86 CPU,
   labelled ``int8``; other targets are not applicable.

A BatchNorm scale that is exactly 0 (timm zero-initialises the last BN of
residual blocks) is set to 1e-6 first: QAT's conv–BN folding divides by it.
"""
from __future__ import annotations

import time

from torch import nn

import kdbench

from ._pt2e import (
    Int8X86Stage, eval_mode, export, float_copy, strip_unused, unzero_batchnorm, x86_quantizer,
)
from .prune import FINETUNES


class QAT(Int8X86Stage):
    def __init__(self, epochs: int | None = None, lr: float | None = None, finetune: str = "plain",
                 T: float = 4.0, alpha: float = 0.9):
        if finetune not in ("plain", "kd"):
            raise kdbench.ConfigError(f"qat: finetune must be 'plain' or 'kd', got {finetune!r}")
        if epochs is not None and epochs < 1:
            raise kdbench.ConfigError(f"qat: epochs must be at least 1, got {epochs}")
        assert finetune in FINETUNES
        self.epochs, self.lr, self.finetune, self.T, self.alpha = epochs, lr, finetune, T, alpha
        super().__init__()

    def apply(self, model: nn.Module, ctx: kdbench.StageContext) -> nn.Module:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e

        self.keep_float(model, ctx)
        start = float_copy(model, ctx)
        ctx.metrics["zero_bn_scales"] = unzero_batchnorm(start)
        example = ctx.train_batches(1)[0][:2]
        prepared = prepare_qat_pt2e(export(start.train(), example), x86_quantizer(qat=True))
        eval_mode(prepared)  # .train()/.eval() now switch the graph's BN/dropout
        prepared.to(ctx.device)
        epochs = self.epochs if self.epochs is not None else max(1, ctx.recipe.epochs // 2)
        distiller = ctx.distiller("kd", T=self.T, alpha=self.alpha) if self.finetune == "kd" else None
        ctx.finetune(prepared, epochs, distiller=distiller, teacher=self._float if self.finetune == "kd" else None,
                     lr=self.lr or ctx.recipe.lr / 10)
        t0 = time.perf_counter()
        quantized = eval_mode(convert_pt2e(prepared.cpu()))
        strip_unused(quantized)
        ctx.metrics["convert_seconds"] = time.perf_counter() - t0
        ctx.metrics["qat_epochs"] = epochs
        return quantized


@kdbench.hookimpl
def register_methods(register):
    register(kdbench.Method(
        "qat", QAT, kind="quantizer",
        summary="int8 quantization-aware training for x86 CPUs (PT2E prepare_qat + fine-tune), measured compiled",
        paper="Jacob et al. 2018, arXiv:1712.05877; torchao PT2E QAT",
    ))

"""``quant_linear``: dynamic or weight-only quantization of Linear layers with
torchao's ``quantize_`` — for Linear-heavy models (ViTs, MLP heads).

``scheme``:

- ``int8_dynamic``: int8 weights (per channel) and int8 activations quantized
  on the fly per token (``Int8DynamicActivationInt8WeightConfig``);
- ``int8_weight_only``: int8 weights, float activations (``Int8WeightOnlyConfig``);
- ``int4_weight_only``: int4 weights in groups of ``group_size``
  (``Int4WeightOnlyConfig``, tinygemm layout). torchao's int4 kernels run on
  CUDA GPUs only: the stage quantizes on the training device when it is CUDA,
  refuses with the reason otherwise, and CPU targets are recorded as not
  applicable.

Only ``nn.Linear`` layers are converted (convolutions stay float); the
classifier too unless ``classifier=False``. Weights become torchao tensor
subclasses; the model is measured the way torchao deploys it, with
``torch.compile`` (freezing on CPU), labelled ``int8``/``int4``. The artifact
is the ``state_dict`` (torchao tensors; loads with ``weights_only=True`` once
torchao is imported). Parameters and MACs are the float model's.
"""
from __future__ import annotations

import torch
from torch import nn

import kdbench

from .prune import classifier_of, clone_model

SCHEMES = ("int8_dynamic", "int8_weight_only", "int4_weight_only")


def _config(scheme: str, group_size: int):
    from torchao.quantization import Int4WeightOnlyConfig, Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig

    if scheme == "int8_dynamic":
        return Int8DynamicActivationInt8WeightConfig()
    if scheme == "int8_weight_only":
        return Int8WeightOnlyConfig()
    return Int4WeightOnlyConfig(group_size=group_size, int4_packing_format="tile_packed_to_4d")


class LinearQuant(kdbench.Compressor):
    terminal = True

    def __init__(self, scheme: str = "int8_dynamic", group_size: int = 32, classifier: bool = True):
        if scheme not in SCHEMES:
            raise kdbench.ConfigError(f"quant_linear: scheme must be one of {', '.join(SCHEMES)}, got {scheme!r}")
        if group_size not in (32, 64, 128, 256):
            raise kdbench.ConfigError(f"quant_linear: group_size must be 32, 64, 128 or 256, got {group_size}")
        self.scheme, self.group_size, self.classifier = scheme, int(group_size), bool(classifier)
        self._float: nn.Module | None = None

    def apply(self, model: nn.Module, ctx: kdbench.StageContext) -> nn.Module:
        from torchao.quantization import quantize_

        int4 = self.scheme == "int4_weight_only"
        if int4 and ctx.device.type != "cuda":
            raise kdbench.NotApplicableError(
                "quant_linear(scheme=int4_weight_only): torchao's int4 weight-only kernels run on CUDA GPUs only; "
                f"this cell runs on {ctx.device.type}"
            )
        self._float = clone_model(model, ctx).cpu().eval()
        quantized = clone_model(model, ctx)
        if int4:
            quantized = quantized.to(device=ctx.device, dtype=torch.bfloat16)
        else:
            quantized = quantized.cpu()
        skip = set() if self.classifier else {id(m) for m in classifier_of(quantized)}
        linears = [m for m in quantized.modules() if isinstance(m, nn.Linear) and id(m) not in skip]
        if not linears:
            raise kdbench.NotApplicableError("quant_linear: the model has no Linear layer to quantize")
        quantize_(quantized, _config(self.scheme, self.group_size),
                  filter_fn=lambda m, fqn: isinstance(m, nn.Linear) and id(m) not in skip)
        ctx.metrics["quantized_linears"] = len(linears)
        ctx.metrics["quantized_params"] = sum(m.weight.numel() for m in linears)
        return quantized

    def deployment(self, model: nn.Module) -> kdbench.Deployment:
        if self.scheme == "int4_weight_only":
            return kdbench.Deployment(mode="compile", precision="int4", devices=("cuda",),
                                      reason="torchao int4 weight-only kernels (tinygemm) run on CUDA GPUs only")
        return kdbench.Deployment(mode="compile", precision="int8")

    def float_model(self, model: nn.Module) -> nn.Module:
        return self._float if self._float is not None else model


@kdbench.hookimpl
def register_methods(register):
    register(kdbench.Method(
        "quant_linear", LinearQuant, kind="quantizer",
        summary="torchao quantize_ of Linear layers: int8 dynamic, int8 or int4 weight-only; measured compiled",
        paper="torchao (PyTorch), quantize_ API",
    ))

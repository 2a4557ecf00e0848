"""Shared by ``quant`` and ``qat``: PT2E export quantization for x86 CPUs with torchao.

The flow (torchao's PT2E quantization; ``torch.ao.quantization`` is deprecated):
``torch.export`` (batch dimension dynamic, so one program serves every batch
size) → ``prepare_pt2e`` / ``prepare_qat_pt2e`` with ``X86InductorQuantizer``
(int8 activations, per-channel int8 weights) → calibration or training →
``convert_pt2e`` (quantize/dequantize pairs around float ops). It runs fast
once ``torch.compile`` (inductor) with freezing fuses those patterns into
oneDNN int8 kernels, so the model's :data:`deployment` is "compile, int8, x86
CPU": other targets are recorded as not applicable.

torchao is imported lazily (it is slow to import and not needed to list plugins).
"""
from __future__ import annotations

import platform

import torch
from torch import nn

import kdbench

X86 = ("x86_64", "amd64", "i386", "i686", "x86")


def is_x86() -> bool:
    return platform.machine().lower() in X86


def _x86_check(hardware: kdbench.Hardware) -> str | None:
    if not is_x86():
        return f"X86InductorQuantizer int8 kernels need an x86 CPU; this one is {platform.machine()}"
    return None


#: How an x86 int8 PT2E model is deployed (and measured).
INT8_X86 = kdbench.Deployment(
    mode="compile", precision="int8", devices=("cpu",), check=_x86_check,
    reason="X86InductorQuantizer int8 kernels (oneDNN, via inductor) run on x86 CPUs only",
)


def _dynamic_batch(example: torch.Tensor):
    from torch.export import Dim

    return ({0: Dim("batch", min=1, max=65536)},)


def export(model: nn.Module, example: torch.Tensor) -> torch.fx.GraphModule:
    """``torch.export`` with a dynamic batch dimension, as a GraphModule."""
    return torch.export.export(model, (example,), dynamic_shapes=_dynamic_batch(example)).module()


def x86_quantizer(qat: bool = False):
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq

    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config(is_qat=qat))
    return quantizer


def strip_unused(graph: torch.fx.GraphModule) -> int:
    """Drop parameters and buffers no node reads; returns how many elements went.

    After ``convert_pt2e`` folds each weight's quantisation into an int8
    constant, the float weight stays registered but unused: without this the
    saved program would carry both.
    """
    used = {n.target for n in graph.graph.nodes if n.op == "get_attr"}
    dropped = 0
    for kind in ("_parameters", "_buffers"):
        for name, tensor in list(getattr(graph, "named_" + kind[1:])()):
            if name in used or tensor is None:
                continue
            owner_name, _, leaf = name.rpartition(".")
            owner = graph.get_submodule(owner_name) if owner_name else graph
            if leaf in getattr(owner, kind):
                del getattr(owner, kind)[leaf]
                dropped += tensor.numel()
    return dropped


def eval_mode(graph: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Let ``.train()``/``.eval()`` work on an exported graph (the host's loop and measurement call them)."""
    from torchao.quantization.pt2e import allow_exported_model_train_eval, move_exported_model_to_eval

    allow_exported_model_train_eval(graph)
    move_exported_model_to_eval(graph)
    return graph


def unzero_batchnorm(model: nn.Module, eps: float = 1e-6) -> int:
    """Give BatchNorm scales that are exactly 0 a tiny magnitude; returns how many.

    QAT's conv–BN folding divides by the BN scale: a γ of exactly 0 (timm
    zero-initialises the last BN of residual blocks) makes it NaN. ``eps``
    changes the model by at most ``eps`` times that branch's activations.
    """
    n = 0
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None:
                zero = m.weight == 0
                n += int(zero.sum())
                m.weight[zero] = eps
    return n


def save_exported(model: nn.Module, path: str, example: torch.Tensor) -> None:
    """The quantized graph as a ``torch.export`` program (``.pt2``): int8 weights, batch dimension dynamic."""
    program = torch.export.export(model, (example,), dynamic_shapes=_dynamic_batch(example))
    torch.export.save(program, path)


def load_exported(path: str) -> nn.Module:
    """A saved quantized program, runnable (``torch.compile`` it with freezing to run it fast)."""
    return torch.export.load(path).module()


def float_copy(model: nn.Module, ctx: kdbench.StageContext) -> nn.Module:
    """An independent float copy on CPU (see ``prune.clone_model``: deepcopy is not safe for every model)."""
    from .prune import clone_model

    return clone_model(model, ctx).cpu().eval()


class Int8X86Stage(kdbench.Compressor):
    """What PTQ (``quant``) and QAT (``qat``) share: a terminal stage whose int8 PT2E program runs on x86
    CPUs compiled with freezing, described by the float model it came from and saved as an exported program."""

    terminal = True
    artifact_name = "student_int8.pt2"

    def __init__(self) -> None:
        self._float: nn.Module | None = None
        self._input_size: tuple[int, ...] | None = None

    def keep_float(self, model: nn.Module, ctx: kdbench.StageContext) -> None:
        """Remember a float copy of the stage's input model (its params and MACs describe the int8 one)."""
        self._float = float_copy(model, ctx)
        self._input_size = tuple(ctx.input_size)

    def deployment(self, model: nn.Module) -> kdbench.Deployment:
        return INT8_X86

    def float_model(self, model: nn.Module) -> nn.Module:
        return self._float if self._float is not None else model

    def save(self, model: nn.Module, path: str) -> None:
        assert self._input_size is not None, "save() follows apply()"
        save_exported(model, path, torch.randn(2, *self._input_size))

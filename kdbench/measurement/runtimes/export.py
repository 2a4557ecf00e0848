"""From a PyTorch model to an ONNX file, and whether the file computes what the model computes.

:func:`export_onnx` tries the dynamo exporter (``torch.onnx.export(..., dynamo=True)``, which needs
onnxscript) first and the TorchScript exporter second, with the batch dimension dynamic; what it returns
says which exporter made the file, or why neither could (the model is then not applicable on the runtime
targets, with that reason). :func:`agreement` compares a runtime's logits with the model's on the same
images: the largest absolute logit difference and the share of images with the same top-1 class.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

INPUT_NAME, OUTPUT_NAME, BATCH_DIM = "input", "logits", "batch"
EXPORT_BATCH = 2  # the example's batch: 1 would let an exporter specialise the batch dimension away
FP32_TOLERANCE = 1e-3  # an fp32 runtime's largest logit difference, relative to the largest logit magnitude


@dataclass
class Exported:
    """An ONNX file (``path``) and the exporter that made it, or ``reason``: why no exporter could."""

    path: str | None
    exporter: str = ""  # "dynamo" or "torchscript"
    reason: str = ""
    dynamo_error: str = ""  # why dynamo failed when the TorchScript exporter made the file

    @property
    def ok(self) -> bool:
        return self.path is not None


def _first_line(exc: BaseException) -> str:
    """The root cause of an exporter's error, on one line (the exporters wrap it in pages of advice)."""
    root = exc
    while root.__cause__ is not None:
        root = root.__cause__
    text = re.sub(r"\x1b\[[0-9;]*m", "", " ".join(str(root).split())) or type(root).__name__
    return f"{type(root).__name__}: {text}"[:300]


@contextlib.contextmanager
def _no_native_stdout():
    """Silence file descriptor 1 too: the TorchScript exporter prints whole graphs from C++ on failure."""
    try:
        saved = os.dup(1)
    except OSError:  # no usable descriptor 1 (some embedded interpreters): nothing to silence
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _quietly(fn: Callable[[], object]) -> object:
    """Run an exporter without its progress lines, graph dumps and deprecation warnings on the console."""
    sys.stdout.flush()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), _no_native_stdout():
        warnings.simplefilter("ignore")
        return fn()


def export_onnx(model: nn.Module, input_size: tuple[int, ...], path: str) -> Exported:
    """Export ``model`` (eval mode, CPU) to ``path``: dynamo exporter, else TorchScript exporter."""
    example = torch.randn(EXPORT_BATCH, *input_size)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    errors: list[str] = []
    try:
        from torch.export import Dim

        program = _quietly(lambda: torch.onnx.export(
            model, (example,), dynamo=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: Dim(BATCH_DIM)},), verbose=False, external_data=False))
        _quietly(lambda: program.save(path, external_data=False))  # type: ignore[union-attr]
        return Exported(path, "dynamo")
    except Exception as exc:
        errors.append("dynamo exporter: " + _first_line(exc))
    try:
        _quietly(lambda: torch.onnx.export(
            model, (example,), path, dynamo=False, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: BATCH_DIM}, OUTPUT_NAME: {0: BATCH_DIM}}))
        return Exported(path, "torchscript", dynamo_error=errors[0])
    except Exception as exc:
        errors.append("TorchScript exporter: " + _first_line(exc))
    return Exported(None, reason="does not export to ONNX (" + "; ".join(errors) + ")")


@dataclass
class Agreement:
    """How a runtime's logits compare with a reference's on the same images."""

    max_abs_diff: float
    top1_agreement: float
    images: int
    scale: float  # the largest reference logit magnitude

    def within(self, relative: float) -> bool:
        return self.max_abs_diff <= relative * max(1.0, self.scale)

    def text(self) -> str:
        return f"max |Δlogit| {self.max_abs_diff:.3g}, top-1 agreement {self.top1_agreement:.1%} on {self.images} images"


def reference_logits(model: nn.Module, images: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model(images).float().numpy()


def agreement(reference: np.ndarray, got: np.ndarray) -> Agreement:
    return Agreement(float(np.abs(reference - got).max()), float((reference.argmax(1) == got.argmax(1)).mean()),
                     int(reference.shape[0]), float(np.abs(reference).max()))

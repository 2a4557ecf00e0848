"""What a deployment runtime implements, and what a measurement hands it besides the model.

A :class:`Runtime` turns an ONNX file into something that runs a batch (a session), and, for int8, quantizes
a float ONNX file with its own post-training quantization. A hardware target measures through a runtime when
its ``Hardware.runtime`` is set (the ``ort-cpu`` and ``openvino-cpu`` targets of ``kdbench_plugins.runtimes``);
:mod:`.measure` does the export, the agreement check, the caching and the timing, the same way for all.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

EXTRA = "runtimes"  # the optional dependency group that installs every runtime
TEST_IMAGES, CALIBRATION_IMAGES, CALIBRATION_BATCH = 64, 128, 32  # a cell's images for runtime targets
INSTALL_HINT = f"pip install -e '.[{EXTRA}]' (or pip install 'kdbench[{EXTRA}]')"


class NotApplicable(Exception):
    """The model cannot run on this runtime target (it does not export, or a quantizer is missing)."""


def missing(*modules: str) -> str | None:
    """None when every module imports here, else a line naming the first missing one and the extra."""
    for module in modules:
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed; install the {EXTRA} extra: {INSTALL_HINT}"
    return None


def version_of(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def is_quantized_graph(model: nn.Module) -> bool:
    """Whether ``model`` is already quantized: an FX graph with quantize ops (PT2E ``convert_pt2e``), or
    weights held in tensor subclasses (torchao's ``quantize_``)."""
    graph = getattr(model, "graph", None)
    if graph is not None and any("quantize" in str(getattr(n, "target", "")) for n in graph.nodes):
        return True
    return any(type(p.data) is not torch.Tensor for p in model.parameters())


@dataclass
class RuntimeInputs:
    """Images that runtime targets use besides the model being measured.

    ``images``: test images for the agreement check (None: seeded random images); ``calibration``: batches
    of training images for a runtime's own int8 quantization (None: seeded random images, labelled so);
    ``float_model``: the float model a quantized deployment came from (what a runtime quantizes itself when
    the int8 graph does not export); ``quantized``: the model measured is already an int8 graph
    (kdbench's ``quant``/``qat`` stage).
    """

    images: torch.Tensor | None = None
    calibration: list[torch.Tensor] | None = None
    float_model: nn.Module | None = None
    quantized: bool = False
    source: str = "training"  # what the calibration images are, in labels ("128 training images")

    @classmethod
    def from_data(cls, data, float_model: nn.Module | None = None, quantized: bool = False, seed: int = 0,
                  test: int = TEST_IMAGES, calibration: int = CALIBRATION_IMAGES) -> RuntimeInputs:
        """The first ``test`` test images, and ``calibration`` training images (a seeded random subset, as the
        training loop sees them) in batches of :data:`CALIBRATION_BATCH`, of a ``DataBundle``."""
        def image(split, i: int) -> torch.Tensor:
            x = split[i][0]
            return x[0] if isinstance(x, (list, tuple)) else x  # the first view of a multi-view split

        images = torch.stack([image(data.test, i) for i in range(min(test, len(data.test)))])
        order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(seed))[:calibration]
        picked = [image(data.train, int(i)) for i in order]
        batches = [torch.stack(picked[i:i + CALIBRATION_BATCH]) for i in range(0, len(picked), CALIBRATION_BATCH)]
        return cls(images, batches, float_model, quantized)

    def test_images(self, input_size: tuple[int, ...], n: int = 32) -> tuple[torch.Tensor, str]:
        if self.images is not None:
            return self.images, "test images"
        return torch.randn(n, *input_size, generator=torch.Generator().manual_seed(0)), "random images"

    def calibration_batches(self, input_size: tuple[int, ...], n: int = 4, batch: int = 8,
                            ) -> tuple[list[np.ndarray], str]:
        if self.calibration:
            arrays = [b.float().numpy() for b in self.calibration]
            return arrays, f"{sum(len(a) for a in arrays)} {self.source} images"
        gen = torch.Generator().manual_seed(1)
        arrays = [torch.randn(batch, *input_size, generator=gen).numpy() for _ in range(n)]
        return arrays, f"{n * batch} random images (no training data at hand)"


@dataclass
class Quantized:
    """A runtime's own int8 model: a file it can load, and how it was made (for the labels)."""

    path: str
    label: str


@dataclass
class Runtime:
    """A deployment runtime. Subclasses implement :meth:`session` and, for int8, :meth:`quantize`.

    ``precisions``: what the runtime measures (``int8``: an int8 graph kdbench produced, exported, or the
    runtime's own quantization of the float model). ``modules``: what must import for it to run.
    """

    name: str  # "onnxruntime", "openvino"
    distribution: str  # the package whose version is recorded
    precisions: tuple[str, ...] = ("fp32",)
    modules: tuple[str, ...] = ()
    quantizer_modules: tuple[str, ...] = ()  # what its own int8 quantization needs besides ``modules``
    options: dict[str, str] = field(default_factory=dict)  # shown in the measurement tag

    def problem(self) -> str | None:
        """Why this runtime cannot run here (a missing package), or None."""
        return missing(*self.modules, "onnx")

    def precision_problem(self, precision: str) -> str | None:
        if precision not in self.precisions:
            return f"precision {precision} is not measured on {self.name} (measured: {', '.join(self.precisions)})"
        return None

    def quantizer_problem(self) -> str | None:
        return missing(*self.quantizer_modules)

    def describe(self, threads: int | None) -> str:
        parts = [f"{self.name} {version_of(self.distribution)}"]
        if threads:
            parts.append(f"{threads} thread{'s' if threads > 1 else ''}")
        parts += [f"{k} {v}" for k, v in self.options.items()]
        return ", ".join(parts)

    def session(self, path: str, threads: int, batch: int, input_size: tuple[int, ...],
                ) -> Callable[[np.ndarray], np.ndarray]:
        """A callable running one batch (an array of ``batch`` images) and returning its logits."""
        raise NotImplementedError

    def quantize(self, float_path: str, calibration: list[np.ndarray], calibration_label: str,
                 workdir: str) -> Quantized:
        """This runtime's own static int8 quantization of the float ONNX model at ``float_path``."""
        raise NotImplementedError

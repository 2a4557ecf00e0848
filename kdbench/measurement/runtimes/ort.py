"""ONNX Runtime: sessions on an execution provider (CPU, CUDA, TensorRT) and its own static int8 quantization.

Sessions run with every graph optimisation on (``ORT_ENABLE_ALL``), sequential execution, the target's
thread count for intra-op parallelism, and the batch dimension fixed to the batch being timed (a free
dimension override: the shape a deployment serves). Int8: ``onnxruntime.quantization.quantize_static`` in
the QDQ format, per-channel int8 weights and uint8 activations, MinMax calibration, after ONNX Runtime's
pre-processing (shape inference and graph optimisation).
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from kdbench.measurement.runtimes.base import Quantized, Runtime, missing
from kdbench.measurement.runtimes.export import BATCH_DIM, INPUT_NAME

CPU, CUDA, TENSORRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"


def _providers() -> list[str]:
    import onnxruntime

    return list(onnxruntime.get_available_providers())


@dataclass
class OnnxRuntime(Runtime):
    """ONNX Runtime on one execution provider (``provider``); GPU providers fall back to none: a session
    that cannot place the model on its provider fails rather than silently running on the CPU."""

    name: str = "onnxruntime"
    distribution: str = "onnxruntime"
    provider: str = CPU
    provider_options: dict[str, str] = field(default_factory=dict)
    modules: tuple[str, ...] = ("onnxruntime",)

    def problem(self) -> str | None:
        why = missing(*self.modules, "onnx")
        if why or self.provider == CPU:
            return why
        import torch

        available = _providers()
        if self.provider not in available:
            return (f"onnxruntime here has no {self.provider} (available: {', '.join(available)}); it needs "
                    f"onnxruntime-gpu{' with TensorRT' if self.provider == TENSORRT else ''} and an NVIDIA GPU")
        if not torch.cuda.is_available():
            return f"{self.provider} needs a CUDA GPU; torch.cuda.is_available() is False"
        return None

    def describe(self, threads: int | None) -> str:
        text = super().describe(threads if self.provider == CPU else None)
        return f"{text}, {self.provider}, graph optimisations all"

    def _options(self, threads: int, batch: int):
        import onnxruntime

        so = onnxruntime.SessionOptions()
        so.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.add_free_dimension_override_by_name(BATCH_DIM, batch)
        so.log_severity_level = 3  # errors only: its warnings about unused initializers are noise here
        return so

    def session(self, path: str, threads: int, batch: int, input_size: tuple[int, ...],
                ) -> Callable[[np.ndarray], np.ndarray]:
        import onnxruntime

        providers = [(self.provider, dict(self.provider_options))] if self.provider_options else [self.provider]
        sess = onnxruntime.InferenceSession(path, self._options(threads, batch), providers=providers)
        if self.provider not in sess.get_providers():
            raise RuntimeError(f"onnxruntime could not create a session on {self.provider}")
        name = sess.get_inputs()[0].name
        return lambda x: sess.run(None, {name: x})[0]

    def quantize(self, float_path: str, calibration: list[np.ndarray], calibration_label: str,
                 workdir: str) -> Quantized:
        from onnxruntime.quantization import (
            CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static,
        )
        from onnxruntime.quantization.shape_inference import quant_pre_process

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self._batches = iter(calibration)

            def get_next(self):
                batch = next(self._batches, None)
                return None if batch is None else {INPUT_NAME: batch}

        prepared = os.path.join(workdir, "ort_preprocessed.onnx")
        try:
            quant_pre_process(float_path, prepared)
        except Exception:  # pre-processing helps quantization but is optional
            prepared = float_path
        out = os.path.join(workdir, "ort_int8.onnx")
        quantize_static(prepared, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
        return Quantized(out, "onnxruntime static quantization (quantize_static: QDQ, per-channel int8 weights, "
                              f"uint8 activations, MinMax) calibrated on {calibration_label}")

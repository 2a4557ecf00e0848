"""OpenVINO: models compiled for its CPU plugin, and its own int8 post-training quantization (NNCF).

The ONNX file is read with ``openvino.Core.read_model``, reshaped to the batch being timed and compiled
for the target device with the target's thread count, one stream, the latency hint, and fp32 inference
precision (without the hint OpenVINO runs fp32 models in bf16 on CPUs that have it: not what ``fp32``
means here; int8 layers stay int8). Int8: ``nncf.quantize`` (its default performance preset, with fast
bias correction) on the float model, calibrated on the images given; an int8 QDQ graph exported from
kdbench's quant stage is read as it is (OpenVINO runs its quantize/dequantize pairs as int8).
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from kdbench.measurement.runtimes.base import Quantized, Runtime


@dataclass
class OpenVINO(Runtime):
    name: str = "openvino"
    distribution: str = "openvino"
    device: str = "CPU"
    modules: tuple[str, ...] = ("openvino",)
    quantizer_modules: tuple[str, ...] = ("nncf",)

    def problem(self) -> str | None:
        why = super().problem()
        if why:
            return why
        import openvino

        if self.device not in openvino.Core().available_devices:
            return f"OpenVINO sees no {self.device} device here"
        return None

    def describe(self, threads: int | None) -> str:
        return f"{super().describe(threads)}, device {self.device}, latency hint, 1 stream, f32 inference precision"

    def session(self, path: str, threads: int, batch: int, input_size: tuple[int, ...],
                ) -> Callable[[np.ndarray], np.ndarray]:
        import openvino

        core = openvino.Core()
        model = core.read_model(path)
        model.reshape([batch, *input_size])
        config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "INFERENCE_PRECISION_HINT": "f32"}
        if self.device == "CPU":
            config["INFERENCE_NUM_THREADS"] = str(threads)
        compiled = core.compile_model(model, self.device, config)
        request = compiled.create_infer_request()
        output = compiled.output(0)

        def run(x: np.ndarray) -> np.ndarray:
            return request.infer([x], share_inputs=True)[output]

        return run

    def quantize(self, float_path: str, calibration: list[np.ndarray], calibration_label: str,
                 workdir: str) -> Quantized:
        import nncf
        import openvino

        model = openvino.Core().read_model(float_path)
        quantized = nncf.quantize(model, nncf.Dataset(calibration), subset_size=len(calibration))
        out = os.path.join(workdir, "openvino_int8.xml")
        openvino.save_model(quantized, out)
        from kdbench.measurement.runtimes.base import version_of

        return Quantized(out, f"NNCF {version_of('nncf')} post-training quantization (nncf.quantize, performance "
                              f"preset) calibrated on {calibration_label}")
